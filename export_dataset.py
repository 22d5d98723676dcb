"""Write a face dataset as RecordIO, WebDataset tar shards or class folders (configs/export_config.yaml).

    python export_dataset.py export.input=<class folders or blocks> export.output=<dir> \
        export.format=rec|webdataset|folders
    # job arrays: export.shard_index=$SLURM_ARRAY_TASK_ID export.num_shards=N (the last task to finish merges)
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from dataset_building.export import export_dataset


@hydra_app("export_config")
def main(cfg: DictConfig) -> None:
    """Run :func:`export_dataset`."""
    export_dataset(cfg)


if __name__ == "__main__":
    main()
