"""DDPM schedules, loss, reverse steps and checkpoints against the original's fixture.

The fixture was made on another CPU (AMD EPYC). float32 ``sqrt``/``exp``/``cos`` may round 1 ulp
differently on another x86 CPU, so numbers are compared with ``torch.testing.assert_close`` at a
stated number of float32 ulps (``ULP`` = 2^-23, relative and absolute at unit scale), never bitwise.
"""
import json

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from diffusion.ddpm import (
    DenoisingDiffusionProbabilisticModel,
    load_diffusion_checkpoint,
)
from diffusion.samplers import DDPMSampler
from diffusion.sampling_settings import SamplerSettings
from diffusion.schedules import SCHEDULE_BUFFERS
from utils.checkpoint import CheckpointError, save_atomic
from utils.config import compose

FIXTURE = "ddpm_idiff_face.pt"
ULP = torch.finfo(torch.float32).eps
#: schedules: sqrt(1 - alpha_bar) of the cosine schedule near t = 0 amplifies a 1-ulp difference of
#: cos (measured: 4.9 ulp between this Intel Xeon and the AMD EPYC that made the fixture)
SCHEDULE_TOL = dict(atol=16 * ULP, rtol=16 * ULP)
#: one q_sample or reverse step from the stored inputs: a few ulp (measured: at most 1.8 ulp)
STEP_TOL = dict(atol=4 * ULP, rtol=4 * ULP)
#: the whole 1,000-step chain run on our own outputs: the per-step ulps compound (measured: 33 ulp)
CHAIN_TOL = dict(atol=1e-5, rtol=1e-5)


class StandIn(nn.Module):
    """The fixture's parameter-free eps model: eps = sqrt(1 - alpha_bar_t) * x_t."""

    def __init__(self) -> None:
        super().__init__()
        self.table: torch.Tensor | None = None

    def forward(self, x_t, t, context=None, dropout_mask=None):
        return self.table[t].view(-1, 1, 1, 1) * x_t


def make_ddpm(**kwargs) -> DenoisingDiffusionProbabilisticModel:
    stand_in = StandIn()
    ddpm = DenoisingDiffusionProbabilisticModel(stand_in, **kwargs)
    stand_in.table = ddpm.sqrt_one_minus_alpha_bars
    return ddpm


@pytest.fixture(scope="module")
def fixture(reference_dir):
    return torch.load(reference_dir / "fixtures" / FIXTURE, map_location="cpu", weights_only=True)


def test_schedules_match_original(fixture):
    for name, cfg in fixture["config"]["other_configs"].items():
        ddpm = make_ddpm(**cfg)
        for key in SCHEDULE_BUFFERS:
            expected = fixture["outputs"]["schedules"][name][key]
            assert getattr(ddpm, key).dtype == expected.dtype == torch.float32, (name, key)
            torch.testing.assert_close(getattr(ddpm, key), expected, **SCHEDULE_TOL, msg=f"{name} {key}")


def test_state_dict_layout_and_strict_load(fixture):
    ddpm = make_ddpm(**fixture["config"]["constructor_args"])
    assert list(ddpm.state_dict()) == list(SCHEDULE_BUFFERS)
    ddpm.load_state_dict(fixture["state_dict"], strict=True)


def test_q_sample_and_loss_match_original(fixture):
    ddpm = make_ddpm(**fixture["config"]["constructor_args"])
    inp, out = fixture["inputs"]["q_sample"], fixture["outputs"]["q_sample"]
    x_t = ddpm.q_sample(inp["x0"], inp["t"], inp["noise"])
    torch.testing.assert_close(x_t, out["x_t"], **STEP_TOL)
    loss = ddpm(inp["x0"], t=inp["t"], eps=inp["noise"])
    torch.testing.assert_close(loss, out["loss_mse_vs_stand_in"], **STEP_TOL)


@pytest.mark.parametrize("i", [999, 500, 2, 1, 0])
def test_single_reverse_steps_match_original(fixture, i):
    """Steps at i = 999, 500, 2 add sigma_i z; at i <= 1 the original adds no noise, and so do we."""
    ddpm = make_ddpm(**fixture["config"]["constructor_args"])
    step = fixture["outputs"]["single_steps"][f"i={i}"]
    sampler = DDPMSampler.from_model(ddpm)
    assert sampler.needs_noise(i) == (i > 1)
    x_prev = sampler.step(step["eps_pred"], i, step["x_t"], step["z"] if i > 1 else None)
    torch.testing.assert_close(x_prev, step["x_prev"], **STEP_TOL)
    if i <= 1:
        assert torch.count_nonzero(step["z"]) == 0


def test_full_chain_matches_original(fixture):
    """Each of the 1,000 steps from the original's stored x_t, and the whole chain from x_T."""
    ddpm = make_ddpm(**fixture["config"]["constructor_args"])
    chain_in, chain_out = fixture["inputs"]["chain"], fixture["outputs"]["chain"]
    sampler = DDPMSampler.from_model(ddpm)
    assert sampler.timesteps == chain_in["timesteps"].tolist()
    x = chain_in["x_T"]
    for k, t in enumerate(sampler.timesteps):
        z = chain_in["z"][k] if sampler.needs_noise(t) else None
        stored_eps = ddpm.eps_model(chain_out["xs"][k], torch.full((2,), t))
        torch.testing.assert_close(stored_eps, chain_in["eps_pred"][k], **STEP_TOL, msg=f"eps at step {k} (t={t})")
        x_prev = sampler.step(chain_in["eps_pred"][k], t, chain_out["xs"][k], z)
        torch.testing.assert_close(x_prev, chain_out["xs"][k + 1], **STEP_TOL, msg=f"step {k} (t={t})")
        x = sampler.step(ddpm.eps_model(x, torch.full((2,), t)), t, x, z)
    torch.testing.assert_close(x, chain_out["x_0"], **CHAIN_TOL)


