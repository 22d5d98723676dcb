"""Split identity blocks (or per-identity folders) into <out>/<identity>/<k>.png class folders (configs/split_config.yaml).

Example (the paper's 10,000 x 50 from 10,050 aligned identities):
    python split_identity_blocks.py split.input_dir=outputs/samples/aligned/<model>/<contexts> \
        split.output_dir=outputs/datasets/<model>/<contexts> split.identities=10000 split.images_per_identity=50
The older command line still works: input and output folders first, then the flags
    python split_identity_blocks.py <aligned> <dataset> --identities 10000 --images-per-identity 50 [--min-images N] [--tile-size S] [--filter-report R] [--evaluation-report E]
"""
from omegaconf import DictConfig

from cli.app import hydra_app, legacy_arguments
from dataset_building.split import split_from_config

OLD_COMMAND_LINE = legacy_arguments(
    flags={"--min-images": "split.min_images", "--identities": "split.identities",
           "--images-per-identity": "split.images_per_identity", "--tile-size": "split.tile_size",
           "--filter-report": "split.filter_report", "--evaluation-report": "split.evaluation_report"},
    positional=("split.input_dir", "split.output_dir"),
)


@hydra_app("split_config", aliases=OLD_COMMAND_LINE)
def main(cfg: DictConfig) -> None:
    """Write the class folders of ``cfg.split.input_dir`` into ``cfg.split.output_dir``."""
    split_from_config(cfg)


if __name__ == "__main__":
    main()
