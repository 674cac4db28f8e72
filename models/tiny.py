"""Tiny stand-in networks with the output shapes of the real ones.

They let the plumbing around the models (registry, store, scan batching, TTA and ensembling
arithmetic) run end to end in seconds on a CPU: used by the tests and by ``bench_scan.py --tiny``.
They detect nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from .archs import get_arch


class Tiny3d(nn.Module):
    """(B, 3, T, H, W) -> 2 logits, like the 3D members' softmax heads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, stride=(2, 4, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


class Tiny2d(nn.Module):
    """(B, 3, H, W) -> 1 logit, like the 2D member's sigmoid head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def tiny_net(arch: str) -> nn.Module:
    """A stand-in for :func:`dfdc_models.registry.build_net`: the architecture record's tiny variant."""
    return get_arch(arch).build_tiny()
