"""Write a face dataset as RecordIO, WebDataset tar shards or class folders (configs/export_config.yaml).

    python export_dataset.py export.input=<class folders or blocks> export.output=<dir> \
        export.format=rec|webdataset|folders
    # job arrays: export.shard_index=$SLURM_ARRAY_TASK_ID export.num_shards=N (the last task to finish merges)
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from dataset_building.export import export_dataset

log = logging.getLogger(__name__)


@hydra.main(config_path="configs", config_name="export_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run :func:`export_dataset`; bad input ends with one error line and exit status 1."""
    try:
        export_dataset(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
