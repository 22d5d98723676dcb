"""models.dcgan: the shipped gan-face-generate weights load strictly and draw seeded faces of nobody."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion.generation import to_uint8
from models.dcgan import DCGANGenerator, dcgan_latents, generate_faces, load_dcgan_generator
from utils.checkpoint import CheckpointError

WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "testbed" / "dcgan" / "netG_digiface.pt"
#: sha256 of gan_face_generate/weights.tar in the wheel gan_face_generate-1.1.1-py3-none-any.whl
WHEEL_SHA256 = "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator() -> DCGANGenerator:
    return load_dcgan_generator(WEIGHTS)


def test_shipped_file_is_the_wheels_weights_file() -> None:
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == WHEEL_SHA256


def test_strict_load_in_eval_mode(generator: DCGANGenerator) -> None:
    assert not generator.training and not any(p.requires_grad for p in generator.parameters())
    raw = torch.load(WEIGHTS, map_location="cpu", weights_only=True)["netG_state_dict"]
    for key, value in generator.state_dict().items():
        assert torch.equal(value, raw[key]), key
    assert sum(p.numel() for p in generator.parameters()) == 3_576_704


def reference_forward(state: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """The DCGAN generator written out layer by layer in float64 (BatchNorm with running statistics)."""
    x = z.double()
    for conv, norm, stride, padding in (("0", "1", 1, 0), ("3", "4", 2, 1), ("6", "7", 2, 1), ("9", "10", 2, 1)):
        x = F.conv_transpose2d(x, state[f"main.{conv}.weight"].double(), stride=stride, padding=padding)
        mean, var = state[f"main.{norm}.running_mean"].double(), state[f"main.{norm}.running_var"].double()
        gamma, beta = state[f"main.{norm}.weight"].double(), state[f"main.{norm}.bias"].double()
        x = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5) * gamma[:, None, None] + beta[:, None, None]
        x = x.clamp(min=0)
    return torch.tanh(F.conv_transpose2d(x, state["main.12.weight"].double(), stride=2, padding=1))


def test_forward_equals_the_float64_layer_by_layer_reference(generator: DCGANGenerator) -> None:
    z = dcgan_latents([0, 1, 2])
    x = generator(z)
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x.double(), reference_forward(generator.state_dict(), z), atol=2e-5, rtol=0)


def test_faces_are_seeded_batch_independent_and_in_range(generator: DCGANGenerator) -> None:
    both = generate_faces(generator, [11, 12])
    assert torch.equal(generate_faces(generator, [11, 12]), both)  # same machine: bitwise
    torch.testing.assert_close(generate_faces(generator, [12])[0], both[1], atol=1e-5, rtol=0)
    assert both.min() >= -1 and both.max() <= 1 and both.min() < -0.8 and both.max() > 0.8  # Tanh uses its range
    assert not torch.allclose(both[0], both[1], atol=0.1)  # two seeds, two faces
    z = dcgan_latents([11])[0]
    assert torch.equal(z, torch.randn(100, 1, 1, generator=torch.Generator().manual_seed(11)))


def test_bad_inputs_and_wrong_files_are_one_clear_line(generator: DCGANGenerator, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"z must have shape \(B, 100, 1, 1\)"):
        generator(torch.zeros(2, 99))
    with pytest.raises(CheckpointError, match="does not exist.*gan-face-generate==1.1.1"):
        load_dcgan_generator(tmp_path / "missing.pt")
    torch.save({"state_dict": generator.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="expected the key 'netG_state_dict'"):
        load_dcgan_generator(tmp_path / "other.pt")
    state = dict(generator.state_dict())
    del state["main.12.weight"]
    state["main.3.weight"] = torch.zeros(512, 128, 4, 4)
    torch.save({"netG_state_dict": state}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"1 missing keys \[main.12.weight\].*shape mismatches \[main.3.weight"):
        load_dcgan_generator(tmp_path / "broken.pt")


def test_faces_are_detected_and_distinct_people_by_dlib(generator: DCGANGenerator) -> None:
    """MTCNN finds most faces; by dlib each face is nearer its own mirror image than any other face."""
    from alignment.aligner import FaceAligner
    from embedding.backends import DlibBackend
    from testbed.faces import embed_faces

    faces = to_uint8(generate_faces(generator, list(range(8))))  # (8, 64, 64, 3)
    result = embed_faces(faces, FaceAligner(device="cpu"), DlibBackend(device="cpu"), upscale_to=128)
    assert result.detected.sum() >= 6  # 193 of 200 seeds in the measurement of FACE_ASSETS.md
    kept = faces[result.detected]
    mirrored = embed_faces(np.ascontiguousarray(kept[:, :, ::-1]), FaceAligner(device="cpu"),
                           DlibBackend(device="cpu"), upscale_to=128)
    assert mirrored.detected.all()
    sims = result.embeddings @ mirrored.embeddings.T  # (F, F): face i vs mirrored face j
    assert (sims.argmax(axis=1) == np.arange(len(kept))).all()
    off_diagonal = sims[~np.eye(len(kept), dtype=bool)]
    assert np.diag(sims).min() > 0.93 and off_diagonal.mean() < 0.92
