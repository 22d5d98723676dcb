"""iResNet: ElasticFace fixture, published key layouts and the strict loader."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models.iresnet as iresnet_module
from models.iresnet import (
    IBasicBlock,
    IResNet,
    iresnet18,
    iresnet50,
    iresnet100,
    load_iresnet,
)
from utils.checkpoint import CheckpointError

ATOL = RTOL = 1e-4
#: the iResNet fixtures in tests/fixtures/reference/fixtures (INDEX.json lists them all)
IRESNET_FIXTURES = ["iresnet_small_1111.pt"]


def _build_from_fixture(config: dict) -> IResNet:
    args = dict(config["constructor_args"])
    block = getattr(iresnet_module, args.pop("block"))
    return IResNet(block, **args)


@pytest.mark.parametrize("name", IRESNET_FIXTURES)
def test_matches_fixture(reference_dir: Path, name: str) -> None:
    fx = torch.load(reference_dir / "fixtures" / name, map_location="cpu", weights_only=True)
    model = _build_from_fixture(fx["config"]).eval()
    model.load_state_dict(fx["state_dict"], strict=True)  # includes non-contiguous as_strided tensors
    with torch.inference_mode():
        embedding = model(fx["inputs"]["x"])
        embedding_cl = model.to(memory_format=torch.channels_last)(
            fx["inputs"]["x"].contiguous(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(embedding, fx["outputs"]["embedding"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(F.normalize(embedding), fx["outputs"]["embedding_l2norm"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(embedding_cl, fx["outputs"]["embedding"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    ("factory", "manifest"),
    [(iresnet100, "elasticface_iresnet100_512.json"), (iresnet50, "elasticface_iresnet50_512.json")],
)
def test_full_size_keys_match_manifest(reference_dir: Path, factory, manifest: str) -> None:
    with torch.device("meta"):
        model = factory(num_features=512)
    entries = json.loads((reference_dir / "manifests" / manifest).read_text())
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    assert got == [(k, list(shape), dtype) for k, shape, dtype in entries]
    assert not model.features.weight.requires_grad


def test_features_weight_fixed_and_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = IResNet(IBasicBlock, [1, 1, 1, 1], dropout=0.5, num_features=64)
    assert torch.equal(model.features.weight, torch.ones(64))
    x = torch.randn(2, 3, 112, 112)
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)
    model.train()
    model(x).sum().backward()  # dropout is not in-place on a tensor autograd needs
    assert model.features.weight.grad is None


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "module_prefix"])
def test_load_iresnet_with_or_without_module_prefix(tmp_path: Path, wrap: bool) -> None:
    torch.manual_seed(0)
    model = iresnet18(num_features=128).eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
    state_dict = model.state_dict(prefix="module." if wrap else "")
    path = tmp_path / "backbone.pth"
    torch.save(state_dict, path)
    loaded = load_iresnet(path, arch="iresnet18", num_features=128)
    assert not loaded.training
    x = torch.randn(1, 3, 112, 112)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_load_iresnet_errors(tmp_path: Path) -> None:
    missing = tmp_path / "Elastic_R100_295672backbone.pth"
    with pytest.raises(CheckpointError) as err:
        load_iresnet(missing)
    assert str(missing) in str(err.value) and "ElasticFace" in str(err.value) and "\n" not in str(err.value)
    wrong = tmp_path / "r1111.pth"
    torch.save(IResNet(IBasicBlock, [1, 1, 1, 1], num_features=64).state_dict(), wrong)
    with pytest.raises(CheckpointError, match=r"does not fit IResNet: \d+ missing keys \[layer1\.1.*shape mismatches"):
        load_iresnet(wrong, arch="iresnet18")
    with pytest.raises(ValueError, match="arch must be one of"):
        load_iresnet(wrong, arch="iresnet101")


def test_rejects_wrong_input_size() -> None:
    with pytest.raises(ValueError, match="112"):
        iresnet18()(torch.zeros(1, 3, 128, 128))
