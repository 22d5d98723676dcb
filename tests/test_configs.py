"""Every config group composes and instantiates (full-size models are built on the meta device)."""
import pytest
import torch
from hydra.utils import instantiate

from utils.config import CONFIG_DIR, compose

MODEL_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
DIFFUSION_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "diffusion").glob("*.yaml"))

EXPECTED_PARAMS = {"CA": 216_341_187, "AdaGN": 134_595_939}


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_model_configs_build_the_paper_sizes(model):
    cfg = compose("train_config", [f"model={model}"])
    with torch.device("meta"):
        unet = instantiate(cfg.model)
    assert sum(p.numel() for p in unet.parameters()) == EXPECTED_PARAMS[cfg.model.condition_type]


@pytest.mark.parametrize("diffusion", DIFFUSION_CONFIGS)
def test_diffusion_configs_wrap_the_model(diffusion):
    cfg = compose("train_config", [f"diffusion={diffusion}"])
    with torch.device("meta"):
        ddpm = instantiate(cfg.diffusion)
    assert ddpm.betas.shape == (cfg.diffusion.T,)
    assert type(ddpm.eps_model).__name__ == "ConditionalUNet"
