"""Invent people who exist nowhere on a CPU and measure them: ``python demo.py`` (``demo.fast=true``: smaller).

Writes ``outputs/demo/report.md`` and ``overview.png``; an interrupted run resumes where it stopped.
Configuration: ``configs/demo_config.yaml``.
"""
from omegaconf import DictConfig

from cli.app import hydra_app
from cpu_demo import run_demo


@hydra_app("demo_config")
def main(cfg: DictConfig) -> None:
    """Run (or resume) every demo stage and write the report."""
    run_demo(cfg)


if __name__ == "__main__":
    main()
