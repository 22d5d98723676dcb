"""SamplerSettings: the config's defaults, one-line errors naming the key, the sampler it builds."""
import inspect
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from diffusion.ddpm import DenoisingDiffusionProbabilisticModel
from diffusion.generation import generate_dataset
from diffusion.guidance import NegativeSettings
from diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverPP2MSampler
from diffusion.sampling_settings import SamplerSettings
from utils.config import compose


def test_defaults_equal_the_original_preset_and_the_config_holds_the_measured_ones():
    assert SamplerSettings.from_config(compose("sample_config", ["preset=original"]).sampling) == SamplerSettings()
    cfg = compose("sample_config")
    assert SamplerSettings.from_config(cfg.sampling) == SamplerSettings(
        "dpmpp_2m", 15, "trailing", None, 0.0, None, 3.0, NegativeSettings("far", 0.5, None), 50, "bfloat16")
    assert SamplerSettings() == SamplerSettings(negative=NegativeSettings(None, 0.5, None))
    defaults = {k: p.default for k, p in inspect.signature(generate_dataset).parameters.items()}
    assert (defaults["seed"], defaults["batch_size"], defaults["output"]) == (
        cfg.sampling.seed, cfg.sampling.batch_size, cfg.sampling.output)


def test_from_config_reads_every_key():
    cfg = compose("sample_config", [
        "sampling.sampler=dpmpp_2m", "sampling.steps=4", "sampling.timestep_spacing=trailing",
        "sampling.timesteps=[999,700,300,0]", "sampling.clip_x0=1.0", "sampling.guidance_scale=1.5",
        "sampling.negative.mode=file", "sampling.negative.scale=0.25", "sampling.negative.file=neg.npz",
        "sampling.micro_batch=7", "sampling.amp=bfloat16",
    ])
    settings = SamplerSettings.from_config(cfg.sampling)
    assert settings == SamplerSettings("dpmpp_2m", 4, "trailing", (999, 700, 300, 0), 0.0, 1.0, 1.5,
                                       NegativeSettings("file", 0.25, "neg.npz"), 7, "bfloat16")
    assert settings.amp_dtype == torch.bfloat16 and SamplerSettings().amp_dtype is None
    assert SamplerSettings.from_config(compose("sample_config", ["sampling.amp=none"]).sampling).amp is None


@pytest.mark.parametrize("override, message", [
    ({"sampler": "euler"}, "sampling.sampler must be one of ('ddpm', 'ddim', 'dpmpp_2m'), found 'euler'"),
    ({"sampler": "ddim", "steps": 0}, "sampling.steps must be null or an integer >= 1, found 0"),
    ({"sampler": "ddim", "steps": 2.5}, "sampling.steps must be null or an integer >= 1, found 2.5"),
    ({"sampler": "ddim", "timestep_spacing": "uniform"}, "sampling.timestep_spacing must be one of"),
    ({"sampler": "ddim", "timesteps": (5, 9)}, "sampling.timesteps must be null or a strictly decreasing list"),
    ({"sampler": "ddim", "timesteps": (5, -1)}, "sampling.timesteps must be null or a strictly decreasing list"),
    ({"sampler": "ddim", "timesteps": ()}, "sampling.timesteps must be null or a strictly decreasing list"),
    ({"sampler": "ddim", "timesteps": (9, 5), "steps": 3}, "sampling.steps must be null or 2"),
    ({"eta": -0.1}, "sampling.eta must be a finite number >= 0, found -0.1"),
    ({"sampler": "ddim", "eta": math.inf}, "sampling.eta must be a finite number >= 0, found inf"),
    ({"sampler": "dpmpp_2m", "eta": 0.5}, "sampling.eta must be 0 unless sampling.sampler=ddim, found 0.5"),
    ({"clip_x0": 0.0}, "sampling.clip_x0 must be null or a finite number > 0, found 0.0"),
    ({"guidance_scale": math.nan}, "sampling.guidance_scale must be a finite number, found nan"),
    ({"guidance_scale": "2"}, "sampling.guidance_scale must be a finite number, found '2'"),
    ({"micro_batch": 0}, "sampling.micro_batch must be an integer >= 1, found 0"),
    ({"amp": "float64"}, "sampling.amp must be null or one of ('float16', 'bfloat16'), found 'float64'"),
    ({"steps": 50}, "sampling.sampler=ddpm visits all T timesteps"),
    ({"timestep_spacing": "trailing"}, "sampling.sampler=ddpm visits all T timesteps"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ValueError) as err:
        SamplerSettings(**override)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_config_values_are_caught_at_start():
    cfg = compose("sample_config", ["sampling.negative.mode=closest"])
    with pytest.raises(ValueError, match="sampling.negative.mode must be null or one of"):
        SamplerSettings.from_config(cfg.sampling)
    cfg = compose("sample_config", ["sampling.sampler=ddim", "sampling.steps=-3"])
    with pytest.raises(ValueError, match="sampling.steps must be null or an integer >= 1, found -3"):
        SamplerSettings.from_config(cfg.sampling)
    incomplete = OmegaConf.create({"sampler": "ddpm", "eta": 0.0, "negative": {"mode": None}})
    with pytest.raises(ValueError, match=r"lacks sampling.steps, sampling.timestep_spacing, .*sampling.amp, "
                                         r"sampling.negative.scale, sampling.negative.file; see configs/"):
        SamplerSettings.from_config(incomplete)


def test_builds_the_named_sampler():
    ddpm = DenoisingDiffusionProbabilisticModel(nn.Identity(), T=1000)
    assert isinstance(SamplerSettings().build_sampler(ddpm), DDPMSampler)
    ddim = SamplerSettings(sampler="ddim", steps=10, timestep_spacing="leading", eta=0.3).build_sampler(ddpm)
    assert isinstance(ddim, DDIMSampler) and ddim.eta == 0.3 and ddim.timesteps[0] == 900
    dpm = SamplerSettings(sampler="dpmpp_2m", timesteps=(999, 499, 0), clip_x0=1.0).build_sampler(ddpm)
    assert isinstance(dpm, DPMSolverPP2MSampler) and dpm.timesteps == [999, 499, 0] and dpm.clip_x0 == 1.0
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, T-1=999\], got 1500"):
        SamplerSettings(sampler="ddim", timesteps=(1500, 0)).build_sampler(ddpm)
