"""Score a face-recognition backbone on the verification .bin files (configs/evaluate_fr_config.yaml).

    python evaluate_fr.py evaluate_fr.checkpoint=<backbone.pth> fr/backbone=iresnet50 eval.bin_dir=<bins> evaluate_fr.output=scores.json
The older command line still works:
    python evaluate_fr.py --checkpoint <backbone.pth> --bin-dir <bins> --arch iresnet50 [--num-features 512]
        [--device cpu] [--batch-size 256] [--amp] [--benchmarks lfw cfp_fp] [--kfold-rule insightface] [--output scores.json]
"""
from omegaconf import DictConfig

from cli.app import hydra_app, legacy_arguments
from face_recognition_training.evaluate import evaluate_from_config

OLD_COMMAND_LINE = legacy_arguments(
    flags={"--checkpoint": "evaluate_fr.checkpoint", "--bin-dir": "eval.bin_dir", "--arch": "fr/backbone",
           "--num-features": "fr.backbone.net.num_features", "--device": "device", "--batch-size": "eval.batch_size",
           "--output": "evaluate_fr.output", "--kfold-rule": "eval.kfold_rule"},
    switches={"--amp": "evaluate_fr.amp"},
    lists={"--benchmarks": "eval.benchmarks"},
)


@hydra_app("evaluate_fr_config", aliases=OLD_COMMAND_LINE)
def main(cfg: DictConfig) -> None:
    """Score ``cfg.evaluate_fr.checkpoint`` on ``cfg.eval.benchmarks`` and log (and write) the table."""
    evaluate_from_config(cfg)


if __name__ == "__main__":
    main()
