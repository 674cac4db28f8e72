"""I3D: Inception-v1 inflated to 3D (Carreira & Zisserman 2017), in the layout of the public PyTorch port
(piergiaj/pytorch-i3d) that the seed trained from.

This network is the project's own because no dependency provides it: torchvision's video models are
ResNets (R3D, MC3, R(2+1)D) and timm has no 3D networks, and the layout and padding below must match
the seed's checkpoints exactly. Its registry record (scaling x/255*2-1, 64-frame clips, 224 only) is in
:mod:`dfdc_models.archs`.

Layout facts the seed's checkpoints depend on (``i3d_224`` / ``i3d_cutmix_224``):

* ``logits`` is registered before the endpoint modules, so the state_dict starts with ``logits.*``;
* every conv/pool uses TensorFlow-style dynamic SAME padding computed from the input size;
* BatchNorm ``eps=1e-3, momentum=0.01``;
* head: ``AvgPool3d([2, 7, 7], stride 1)`` -> dropout -> 1x1x1 ``logits`` conv -> squeeze space ->
  mean over the remaining T' = ceil(T/8) - 1 time steps *inside* ``forward`` (the seed's
  ``output_method='avg_pool'``). The fixed 7x7 window means the input must be 224x224.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding for one dimension: (front, back), front gets the smaller half."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    t, h, w = x.shape[-3:]
    pt, ph, pw = (_same_pad(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    return F.pad(x, (*pw, *ph, *pt))


class MaxPool3dSamePadding(nn.MaxPool3d):
    """Max pooling with TF SAME padding (zeros, as the reference port pads with F.pad)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(_pad_same(x, self.kernel_size, self.stride))


class Unit3D(nn.Module):
    """Conv3d (SAME padding) + optional BatchNorm3d(eps 1e-3, momentum 0.01) + optional activation."""

    def __init__(
        self,
        in_channels: int,
        output_channels: int,
        kernel_shape: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        activation_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = F.relu,
        use_batch_norm: bool = True,
        use_bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_shape = tuple(kernel_shape)
        self.stride = tuple(stride)
        self.activation_fn = activation_fn
        self.conv3d = nn.Conv3d(in_channels, output_channels, kernel_size=self.kernel_shape,
                                stride=self.stride, padding=0, bias=use_bias)
        self.bn = nn.BatchNorm3d(output_channels, eps=0.001, momentum=0.01) if use_batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel_shape, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        if self.activation_fn is not None:
            x = self.activation_fn(x)
        return x


class InceptionModule(nn.Module):
    """Four branches: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool 3x3 -> 1x1; concatenated on channels."""

    def __init__(self, in_channels: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = out_channels
        self.b0 = Unit3D(in_channels, c0, (1, 1, 1))
        self.b1a = Unit3D(in_channels, c1a, (1, 1, 1))
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, c2a, (1, 1, 1))
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a = MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=0)
        self.b3b = Unit3D(in_channels, c3, (1, 1, 1))
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, kind, args): the Inception-v1 endpoints in forward order.
_ENDPOINTS: tuple[tuple[str, str, tuple], ...] = (
    ("Conv3d_1a_7x7", "conv", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "conv", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D classifier; ``forward`` returns logits (B, num_classes), averaged over time."""

    feature_channels = 1024

    def __init__(self, num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        # Registered first: the reference's state_dict begins with logits.* (see module docstring).
        self.logits = self._make_logits(num_classes)
        channels = in_channels
        for name, kind, args in _ENDPOINTS:
            if kind == "conv":
                out, kernel, stride = args
                module: nn.Module = Unit3D(channels, out, kernel, stride)
                channels = out
            elif kind == "pool":
                kernel, stride = args
                module = MaxPool3dSamePadding(kernel_size=kernel, stride=stride, padding=0)
            else:
                module = InceptionModule(channels, args)
                channels = module.out_channels
            self.add_module(name, module)
        assert channels == self.feature_channels
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
        self.dropout = nn.Dropout(dropout)

    def _make_logits(self, num_classes: int) -> Unit3D:
        return Unit3D(self.feature_channels, num_classes, (1, 1, 1), activation_fn=None,
                      use_batch_norm=False, use_bias=True)

    def replace_logits(self, num_classes: int) -> None:
        """A fresh classifier (the reference's ``replace_logits``); keeps ``logits`` first in the state_dict."""
        self.num_classes = num_classes
        self.logits = self._make_logits(num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for name, _, _ in _ENDPOINTS:
            x = getattr(self, name)(x)
        return x

    def time_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-time-step logits (B, num_classes, T') with T' = ceil(T/8) - 1, before the time mean."""
        x = self.features(x)
        kt, kh, kw = self.avg_pool.kernel_size
        if x.shape[-3] < kt or x.shape[-2] < kh or x.shape[-1] < kw:
            raise ValueError(f"I3D needs 224x224 input and at least 9 frames (its head pools "
                             f"{kt}x{kh}x{kw}); got a {'x'.join(map(str, x.shape[-3:]))} feature map")
        x = self.logits(self.dropout(self.avg_pool(x)))
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"I3D needs 224x224 input (its head pools a fixed 7x7 map); got a "
                             f"{tuple(x.shape[-2:])} map after pooling")
        return x.flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.time_logits(x).mean(dim=2)


def i3d() -> InceptionI3d:
    """The seed's I3D members' network: 2 classes (index 0 = FAKE). Record in :mod:`dfdc_models.archs`."""
    return InceptionI3d(num_classes=2)
