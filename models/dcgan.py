"""The DCGAN face generator of ``gan-face-generate`` 1.1.1 (PyPI, MIT): faces of nobody, offline.

The package ships, as ``gan_face_generate/weights.tar`` (a ``torch.save`` file, not a tar archive),
the generator of a DCGAN (Radford et al., 2016) trained on DigiFace-1M, Microsoft's rendered
synthetic faces. Its layout is the standard DCGAN one: a latent ``z: (B, 100, 1, 1)`` is
up-sampled by five transposed convolutions (kernel 4) to a 64x64 RGB image in [-1, 1]::

    main.0   ConvTranspose2d(100, 512, 4, 1, 0)   1x1 -> 4x4      main.1  BatchNorm2d(512)  main.2  ReLU
    main.3   ConvTranspose2d(512, 256, 4, 2, 1)   4x4 -> 8x8      main.4  BatchNorm2d(256)  main.5  ReLU
    main.6   ConvTranspose2d(256, 128, 4, 2, 1)   8x8 -> 16x16    main.7  BatchNorm2d(128)  main.8  ReLU
    main.9   ConvTranspose2d(128, 64, 4, 2, 1)    16x16 -> 32x32  main.10 BatchNorm2d(64)   main.11 ReLU
    main.12  ConvTranspose2d(64, 3, 4, 2, 1)      32x32 -> 64x64  main.13 Tanh

The convolutions have no bias. The file holds ``{"netG_state_dict": state_dict}`` saved from a
CUDA device; :func:`load_dcgan_generator` reads it with ``weights_only=True`` onto any device and
loads it strictly. The generator is used in eval mode (BatchNorm running statistics), so an image
depends only on its own latent. :func:`dcgan_latents` draws face ``i``'s latent from a CPU
generator seeded with ``i``, so face ``i`` is the same on every machine, batch and device.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from utils.checkpoint import CheckpointError, check_state_dict, torch_load

#: the key of the generator's state dict inside the package's weights file
STATE_DICT_KEY = "netG_state_dict"
#: where the file comes from (for "missing file" messages)
SOURCE_HINT = (
    "it is gan_face_generate/weights.tar of the PyPI wheel gan-face-generate==1.1.1 "
    "(`pip download --no-deps gan-face-generate==1.1.1`), shipped as data/testbed/dcgan/netG_digiface.pt"
)


class DCGANGenerator(nn.Module):
    """DCGAN generator: ``z (B, nz, 1, 1) -> x (B, 3, 64, 64)`` in [-1, 1].

    Args:
        nz: latent size (100 for the shipped weights).
        ngf: width of the last hidden layer; the layers have 8, 4, 2, 1 x ``ngf`` channels.
        channels: output channels (3, RGB).
    """

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 3) -> None:
        super().__init__()
        if nz < 1 or ngf < 1 or channels < 1:
            raise ValueError(f"DCGANGenerator needs nz, ngf, channels >= 1, found {nz}, {ngf}, {channels}")
        self.nz = int(nz)
        widths = [nz, 8 * ngf, 4 * ngf, 2 * ngf, ngf]
        layers: list[nn.Module] = []
        for level, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            stride, padding = (1, 0) if level == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, nz, 1, 1) or (B, nz) -> (B, 3, 64, 64) in [-1, 1]."""
        if z.ndim == 2:
            z = z[:, :, None, None]
        if z.ndim != 4 or z.shape[1:] != (self.nz, 1, 1):
            raise ValueError(f"z must have shape (B, {self.nz}, 1, 1) or (B, {self.nz}), found {tuple(z.shape)}")
        return self.main(z)


def load_dcgan_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> DCGANGenerator:
    """The generator of the package's weights file, loaded strictly, in eval mode, gradients off.

    Args:
        path: ``gan_face_generate/weights.tar`` (or our copy ``data/testbed/dcgan/netG_digiface.pt``).
        device: where the module lives (the file's CUDA locations are mapped here).
    Raises:
        CheckpointError: missing/unreadable file, no ``netG_state_dict`` key, or keys/shapes that differ.
    """
    path = Path(path)
    obj = torch_load(path, map_location=device, source_hint=SOURCE_HINT)
    if not isinstance(obj, dict) or STATE_DICT_KEY not in obj:
        found = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a gan-face-generate weights file: expected the key {STATE_DICT_KEY!r}, found {found}")
    state_dict = obj[STATE_DICT_KEY]
    generator = DCGANGenerator()
    check_state_dict(generator, state_dict, path)
    generator.load_state_dict(state_dict, strict=True)
    return generator.to(device).eval().requires_grad_(False)


def dcgan_latents(seeds: Sequence[int], nz: int = 100) -> torch.Tensor:
    """Latents (B, nz, 1, 1): row b is ``torch.randn(nz, 1, 1)`` of a CPU generator seeded with ``seeds[b]``."""
    if len(seeds) == 0:
        raise ValueError("dcgan_latents needs at least one seed")
    return torch.stack([torch.randn(nz, 1, 1, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def generate_faces(generator: DCGANGenerator, seeds: Sequence[int], batch_size: int = 256) -> torch.Tensor:
    """Faces (B, 3, 64, 64) in [-1, 1] on the CPU, face b from latent seed ``seeds[b]``, ``batch_size`` per forward."""
    device = next(generator.parameters()).device
    out = [generator(dcgan_latents(seeds[a : a + batch_size], generator.nz).to(device)).float().cpu()
           for a in range(0, len(seeds), batch_size)]
    return torch.cat(out)
