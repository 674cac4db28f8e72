"""Where a member looked: Grad-CAM maps over the face crops it scored (for a scan report).

Grad-CAM (Selvaraju et al., 2017): the gradient of the member's FAKE logit with respect to the
activations of its last convolution that still has a spatial extent, averaged over space (and
time) to weigh the channels; the weighted sum of the activations, negative parts dropped, scaled
to [0, 1] and resized to the input. For a 3D member the map has a time axis too, which says which
frames of the tube weighed most. It is a saliency map: where the score is sensitive, not a mask
of manipulated pixels.

Works on any :class:`dfdc_models.member.MemberModel` (the convolution is found by running the
network, not by name), so the frame models, the seed's 3D members and the tiny test networks
all get one.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfdc_cli.scan.members import prepare_2d, prepare_3d
from dfdc_models.archs import get_arch


def _last_spatial_conv_output(model: nn.Module, run) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, activation of the last executed convolution with height and width >= 2) of
    ``run()``, the activation kept for its gradient."""
    state: dict = {}

    def hook(_mod, _inp, out):
        if isinstance(out, torch.Tensor) and out.dim() in (4, 5) and out.shape[-1] >= 2 and out.shape[-2] >= 2:
            out.retain_grad()
            state["act"] = out

    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    if "act" not in state:
        raise ValueError("the network has no convolution with a spatial output")
    return out, state["act"]


def grad_cam(model, clip: torch.Tensor) -> np.ndarray:
    """Grad-CAM of a member for one input as its ``predict`` takes it, raw RGB 0..255: a frame
    (1, 3, H, W) for a frame model (-> (H, W)), a clip (1, 3, T, H, W) for a 3D member
    (-> (T, H, W)); float32 in [0, 1] (all zeros when the logit does not depend on the input)."""
    model.eval()
    p = next(model.parameters(), None)
    clip = clip.to(p.device) if p is not None else clip  # (a scanner's members may live on a GPU)
    with torch.enable_grad():
        x = model.preprocess(clip.float()).detach()
        out, act = _last_spatial_conv_output(model, lambda: model.net_fake_logit(x))
        model.zero_grad(set_to_none=True)
        out.float().sum().backward()
        grad = act.grad
        if grad is None:
            raise ValueError("no gradient reached the last convolution")
        dims = tuple(range(2, act.dim()))
        weights = grad.mean(dim=dims, keepdim=True)
        cam = torch.relu((weights * act).sum(dim=1, keepdim=True)).detach().float()  # (1, 1, [T'], H', W')
    size = tuple(clip.shape[2:])
    cam = F.interpolate(cam, size=size, mode="trilinear" if cam.dim() == 5 else "bilinear", align_corners=False)
    cam = cam[0, 0].cpu().numpy()
    top = float(cam.max())
    return (cam / top).astype(np.float32) if top > 0 else np.zeros_like(cam, dtype=np.float32)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A heatmap (JET colours) of ``cam`` (H, W in [0, 1]) blended over an RGB image of the same size."""
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return (rgb.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).clip(0, 255).astype(np.uint8)


def frame_cam(model, crop: np.ndarray, flipped: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A frame model's map over one 2D crop (uint8 (256, 256, 3), as extracted): (the crop as the
    member saw it at its resolution, the map over it). ``flipped``: the crop was scored mirrored
    (the seed flips every other frame); the map is mirrored back onto the plain crop."""
    mode = get_arch(model.spec.arch).interpolation  # the resize the member was trained and scored with
    x = prepare_2d(torch.from_numpy(np.ascontiguousarray(crop))[None, None], model.spec.res, mode)[:, :, 0]  # 1,3,r,r
    seen = x[0].permute(1, 2, 0).float().round().clamp(0, 255).numpy().astype(np.uint8)
    cam = grad_cam(model, x.flip(-1) if flipped else x)
    return seen, (cam[:, ::-1].copy() if flipped else cam)


def clip_cam(model, tube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 3D member's map over a tube (uint8 (T, 256, 256, 3), as extracted): (the frames as the
    member saw them (T, r, r, 3), the map (T, r, r))."""
    x = prepare_3d(torch.from_numpy(np.ascontiguousarray(tube))[None], model.spec.res)  # 1,3,T,r,r
    seen = x[0].permute(1, 2, 3, 0).float().round().clamp(0, 255).numpy().astype(np.uint8)
    return seen, grad_cam(model, x)


def top_frames(cam: np.ndarray, k: int = 3) -> list[int]:
    """The ``k`` frames of a 3D map (T, H, W) that weigh most (highest mean), in time order."""
    mass = cam.reshape(cam.shape[0], -1).mean(axis=1)
    return sorted(int(i) for i in np.argsort(-mass, kind="stable")[: max(1, k)])


def member_module(member) -> Optional[object]:
    """The :class:`~dfdc_models.member.MemberModel` behind a scanner's member (None: a bare function)."""
    m = getattr(member, "module", None)
    return m if m is not None and hasattr(m, "net_fake_logit") and hasattr(m, "preprocess") else None
