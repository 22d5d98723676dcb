"""extract_face_embeddings_from_dir.py: one unit-norm embedding per image stem, .npz and original .pt output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from embedding.encoding import extract_embeddings
from embedding.files import load_embeddings
from models.iresnet import iresnet18
from utils.config import compose

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "faces").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(tmp_path / "faces" / f"{i:05d}.png")
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    torch.manual_seed(0)
    torch.save(iresnet18(num_features=512).state_dict(), tmp_path / "r18.pth")
    return tmp_path


def overrides(tmp_path: Path, output: str) -> list[str]:
    return [f"input_dir={tmp_path / 'faces'}", f"output_file={tmp_path / output}", "device=cpu", "batch_size=2",
            "num_workers=0", f"fr_backend.iresnet.weights={tmp_path / 'r18.pth'}", "fr_backend.iresnet.arch=iresnet18"]


@pytest.mark.parametrize("output", ["emb.npz", "emb.pt"])
def test_embeds_every_image_by_stem(folder: Path, output: str) -> None:
    out = extract_embeddings(compose("extract_embeddings_config", overrides(folder, output)))
    result = load_embeddings(out)
    assert result.names == [f"{i:05d}" for i in range(5)]
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    # the preprocessing written out: RGB / 127.5 - 1 on the 112x112 image, the net, L2 normalisation
    net = iresnet18(num_features=512).eval()
    net.load_state_dict(torch.load(folder / "r18.pth", weights_only=True))
    x = torch.from_numpy(np.array(Image.open(folder / "faces" / "00003.png"))).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        direct = F.normalize(net(x / 127.5 - 1.0)).numpy()  # (1, 512)
    np.testing.assert_allclose(result.embeddings[3], direct[0], atol=1e-5)
    if output.endswith(".pt"):  # the original's format: {stem: float32[512]}, loadable with weights_only
        original = torch.load(out, weights_only=True)
        assert sorted(original) == result.names and original["00000"].shape == (512,)


def test_unreadable_image_is_skipped_or_stops(folder: Path) -> None:
    (folder / "faces" / "00002.png").write_bytes(b"broken")
    result = load_embeddings(extract_embeddings(compose("extract_embeddings_config", overrides(folder, "e.npz"))))
    assert result.names == ["00000", "00001", "00003", "00004"]
    with pytest.raises(ValueError, match=r"unreadable image .*00002\.png"):
        extract_embeddings(compose("extract_embeddings_config", [*overrides(folder, "e.npz"), "on_unreadable=stop"]))