def test_sample_uses_given_generators_and_restores_mode():
    ddpm = make_ddpm(T=50)
    ddpm.train()
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    a = ddpm.sample(3, (3, 4, 4), generators=gens())
    b = torch.cat([ddpm.sample(1, (3, 4, 4), generators=[g]) for g in gens()])
    assert torch.equal(a, b) and ddpm.training


def test_checkpoint_round_trip_is_original_format(tmp_path):
    ddpm = make_ddpm(T=1000)
    path = save_atomic(ddpm.state_dict(), tmp_path / "checkpoints" / "ema_averaged_model.ckpt")
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(SCHEDULE_BUFFERS)  # a plain state dict, as the original saves
    fresh = make_ddpm(T=1000)
    load_diffusion_checkpoint(fresh, path)
    for key, value in ddpm.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key])


def test_bad_checkpoints_fail_with_one_line_naming_the_file(tmp_path):
    ddpm = make_ddpm(T=1000)
    good = save_atomic(ddpm.state_dict(), tmp_path / "good.ckpt")
    data = good.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.ckpt").write_bytes(b"\x00garbage" * 100)

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "PWNED"), "w"))

    torch.save({"betas": Payload()}, tmp_path / "pickled.ckpt")
    torch.save({"betas": torch.zeros(10)}, tmp_path / "wrong.ckpt")
    cases = {
        "truncated.ckpt": "corrupt or truncated",
        "corrupt.ckpt": "corrupt or truncated",
        "pickled.ckpt": "pickled object",
        "missing.ckpt": "does not exist",
        "wrong.ckpt": "missing keys",
    }
    for name, expected in cases.items():
        with pytest.raises(CheckpointError) as err:
            load_diffusion_checkpoint(ddpm, tmp_path / name)
        message = str(err.value)
        assert str(tmp_path / name) in message and expected in message and "\n" not in message, message
    assert not (tmp_path / "PWNED").exists(), "the pickled payload ran"


def test_wrong_shape_is_listed(tmp_path):
    ddpm = make_ddpm(T=1000)
    torch.save(make_ddpm(T=2000).state_dict(), tmp_path / "t2000.ckpt")
    with pytest.raises(CheckpointError, match=r"shape mismatches \[betas: file \(2000,\) vs model \(1000,\)"):
        load_diffusion_checkpoint(ddpm, tmp_path / "t2000.ckpt")


def test_unknown_schedule_rejected():
    with pytest.raises(ValueError, match="unknown schedule_type 'quadratic'"):
        make_ddpm(schedule_type="quadratic")


def test_full_size_checkpoint_manifest(reference_dir):
    """The DDPM wrapping the paper UNet, built from our configs on `meta`, has the published checkpoint's layout."""
    cfg = compose("train_config", ["model=unet_cond_ca_cpd25", "diffusion=ddpm"])
    with torch.device("meta"):
        ddpm = instantiate(cfg.diffusion)
    manifest = json.loads((reference_dir / "manifests" / "idiff_face_checkpoint_ema_averaged_model_cpd25.json").read_text())
    ours = [[k, list(v.shape)] for k, v in ddpm.state_dict().items()]
    assert ours == [[k, shape] for k, shape, _ in manifest]


def test_preset_original_is_the_original_chain_whatever_the_defaults(fixture):
    """``preset=original`` gives the original's sampler over sample_config.yaml's own defaults (all T DDPM
    steps, fp32, no guidance, no clipping), and that sampler reproduces the original's whole chain."""
    cfg = compose("sample_config", ["preset=original"])
    settings = SamplerSettings.from_config(cfg.sampling)
    assert (settings.guidance_scale, settings.negative.active, settings.amp, settings.clip_x0) == (1.0, False, None, None)
    assert cfg.sampling.batch_size == cfg.sampling.micro_batch == 50  # one identity of 50 images per batch
    # a setting given on the command line still wins over the preset
    assert compose("sample_config", ["preset=original", "sampling.batch_size=10"]).sampling.batch_size == 10
    ddpm = make_ddpm(**fixture["config"]["constructor_args"])
    sampler = settings.build_sampler(ddpm)
    assert isinstance(sampler, DDPMSampler) and sampler.timesteps == list(range(ddpm.T - 1, -1, -1))
    chain_in, chain_out = fixture["inputs"]["chain"], fixture["outputs"]["chain"]
    x = chain_in["x_T"]
    for k, t in enumerate(sampler.timesteps):
        x = sampler.step(ddpm.eps_model(x, torch.full((2,), t)), t, x, chain_in["z"][k] if sampler.needs_noise(t) else None)
    torch.testing.assert_close(x, chain_out["x_0"], **CHAIN_TOL)
