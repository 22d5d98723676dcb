"""ConditionalUNet: state-dict layout of the published models, fixture numerics, context handling."""
from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest
import torch
from hydra.utils import instantiate

from models.diffusion.unet import ConditionalUNet

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
UNET_FIXTURES = ["unet_ca_small_4lvl.pt", "unet_ca_small_mult.pt"]
FIXTURE_OUTPUTS = ("eps", "eps_context_none", "eps_dropout_mask", "time_embedding", "context_projection")

SMALL_ARGS = dict(
    input_channels=3, initial_channels=32, channel_multipliers=[1, 1, 2], is_attention=[False, True, True],
    attention_heads=-1, attention_head_channels=8, n_blocks_per_resolution=1, condition_type="CA",
    is_context_conditional=True, n_context_classes=0, context_input_channels=16, context_channels=32,
    learn_empty_context=False, context_dropout_probability=0.25,
)


def meta_model_from_config(name: str) -> ConditionalUNet:
    """Instantiate ``configs/model/<name>.yaml`` on the meta device (no memory, no init cost)."""
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra.compose(config_name="train_config", overrides=[f"model={name}"])
    with torch.device("meta"):
        return instantiate(cfg.model)


def small_model(**overrides: object) -> ConditionalUNet:
    """A reduced CA model with non-zero weights everywhere (zero-initialised layers randomised)."""
    torch.manual_seed(0)
    model = ConditionalUNet(**{**SMALL_ARGS, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.05)
    return model


def small_inputs(batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(batch_size, 3, 8, 8, generator=g)
    t = torch.randint(0, 1000, (batch_size,), generator=g)
    context = torch.nn.functional.normalize(torch.randn(batch_size, 16, generator=g), dim=1)
    return x_t, t, context


@pytest.mark.parametrize("name", ["unet_cond_ca_cpd25", "unet_cond_ca_cpd50", "unet_cond_ca"])
def test_ca_state_dict_matches_manifest(reference_dir: Path, name: str) -> None:
    manifest = json.loads((reference_dir / "manifests" / "idiff_face_unet_cond_ca_cpd25.json").read_text())
    state_dict = meta_model_from_config(name).state_dict()
    assert [(k, list(v.shape)) for k, v in state_dict.items()] == [(k, shape) for k, shape, _ in manifest]
    assert all(v.dtype == torch.float32 for v in state_dict.values())
    assert sum(v.numel() for v in state_dict.values()) == 216_341_187


@pytest.mark.parametrize("name", ["unet_cond_adagn", "unet_cond_adagn_cpd25", "unet_cond_adagn_cpd50"])
def test_adagn_size(name: str) -> None:
    state_dict = meta_model_from_config(name).state_dict()
    assert len(state_dict) == 566
    assert sum(v.numel() for v in state_dict.values()) == 134_595_939
    assert "down.3.attn.attention.to_q.weight" in state_dict
    assert "down.0.res.context_emb.1.weight" in state_dict


@pytest.mark.parametrize("fixture_name", UNET_FIXTURES)
def test_matches_reference_fixture(reference_dir: Path, fixture_name: str) -> None:
    fixture = torch.load(reference_dir / "fixtures" / fixture_name, map_location="cpu", weights_only=True)
    model = ConditionalUNet(**fixture["config"]["constructor_args"])
    model.load_state_dict(fixture["state_dict"], strict=True)
    model.eval().float()
    inputs, expected = fixture["inputs"], fixture["outputs"]
    x_t, t, context = inputs["x"].float(), inputs["t"], inputs["context"].float()
    with torch.no_grad():
        found = {
            "eps": model(x_t, t, context),
            "eps_context_none": model(x_t, t, None),
            "eps_dropout_mask": model(x_t, t, context, inputs["dropout_mask"]),
            "time_embedding": model.time_emb(t),
            "context_projection": model.context_emb(context),
        }
    for key in FIXTURE_OUTPUTS:
        torch.testing.assert_close(found[key], expected[key].float(), atol=1e-5, rtol=1e-5, msg=key)


def test_cpd_only_in_train_mode() -> None:
    model = small_model(context_dropout_probability=0.5)
    x_t, t, context = small_inputs()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x_t, t, context), model(x_t, t, context))
        c_eval = model.embed_context(4, context, None, x_t)
        model.train()
        torch.manual_seed(3)
        c_train = model.embed_context(4, context, None, x_t)
        assert not torch.equal(model(x_t, t, context), model(x_t, t, context))
    dropped = c_train == 0
    assert 0 < dropped.float().mean() < 1
    torch.testing.assert_close(c_train[~dropped], 2.0 * c_eval[~dropped])  # 1 / (1 - p) scaling


