"""The seed's 2D member network: SE-ResNeXt50 32x4d per frame, wrapped as the seed's ``SingleHead``:
``backbone`` (global average pool, no classifier) -> ``dropout`` (0.5) -> ``fc`` Linear(2048, 1).

The backbone is timm's ``legacy_seresnext50_32x4d``: Cadene's ``pretrainedmodels`` SENet, which the seed
used, with the same parameter names (``layer0.conv1 ... layerN.i.se_module.fc1``) and the same stem pool
(``MaxPool2d(3, 2, ceil_mode=True)``), so the seed's checkpoints load strictly and compute the same
outputs (tests/test_models.py checks both against the network this project used to write by hand).

Pretrained initialisation (:func:`map_pretrained_keys`) takes timm's ``seresnext50_32x4d`` weights (the
ResNet-style model: ``conv1``, ``layerN.i.se.fc1``, ``fc``) or Cadene's (``layer0.conv1``,
``se_module``, ``last_linear``). Record in :mod:`dfdc_models.archs`.
"""

from __future__ import annotations

import timm
import torch
from torch import nn


class FrameClassifier(nn.Module):
    """The seed's ``SingleHead``: backbone -> Dropout -> Linear. ``forward`` on (B,3,H,W) gives the raw
    FAKE logit (B,) (the seed's ``forward_image``)."""

    def __init__(self, num_classes: int = 1, dropout: float = 0.5) -> None:
        super().__init__()

        # num_classes=0: timm's global average pool without its classifier, (B,3,H,W) -> (B,2048);
        # drop_rate=0: timm's SENet would drop 20% of the pooled features in training, before our own
        # dropout (the seed's head has that one only)
        self.backbone = timm.create_model("legacy_seresnext50_32x4d", pretrained=False, num_classes=0, drop_rate=0.0)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x)))[:, 0]


def seresnext50() -> FrameClassifier:
    return FrameClassifier(num_classes=1, dropout=0.5)


def map_pretrained_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``seresnext50_32x4d`` (``conv1``, ``layerN.i.se.fc1``, ``fc``) or Cadene (``layer0.conv1``,
    ``se_module``, ``last_linear``) key names -> our ``backbone.`` layout. timm's ImageNet ``fc`` keeps
    its name (our head is ``fc`` too: dropped as a head of another shape); Cadene's ``last_linear`` is
    ignored (the record's ``ignored_prefixes``)."""
    if any(k.startswith("backbone.") for k in sd):
        return sd
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith(("conv1.", "bn1.")):  # timm ResNet-style stem
            out["backbone.layer0." + k] = v
        elif k.startswith("layer0."):  # Cadene stem
            out["backbone." + k] = v
        elif k.startswith("layer"):
            out["backbone." + k.replace(".se.", ".se_module.")] = v
        else:
            out[k] = v
    return out
