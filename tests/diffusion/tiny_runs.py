"""Run folders with tiny random models for the generation tests (the layout of main.py and the release)."""
from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONTEXT_DIM = 128


def make_run(run_dir: Path, T: int = 10, image_size: int = 16, published: bool = False) -> Path:
    """A pixel-space run folder with a tiny random ConditionalUNet (the layout of main.py and the release).

    The schedule is the cosine one with betas clipped at 0.999 (alpha_bar from 0.97 to 2.4e-5 at T = 10):
    the linear schedule rescaled to T = 10 has betas up to 2.0 and NaN alpha_bars. The cross-attention
    outputs are scaled by 30 so that the identity context visibly shapes the images (another context
    moves the pixels by about 4.5 grey levels on average, 0.3 without the scaling).
    """
    model = {
        "_target_": "models.diffusion.unet.ConditionalUNet", "input_channels": 3, "initial_channels": 32,
        "channel_multipliers": [1, 1], "is_attention": [False, True], "attention_heads": -1,
        "attention_head_channels": 32, "n_blocks_per_resolution": 1, "condition_type": "CA",
        "is_context_conditional": True, "n_context_classes": 0, "context_input_channels": CONTEXT_DIM,
        "context_channels": 32, "learn_empty_context": False, "context_dropout_probability": 0.25,
    }
    constants = {"image_size": image_size, "input_channels": 3}
    if not published:  # the release's configs have no constants.context_dim
        constants["context_dim"] = CONTEXT_DIM
    cfg = OmegaConf.create({
        "latent_diffusion": False, "constants": constants, "model": model,
        "diffusion": {"_target_": "diffusion.ddpm.DenoisingDiffusionProbabilisticModel", "eps_model": "${model}",
                      "T": T, "schedule_type": "cosine", "schedule_beta_max": 0.999},
    })
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    torch.manual_seed(0)
    ddpm = instantiate(cfg.diffusion)
    with torch.no_grad():
        for name, p in ddpm.eps_model.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
            if "cross_attention.proj_out" in name:
                p.mul_(30.0)
    (run_dir / "checkpoints").mkdir()
    for name in ("ema_averaged_model.ckpt", "model.ckpt", "ema_averaged_model_100.ckpt"):
        torch.save(ddpm.state_dict(), run_dir / "checkpoints" / name)
    return run_dir