def test_dropout_mask_rows_equal_empty_context() -> None:
    model = small_model().eval()
    x_t, t, context = small_inputs()
    mask = torch.tensor([True, False, True, False])
    with torch.no_grad():
        masked = model(x_t, t, context, mask)
        unconditional = model(x_t, t, None)
        conditional = model(x_t, t, context)
    torch.testing.assert_close(masked[mask], unconditional[mask], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(masked[~mask], conditional[~mask], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(conditional[mask], unconditional[mask])


def test_learned_empty_context_is_used_for_missing_contexts() -> None:
    model = small_model(learn_empty_context=True).eval()
    assert "empty_context_embedding" in model.state_dict()
    x_t, t, context = small_inputs()
    c = model.embed_context(4, context, torch.tensor([True, False, False, True]), x_t)
    torch.testing.assert_close(c[0], model.empty_context_embedding.detach())
    torch.testing.assert_close(model.embed_context(4, None, None, x_t)[2], model.empty_context_embedding.detach())


def test_bad_context_shape_raises() -> None:
    model = small_model().eval()
    x_t, t, _ = small_inputs()
    with pytest.raises(ValueError, match=r"context must have shape \(4, 16\).*found \(4, 512\)"):
        model(x_t, t, torch.zeros(4, 512))
    with pytest.raises(ValueError, match="dropout_mask"):
        model(x_t, t, torch.zeros(4, 16), torch.zeros(4))


def test_checkpointing_gives_same_output_and_gradients() -> None:
    x_t, t, context = small_inputs(2)
    grads = []
    for use_checkpoint in (False, True):
        model = small_model(use_checkpoint=use_checkpoint, context_dropout_probability=0.0).train()
        eps = model(x_t, t, context)
        eps.square().mean().backward()
        grads.append((eps.detach(), model.down[0].res.conv1.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_adagn_forward_shape() -> None:
    model = small_model(condition_type="AdaGN").eval()
    x_t, t, context = small_inputs()
    with torch.no_grad():
        assert model(x_t, t, context).shape == x_t.shape


@pytest.mark.parametrize("condition_type", ["CA", "AdaGN"])
def test_norm_groups_changes_only_the_grouping(condition_type: str) -> None:
    """norm_groups sets every GroupNorm of the feature maps; the state dict is the same, so weights load either way."""
    kwargs = dict(condition_type=condition_type, is_context_conditional=True)
    base, grouped = small_model(**kwargs), small_model(norm_groups=8, **kwargs)
    assert {k: v.shape for k, v in base.state_dict().items()} == {k: v.shape for k, v in grouped.state_dict().items()}
    grouped.load_state_dict(base.state_dict(), strict=True)
    norms = {n: m.num_groups for n, m in grouped.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    assert norms and all(g == 8 for n, g in norms.items() if not n.endswith("c_norm")), norms
    assert all(m.num_groups == 32 for m in base.modules() if isinstance(m, torch.nn.GroupNorm))
    x_t, t, context = small_inputs()
    with torch.no_grad():  # same weights (small_model randomises the zero-initialised layers), other grouping
        assert not torch.allclose(base.eval()(x_t, t, context), grouped.eval()(x_t, t, context))
