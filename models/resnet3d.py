"""3D ResNets in the layout of Hara et al.'s public code (kenshohara/3D-ResNets-PyTorch), which the
seed's ``r3d34_224`` member was trained from; written in the style of torchvision's ``VideoResNet``:
one generic class, variants as parameters (block, blocks per stage, shortcut type).

Layout: ``conv1/bn1`` stem (7x7x7, stride (1,2,2)) -> maxpool 3x3x3 stride 2 -> ``layer1..4`` of
``conv1/bn1/conv2/bn2[/conv3/bn3]`` blocks -> global average pool -> ``fc``.

Shortcut type ``"A"`` is parameter-free: where a block changes stride or width, the identity is
subsampled with stride s (``avg_pool3d`` of kernel 1) and zero channels are appended, so there are no
``downsample.*`` keys. We build the zeros on the input's device and dtype (the reference builds a CPU
float32 tensor unless the input is a CUDA float tensor). Type ``"B"`` uses a 1x1x1 conv + BN projection
(``downsample.0/1``).

This network is the project's own because torchvision's ``VideoResNet`` cannot express it: torchvision
has a 3x7x7 stem without max pool and only projection (type-B) shortcuts, while the seed's R3D-34 has a
7x7x7 stem, a max pool and parameter-free type-A shortcuts. Its registry record (raw 0..255 input) is in
:mod:`dfdc_models.archs`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Type, Union

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Type-A shortcut: stride-s subsampling plus zero channel padding, no parameters."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        missing = self.planes - out.shape[1]
        if missing <= 0:
            return out
        zeros = out.new_zeros((out.shape[0], missing, *out.shape[2:]))
        return torch.cat([out, zeros], dim=1)

    def extra_repr(self) -> str:
        return f"planes={self.planes}, stride={self.stride}"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = conv3x3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet3d(nn.Module):
    """Generic 3D ResNet (Hara et al. layout). ``forward`` returns logits (B, num_classes).

    The head is a global (adaptive) average pool, so neither clip length nor frame size is fixed.
    """

    def __init__(self, block: Block, layers: Sequence[int], shortcut_type: str = "B",
                 num_classes: int = 400, in_channels: int = 3) -> None:
        super().__init__()
        if shortcut_type not in ("A", "B"):
            raise ValueError(f"shortcut_type must be 'A' or 'B', not {shortcut_type!r}")
        self.shortcut_type = shortcut_type
        self.inplanes = 64
        self.conv1 = nn.Conv3d(in_channels, 64, kernel_size=7, stride=(1, 2, 2), padding=(3, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=(3, 3, 3), stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.BatchNorm3d)) and m.weight.is_meta:
                continue  # a shape-only build (layout checks): nothing to initialise
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample: Optional[nn.Module] = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            if self.shortcut_type == "A":
                downsample = ZeroPadShortcut(planes * block.expansion, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(planes * block.expansion),
                )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


_DEPTHS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def resnet3d(depth: int, shortcut_type: str = "B", num_classes: int = 400) -> ResNet3d:
    """Hara et al.'s ``resnet{depth}`` (10, 18, 34, 50, 101)."""
    block, layers = _DEPTHS[depth]
    return ResNet3d(block, layers, shortcut_type=shortcut_type, num_classes=num_classes)



def r3d34() -> ResNet3d:
    """The seed's ``r3d34_224`` network: type-A shortcuts, 2 classes (index 0 = FAKE). Record in
    :mod:`dfdc_models.archs`."""
    return resnet3d(34, shortcut_type="A", num_classes=2)
