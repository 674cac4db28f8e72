"""The three torchvision video networks among the seed's members (MC3-18, R(2+1)D-18, R3D-18): torchvision
builds them in exactly the seed's layout, so these factories only set the 2-class head (index 0 = FAKE).
Their records (scaling, pretrained files, torchvision's Kinetics-400 weights) are in :mod:`dfdc_models.archs`."""

from __future__ import annotations

from torchvision.models import video


def mc3() -> video.VideoResNet:
    return video.mc3_18(num_classes=2)


def r2plus1d() -> video.VideoResNet:
    return video.r2plus1d_18(num_classes=2)


def r3d18() -> video.VideoResNet:
    return video.r3d_18(num_classes=2)
