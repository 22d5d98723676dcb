"""Split identity blocks (or per-identity folders) into <out>/<identity>/<k>.png class folders.

Example (the paper's 10,000 x 50 from 10,050 aligned identities):
    python split_identity_blocks.py outputs/samples/aligned/<model>/<contexts> outputs/datasets/<model>/<contexts> \
        --identities 10000 --images-per-identity 50
"""
import argparse
import logging

from dataset_building.split import split_identities


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Parse the command line and run :func:`dataset_building.split.split_identities`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_dir", help="folder of <id>.grid<r>x<c>.png blocks, <id>/ image folders or images")
    parser.add_argument("output_dir", help="where <identity>/<k>.png folders are written")
    parser.add_argument("--min-images", type=int, default=1, help="drop identities with fewer images")
    parser.add_argument("--identities", type=int, default=None, help="keep exactly N identities (natural name order)")
    parser.add_argument("--images-per-identity", type=int, default=None, help="keep exactly K images per identity")
    parser.add_argument("--tile-size", type=int, default=None, help="tile side of original blocks without a .grid tag")
    parser.add_argument("--evaluation-report", default=None, help="evaluate.py's report.json, for the dataset card")
    parser.add_argument("--filter-report", default=None, help='a filter report {"dropped": ..., "settings": ...}')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return split_identities(args.input_dir, args.output_dir, args.min_images, args.identities,
                            args.images_per_identity, args.tile_size, args.evaluation_report, args.filter_report)


if __name__ == "__main__":
    main()
