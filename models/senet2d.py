"""SE-ResNeXt50 32x4d for the seed's 2D member, in the layout of Cadene's ``pretrainedmodels`` SENet
(``layer0.conv1 ... layerN.i.se_module.fc1``), wrapped as the seed's ``SingleHead``:
``backbone`` (global average pool, no classifier) -> ``dropout`` -> ``fc`` Linear(2048, num_classes).

timm's ``seresnext50_32x4d`` is the same network except for the stem max pool (timm pads by 1, Cadene
uses ``MaxPool2d(3, 2, ceil_mode=True)`` without padding, which differs in values), so we write the
Cadene network here and map timm's key names when initialising from timm ImageNet weights
(:func:`models.pretrained`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * w


class SEResNeXtBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, groups: int, reduction: int, stride: int = 1,
                 downsample: nn.Module | None = None, base_width: int = 4) -> None:
        super().__init__()
        width = math.floor(planes * (base_width / 64)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False, stride=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(planes * 4, reduction=reduction)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.se_module(out) + residual)


class SENetBackbone(nn.Module):
    """Cadene's ``SENet`` with ``avg_pool = AdaptiveAvgPool2d(1)`` and no classifier: (B,3,H,W) -> (B,2048)."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), groups: int = 32, reduction: int = 16) -> None:
        super().__init__()
        self.inplanes = 64
        self.layer0 = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)),
            ("bn1", nn.BatchNorm2d(64)),
            ("relu1", nn.ReLU(inplace=True)),
            ("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ]))
        self.layer1 = self._make_layer(64, layers[0], groups, reduction, stride=1)
        self.layer2 = self._make_layer(128, layers[1], groups, reduction, stride=2)
        self.layer3 = self._make_layer(256, layers[2], groups, reduction, stride=2)
        self.layer4 = self._make_layer(512, layers[3], groups, reduction, stride=2)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 512 * SEResNeXtBottleneck.expansion

    def _make_layer(self, planes: int, blocks: int, groups: int, reduction: int, stride: int) -> nn.Sequential:
        downsample = None
        out = planes * SEResNeXtBottleneck.expansion
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, padding=0, bias=False),
                nn.BatchNorm2d(out),
            )
        layers = [SEResNeXtBottleneck(self.inplanes, planes, groups, reduction, stride, downsample)]
        self.inplanes = out
        layers += [SEResNeXtBottleneck(self.inplanes, planes, groups, reduction) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer0(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avg_pool(x).flatten(1)


class FrameClassifier(nn.Module):
    """The seed's ``SingleHead``: backbone -> Dropout -> Linear. ``forward`` on (B,3,H,W) gives the raw
    FAKE logit (B,) (the seed's ``forward_image``)."""

    def __init__(self, num_classes: int = 1, dropout: float = 0.5) -> None:
        super().__init__()
        self.backbone = SENetBackbone()
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x)))[:, 0]


def se_resnext50_32x4d(num_classes: int = 1, dropout: float = 0.5) -> FrameClassifier:
    return FrameClassifier(num_classes=num_classes, dropout=dropout)
