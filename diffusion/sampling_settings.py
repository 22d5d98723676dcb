"""The sampling settings of ``sample.py`` in one validated object, built from the ``sampling`` config in one place."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from diffusion.guidance import NegativeSettings
from diffusion.samplers import SAMPLERS, TIMESTEP_SPACINGS, Sampler
from utils.settings import is_finite, is_int, require

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class SamplerSettings:
    """How images are sampled: the ``sampling`` keys of ``configs/sample_config.yaml`` that shape an image.

    The defaults reproduce the original: DDPM over all T steps, no guidance, fp32, as
    ``sample.py preset=original`` does (a test checks it); ``configs/sample_config.yaml`` holds the
    measured defaults of ``sample.py``. Every value is checked once here, naming its config key.

    Attributes:
        sampler: ``ddpm``, ``ddim`` or ``dpmpp_2m``. steps: visited timesteps (ddim/dpmpp_2m; None = T).
        timestep_spacing: ``linspace``, ``leading`` or ``trailing``; timesteps: explicit list, highest first.
        eta: DDIM noise (0 = deterministic). clip_x0: clip the x0 estimate to [-c, c] (pixel space 1.0) or None.
        guidance_scale: classifier-free guidance w (1 = plain conditional). negative: negative-context guidance.
        micro_batch: rows per model call. amp: None, ``float16`` or ``bfloat16`` autocast (CUDA and CPU).
    """

    sampler: str = "ddpm"
    steps: int | None = None
    timestep_spacing: str = "linspace"
    timesteps: tuple[int, ...] | None = None
    eta: float = 0.0
    clip_x0: float | None = None
    guidance_scale: float = 1.0
    negative: NegativeSettings = field(default_factory=NegativeSettings)
    micro_batch: int = 50
    amp: str | None = None

    def __post_init__(self) -> None:
        require(self.sampler in SAMPLERS, "sampling.sampler", f"one of {SAMPLERS}", self.sampler)
        require(self.steps is None or (is_int(self.steps) and self.steps >= 1), "sampling.steps", "null or an integer >= 1",
               self.steps)
        require(self.timestep_spacing in TIMESTEP_SPACINGS, "sampling.timestep_spacing", f"one of {TIMESTEP_SPACINGS}",
               self.timestep_spacing)
        values = self.timesteps
        require(values is None or (isinstance(values, tuple) and len(values) > 0
                                  and all(is_int(v) and v >= 0 for v in values)
                                  and all(b < a for a, b in zip(values, values[1:]))),
               "sampling.timesteps", "null or a strictly decreasing list of integers >= 0", values)
        require(values is None or self.steps in (None, len(values)), "sampling.steps",
               f"null or {len(values or ())} (the length of sampling.timesteps)", self.steps)
        require(is_finite(self.eta) and self.eta >= 0, "sampling.eta", "a finite number >= 0", self.eta)
        require(self.eta == 0 or self.sampler == "ddim", "sampling.eta", "0 unless sampling.sampler=ddim", self.eta)
        require(self.clip_x0 is None or (is_finite(self.clip_x0) and self.clip_x0 > 0), "sampling.clip_x0",
               "null or a finite number > 0", self.clip_x0)
        require(is_finite(self.guidance_scale), "sampling.guidance_scale", "a finite number", self.guidance_scale)
        require(is_int(self.micro_batch) and self.micro_batch >= 1, "sampling.micro_batch", "an integer >= 1",
               self.micro_batch)
        require(self.amp is None or self.amp in AMP_DTYPES, "sampling.amp", f"null or one of {tuple(AMP_DTYPES)}", self.amp)
        if self.sampler == "ddpm" and (self.steps, self.timesteps, self.timestep_spacing) != (None, None, "linspace"):
            raise ValueError("sampling.sampler=ddpm visits all T timesteps: leave sampling.steps and "
                             "sampling.timesteps null and sampling.timestep_spacing linspace, "
                             "or use sampling.sampler=ddim or dpmpp_2m")

    @classmethod
    def from_config(cls, sampling: DictConfig) -> SamplerSettings:
        """Read the ``sampling`` node of ``sample_config`` (every key must be present)."""
        keys = [f.name for f in fields(cls)] + [f"negative.{f.name}" for f in fields(NegativeSettings)]
        missing = [k for k in keys if OmegaConf.select(sampling, k, default="<missing>") == "<missing>"]
        if missing:
            raise ValueError(f"the sampling config lacks sampling.{', sampling.'.join(missing)}; "
                             "see configs/sample_config.yaml for every key")
        negative = sampling.negative
        timesteps = sampling.timesteps
        amp = None if sampling.amp in (None, "none") else sampling.amp
        return cls(
            sampler=sampling.sampler, steps=sampling.steps, timestep_spacing=sampling.timestep_spacing,
            timesteps=tuple(timesteps) if isinstance(timesteps, ListConfig) else timesteps,
            eta=sampling.eta, clip_x0=sampling.clip_x0, guidance_scale=sampling.guidance_scale,
            negative=NegativeSettings(negative.mode, negative.scale, negative.file),
            micro_batch=sampling.micro_batch, amp=amp,
        )

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.amp)

    def build_sampler(self, diffusion: nn.Module) -> Sampler:
        """The sampler over the schedule buffers of ``diffusion`` (a ``DenoisingDiffusionProbabilisticModel``)."""
        return diffusion.sampler(self.sampler, self.steps, self.eta, self.clip_x0, self.timestep_spacing,
                                 self.timesteps)

