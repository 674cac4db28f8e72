"""The small per-frame networks of the frame model trained here (timm image networks, built from scratch:
no weights are downloaded), with one output like the 2D member's head. Records in :mod:`models.archs`."""

from __future__ import annotations

import torch
from torch import nn


class FrameNet(nn.Module):
    """A timm image network with one output: (B,3,H,W) -> the FAKE logit (B,)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(name, pretrained=False, num_classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[:, 0]


def resnet18() -> FrameNet:
    return FrameNet("resnet18")


def efficientnet_b0() -> FrameNet:
    return FrameNet("efficientnet_b0")


def mobilenetv3_large_100() -> FrameNet:
    return FrameNet("mobilenetv3_large_100")


def regnetx_004() -> FrameNet:
    return FrameNet("regnetx_004")
