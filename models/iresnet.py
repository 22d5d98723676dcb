"""The project's one iResNet: ElasticFace's backbone for identity embeddings, contexts and FR training.

The module tree equals ElasticFace's ``backbones/iresnet.py`` so the published
``295672backbone.pth`` (saved as the unwrapped ``backbone.module.state_dict()``) loads strictly:
stem ``conv1``/``bn1``/``prelu``, ``layer1``-``layer4`` of :class:`IBasicBlock`, then ``bn2``,
``dropout``, ``fc`` and ``features`` (a BatchNorm1d whose weight is fixed at 1.0).

Input convention (``preprocess``): an aligned RGB face of 112x112 pixels, scaled as
``x = (pixel / 255 - 0.5) / 0.5``, i.e. in [-1, 1], shaped (B, 3, 112, 112). The output is the raw
(B, num_features) embedding; IDiff-Face's identity contexts are ``F.normalize(embedding)``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from utils.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

BN_EPS = 1e-5
INPUT_SIZE = 112


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class SEModule(nn.Module):
    """Squeeze-and-excitation gate ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` (only with ``use_se=True``)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class IBasicBlock(nn.Module):
    """Pre-activation residual block ``BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN`` + shortcut.

    There is no activation after the addition. ``downsample`` (conv1x1 + BN) adapts the shortcut
    when the stride or width changes.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        use_se: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(f"IBasicBlock supports only groups=1 and base_width=64, got {groups} and {base_width}")
        if dilation > 1:
            raise ValueError(f"IBasicBlock supports dilation 1 only, got dilation={dilation}")
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample
        self.se_block = SEModule(planes, 16) if use_se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, inplanes, H, W) -> (B, planes, H/stride, W/stride)."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se_block is not None:
            out = self.se_block(out)
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """ElasticFace iResNet: (B, 3, 112, 112) face in [-1, 1] -> (B, num_features) embedding (not normalised).

    Args:
        block: residual block class (:class:`IBasicBlock`).
        layers: blocks per stage, e.g. [3, 13, 30, 3] for iResNet-100.
        dropout: dropout probability before ``fc`` (0.4 in IDiff-Face's FR training).
        num_features: embedding size.
        zero_init_residual: start every block's ``bn2`` weight at 0.
        groups, width_per_group, replace_stride_with_dilation: torchvision-style arguments that
            :class:`IBasicBlock` accepts only at their defaults.
        use_se: add a squeeze-and-excitation gate to every block.
    """

    fc_scale = 7 * 7

    def __init__(
        self,
        block: type[IBasicBlock],
        layers: Sequence[int],
        dropout: float = 0.0,
        num_features: int = 512,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        use_se: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must list 4 stage depths, got {list(layers)}")
        dilate = list(replace_stride_with_dilation or [False, False, False])
        if len(dilate) != 3:
            raise ValueError(f"replace_stride_with_dilation must be None or 3 booleans, got {dilate}")
        self.inplanes, self.dilation = 64, 1
        self.groups, self.base_width, self.use_se = groups, width_per_group, use_se
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=BN_EPS)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=2)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate[2])
        self.bn2 = nn.BatchNorm2d(512 * block.expansion, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * block.expansion * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(
        self, block: type[IBasicBlock], planes: int, blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        """One stage: a first block with ``stride`` (and a conv1x1+BN shortcut), then ``blocks - 1`` more."""
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion, eps=BN_EPS),
            )
        stage = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                       previous_dilation, use_se=self.use_se)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                        dilation=self.dilation, use_se=self.use_se) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, 112, 112), RGB scaled to [-1, 1] -> (B, num_features) embedding before L2 normalisation."""
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"IResNet expects (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) faces, got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)  # (B, 512 * 7 * 7), NCHW order even for channels_last input
        return self.features(self.fc(self.dropout(x)))


def iresnet18(num_features: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """iResNet-18, stages [2, 2, 2, 2]; other keywords go to :class:`IResNet`."""
    return IResNet(IBasicBlock, [2, 2, 2, 2], dropout=dropout, num_features=num_features, **kwargs)


def iresnet34(num_features: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """iResNet-34, stages [3, 4, 6, 3]; other keywords go to :class:`IResNet`."""
    return IResNet(IBasicBlock, [3, 4, 6, 3], dropout=dropout, num_features=num_features, **kwargs)


def iresnet50(num_features: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """iResNet-50, stages [3, 4, 14, 3] (IDiff-Face FR training: dropout 0.4); keywords go to :class:`IResNet`."""
    return IResNet(IBasicBlock, [3, 4, 14, 3], dropout=dropout, num_features=num_features, **kwargs)


def iresnet100(num_features: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """iResNet-100, stages [3, 13, 30, 3] (ElasticFace-Arc); other keywords go to :class:`IResNet`."""
    return IResNet(IBasicBlock, [3, 13, 30, 3], dropout=dropout, num_features=num_features, **kwargs)


def iresnet200(num_features: int = 512, dropout: float = 0.0, **kwargs: Any) -> IResNet:
    """iResNet-200, stages [6, 26, 60, 6]; other keywords go to :class:`IResNet`."""
    return IResNet(IBasicBlock, [6, 26, 60, 6], dropout=dropout, num_features=num_features, **kwargs)


ARCHITECTURES: dict[str, Callable[..., IResNet]] = {
    f.__name__: f for f in (iresnet18, iresnet34, iresnet50, iresnet100, iresnet200)
}

ELASTICFACE_SOURCE_HINT = (
    "it is ElasticFace-Arc's iResNet-100 295672backbone.pth (fdbtrs/ElasticFace release; IDiff-Face expects it "
    "as Elastic_R100_295672backbone.pth)"
)


def load_iresnet(
    path: str | os.PathLike,
    arch: str = "iresnet100",
    num_features: int = 512,
    map_location: str | torch.device = "cpu",
) -> IResNet:
    """Build ``arch`` on ``map_location`` and load a state-dict file strictly, in eval mode.

    Accepts the unwrapped ``backbone.module.state_dict()`` files of ElasticFace / FR training and
    DDP-wrapped ones (every key prefixed ``module.``).

    Raises:
        ValueError: unknown ``arch``.
        CheckpointError: the file is missing, unreadable or does not fit ``arch``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    with torch.device(map_location):
        model = ARCHITECTURES[arch](num_features=num_features)
    load_checkpoint(model, path, map_location=map_location, source_hint=ELASTICFACE_SOURCE_HINT,
                    strip_prefixes=("module.",))
    logger.info("loaded %s from %s", arch, path)
    return model.eval()
