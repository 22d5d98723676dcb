"""Run the whole IDiff-Face flow on the demo photos on a CPU: ``python demo.py`` (``demo.fast=true``: smaller).

Writes ``outputs/demo/report.md`` and ``overview.png``; an interrupted run resumes where it stopped.
Configuration: ``configs/demo_config.yaml``.
"""
from omegaconf import DictConfig

from cpu_demo import run_demo
from utils.cli import hydra_app


@hydra_app("demo_config")
def main(cfg: DictConfig) -> None:
    """Run (or resume) every demo stage and write the report."""
    run_demo(cfg)


if __name__ == "__main__":
    main()
