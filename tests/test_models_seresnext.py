"""The 2D member's network is timm's ``legacy_seresnext50_32x4d`` in the seed's head: it loads the seed's
2D checkpoint layout strictly and computes what the hand-written Cadene SE-ResNeXt50 this project used
before computed (kept below only as the reference), in train and eval mode."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from dfdc_models.registry import build_net
from dfdc_models.synthetic import synthetic_state_dict
from models_util import layout


# ---- the reference: the project's former models/senet2d.py (Cadene's pretrainedmodels SENet layout) ----

class _SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class _Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, groups, reduction, stride=1, downsample=None, base_width=4):
        super().__init__()
        width = math.floor(planes * (base_width / 64)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False, stride=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = _SEModule(planes * 4, reduction=reduction)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.se_module(out) + residual)


class _Backbone(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), groups=32, reduction=16):
        super().__init__()
        self.inplanes = 64
        self.layer0 = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)),
            ("bn1", nn.BatchNorm2d(64)),
            ("relu1", nn.ReLU(inplace=True)),
            ("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
        ]))
        self.layer1 = self._make_layer(64, layers[0], groups, reduction, 1)
        self.layer2 = self._make_layer(128, layers[1], groups, reduction, 2)
        self.layer3 = self._make_layer(256, layers[2], groups, reduction, 2)
        self.layer4 = self._make_layer(512, layers[3], groups, reduction, 2)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)

    def _make_layer(self, planes, blocks, groups, reduction, stride):
        out = planes * 4
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        layers = [_Bottleneck(self.inplanes, planes, groups, reduction, stride, downsample)]
        self.inplanes = out
        layers += [_Bottleneck(out, planes, groups, reduction) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x)))))
        return self.avg_pool(x).flatten(1)


class _ReferenceFrameClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.dropout = nn.Dropout(p=0.5)
        self.fc = nn.Linear(2048, 1)

    def forward(self, x):
        return self.fc(self.dropout(self.backbone(x)))[:, 0]


# ---- the tests ----

@pytest.fixture(scope="module")
def nets():
    sd = synthetic_state_dict("seresnext50_2d")
    # the weights have exactly the seed's released 2D layout (keys, order, shapes)
    assert [[k, list(v.shape)] for k, v in sd.items()] == [[k, s] for k, s, _ in layout("seresnext50_2d")["state_dict"]]
    ours, ref = build_net("seresnext50"), _ReferenceFrameClassifier()
    result = ours.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ref.load_state_dict(sd, strict=True)
    assert type(ours.backbone).__name__ == "SENet"  # timm's, not a copy of the reference
    return ours, ref


@pytest.mark.parametrize("size", [97, 256])  # odd: the ceil-mode stem pool keeps a row a padded pool would not
def test_timm_legacy_seresnext_matches_the_former_network(nets, size):
    ours, ref = nets
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x), atol=1e-5, rtol=1e-5)


def test_timm_legacy_seresnext_matches_in_train_mode(nets):
    """Training uses batch statistics and dropout: the same draw of the dropout mask gives the same logits."""
    ours, ref = nets
    x = torch.randn(4, 3, 65, 65, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.manual_seed(0)
        a = ours.train()(x)
        torch.manual_seed(0)
        b = ref.train()(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
