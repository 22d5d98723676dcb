"""Run the whole IDiff-Face flow on the demo photos on a CPU: ``python demo.py`` (``demo.fast=true``: smaller).

Writes ``outputs/demo/report.md`` and ``overview.png``; an interrupted run resumes where it stopped.
Configuration: ``configs/demo_config.yaml``.
"""
import hydra
from omegaconf import DictConfig

from cpu_demo import run_demo


@hydra.main(config_path="configs", config_name="demo_config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run (or resume) every demo stage and write the report."""
    run_demo(cfg)


if __name__ == "__main__":
    main()
