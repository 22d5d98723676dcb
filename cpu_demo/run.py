"""One demo run: its settings, its output paths, and the script configs its stages call the library with."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from utils.config import compose

#: output files and folders of the stages, relative to ``demo.output_dir``
OUTPUTS = {
    "contexts": "contexts",
    "samples": "samples",
    "upscaled": "samples_upscaled",
    "aligned": "aligned",
    "dataset": "dataset",
    "generated_embeddings": "embeddings/generated_dlib.npz",
    "evaluation": "evaluation",
    "novelty": "novelty",
    "settings": "settings_table",
}

#: stem of the contexts file of the novel identities
CONTEXTS_NAME = "novel_identities"


@dataclass
class DemoRun:
    """Settings and output paths of one demo run.

    Args:
        cfg: the composed ``configs/demo_config.yaml``.
        profile: ``cfg.demo.profiles.fast`` or ``.full`` (sizes of the run).
    """

    cfg: DictConfig
    profile: DictConfig

    @property
    def out(self) -> Path:
        """The demo's output folder (``demo.output_dir``)."""
        return Path(self.cfg.demo.output_dir)

    @property
    def device(self) -> str:
        """The ``device`` setting passed to every stage (``auto``, ``cpu``, ``cuda``...)."""
        return str(self.cfg.device)

    @property
    def seed(self) -> int:
        """The one seed of the run (contexts, images, impostor pairs)."""
        return int(self.cfg.demo.seed)

    def path(self, name: str) -> Path:
        """A named output inside ``demo.output_dir`` (see ``OUTPUTS``)."""
        return self.out / OUTPUTS[name]

    def sample_batch(self, images: int) -> dict[str, int]:
        """``sampling.batch_size`` and ``micro_batch`` for sampling ``images`` images: the profile's ``sample_batch``,
        at most ``images`` (the model is always called on ``micro_batch`` rows; padding rows cost as much)."""
        batch = min(int(self.profile.sample_batch), images)
        return {"batch_size": batch, "micro_batch": batch}

    def script_config(self, root: str, values: Mapping[str, Any]) -> DictConfig:
        """``configs/<root>.yaml`` (a project script's config) with the demo's ``paths`` and ``values`` merged over it.

        The script's config stays in struct mode, so a key in ``values`` that the script does not know
        raises (a misspelt demo setting cannot be ignored).
        """
        return OmegaConf.merge(compose(root), {"paths": self.cfg.paths}, values)
