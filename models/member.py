"""An ensemble member: :class:`MemberModel` wraps a bare network and applies the conventions of its
architecture (from its :mod:`dfdc_models.archs` record, copied into the member's spec), so that callers only
ever see "RGB 0..255 clip in, FAKE logit / p(fake) out".

A :class:`MemberModel` takes clips as the tube store gives them - RGB, values 0..255 (uint8 or float),
shape (B, 3, T, H, W) at the member's resolution - and

* :meth:`MemberModel.fake_logit` returns the FAKE logit used for training (BCE-with-logits on it with
  target 1 = FAKE is exactly the seed's 2-class cross-entropy, because for a softmax2 member
  p(fake) = softmax(l)[0] = sigmoid(l0 - l1));
* :meth:`MemberModel.predict` returns p(fake) (B,) in eval mode, with the seed's test-time handling
  (3D: mean of p(fake) over the clip and its horizontal flip; 2D: every even-indexed frame flipped,
  per-frame sigmoid, lower median over frames).

Input scaling (the record's ``scaling``: x/255*2-1 for I3D and the TF-ported EfficientNet-Lite, raw 0..255 for the 3D ResNet-34, ImageNet
mean/std for torchvision members, BGR-indexed mean/std for the 2D member) is applied inside.

The raw network (seed state_dict layout) is ``member.net``; save/load ``member.net.state_dict()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .specs import MemberSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MemberModel(nn.Module):
    """One ensemble member: clip in, p(fake) out. See the module docstring for the conventions."""

    def __init__(self, spec: MemberSpec, net: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        if spec.scaling in ("imagenet", "imagenet_bgr"):
            # imagenet_bgr: the seed's 2D preprocessor flips RGB->BGR and then subtracts mean[i]/std[i]
            # on channel i of the BGR array, i.e. the same numbers, indexed on BGR channels.
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        else:
            mean, std = torch.zeros(3), torch.ones(3)
        self.register_buffer("mean", mean.view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1, 1), persistent=False)
        self.source: str = ""  # where the weights came from (a file, an init, a registry entry)
        self.model_id: str = ""  # registry id when loaded from the store

    # -- description -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def res(self) -> int:
        return self.spec.res

    def extra_repr(self) -> str:
        return f"member={self.spec.name}, arch={self.spec.arch}, res={self.spec.res}"

    # -- conventions ------------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        p = next(self.net.parameters(), None)
        return torch.float32 if p is None else p.dtype

    def preprocess(self, clip: torch.Tensor) -> torch.Tensor:
        """RGB 0..255 clip (B,3,T,H,W) or frames (B,3,H,W) -> the network's input scaling (float)."""
        if clip.dim() not in (4, 5) or clip.shape[1] != 3:
            raise ValueError(f"{self.spec.name}: expected (B, 3, T, H, W) RGB clips, got shape {tuple(clip.shape)}")
        four_d = clip.dim() == 4
        x = clip.unsqueeze(2) if four_d else clip
        dtype = self._dtype() if not torch.is_floating_point(x) else x.dtype
        x = x.to(dtype)
        scaling = self.spec.scaling
        if scaling in ("i3d", "inception"):  # (x/255 - 0.5) / 0.5
            x = x / 255.0 * 2.0 - 1.0
        elif scaling == "raw":
            pass
        elif scaling in ("imagenet", "imagenet_bgr"):
            if scaling == "imagenet_bgr":
                x = x.flip(1)
            x = (x / 255.0 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        else:
            raise ValueError(f"unknown scaling {scaling!r}")
        return x.squeeze(2) if four_d else x

    def net_fake_logit(self, x: torch.Tensor) -> torch.Tensor:
        """FAKE logit of already-scaled input. 3D: (B,3,T,H,W) -> (B,). 2D: (B,3,H,W) -> (B,), or
        (B,3,T,H,W) -> (B,T) per frame."""
        if self.spec.kind == "2d":
            if x.dim() == 5:
                b, c, t, h, w = x.shape
                frames = x.transpose(1, 2).reshape(b * t, c, h, w)
                return self.net(frames).reshape(b, t)
            return self.net(x)
        out = self.net(x)
        if self.spec.output == "softmax2_fake0":
            return out[:, 0] - out[:, 1]
        return out[:, 0] if out.dim() == 2 else out

    def fake_logit(self, clip: torch.Tensor) -> torch.Tensor:
        """Training output: the FAKE logit of a raw RGB 0..255 clip (see :meth:`net_fake_logit`)."""
        return self.net_fake_logit(self.preprocess(clip))

    forward = fake_logit

    def p_fake_2d(self, clip: torch.Tensor) -> torch.Tensor:
        """The 2D member's test-time rule: p(fake) (B,) of raw RGB 0..255 clips (B,3,T,H,W).

        Every even-indexed frame flipped horizontally, per-frame sigmoid, lower median over frames.
        Runs in the module's current mode and grad state, so that :meth:`predict` (scan) and the
        trainer's validation (under its autocast) score a tube by one and the same rule."""
        if self.spec.kind != "2d":
            raise ValueError(f"{self.spec.name}: p_fake_2d is the 2D member's rule, this member is {self.spec.kind}")
        return self.p_fake_frames(clip).median(dim=1).values  # torch.median: the LOWER middle value for even T

    def p_fake_frames(self, clip: torch.Tensor) -> torch.Tensor:
        """The 2D member's per-frame p(fake) (B, T) of raw RGB 0..255 clips (B,3,T,H,W), every
        even-indexed frame flipped horizontally (the seed's notebook): what :meth:`p_fake_2d` takes
        the median of, and what a report's timeline shows."""
        if self.spec.kind != "2d":
            raise ValueError(f"{self.spec.name}: per-frame scores are the 2D member's, this member is {self.spec.kind}")
        if clip.dim() != 5:  # (a lone frame (B,3,H,W) would have its rows taken for frames)
            raise ValueError(f"{self.spec.name}: expected (B, 3, T, H, W) frame stacks, got shape {tuple(clip.shape)}")
        x = self.preprocess(clip).clone()  # (preprocess may hand back the caller's tensor: flip a copy)
        x[:, :, ::2] = x[:, :, ::2].flip(-1)  # the seed's notebook flips every even-indexed frame
        return torch.sigmoid(self.net_fake_logit(x).float())  # (B, T)

    @torch.no_grad()
    def predict_frames(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A 2D member's (p(fake) (B,), per-frame p(fake) (B, T)): :meth:`predict` and the frame
        scores it takes the median of, from one forward pass. Switches to eval mode."""
        if clip.dim() == 4:
            clip = clip.unsqueeze(0)
        self.eval()
        frames = self.p_fake_frames(clip)
        return frames.median(dim=1).values, frames

    @torch.no_grad()
    def predict(self, clip: torch.Tensor) -> torch.Tensor:
        """p(fake) (B,) of raw RGB 0..255 clips (B,3,T,H,W), with the seed's test-time handling.

        Switches the module to eval mode (and leaves it there)."""
        if clip.dim() == 4:
            clip = clip.unsqueeze(0)
        self.eval()
        if self.spec.kind == "2d":
            return self.p_fake_2d(clip)
        x = self.preprocess(clip)
        p = torch.sigmoid(self.net_fake_logit(x).float())
        if self.spec.flip_tta:
            p = (p + torch.sigmoid(self.net_fake_logit(x.flip(-1)).float())) / 2
        return p


def resize_frames(x: torch.Tensor, res: int, mode: str = "bilinear") -> torch.Tensor:
    """Float frames (..., H, W) -> (..., res, res): bilinear (or ``mode``, a 2D member's
    architecture record's ``interpolation``), align_corners=False, no antialiasing, in float and
    never rounded back to uint8.

    The one resize of a member's input, shared by scan (``dfdc_cli.scan.members.prepare_3d``) and
    training, so that a member sees one kind of resampling in both. It is what the seed's notebook
    did (OpenCV INTER_LINEAR on the float centre crop, 224 -> 112, normalised without
    re-quantising); an exact halving is the mean of each 2x2 block, computed as such (faster, same
    numbers)."""
    h, w = x.shape[-2:]
    if (h, w) == (res, res):
        return x
    lead = x.shape[:-2]
    y = x.reshape(-1, 1, h, w)
    if h == w == 2 * res and mode == "bilinear":
        y = F.avg_pool2d(y, 2)
    else:
        y = F.interpolate(y, size=(res, res), mode=mode, align_corners=False, antialias=False)
    return y.reshape(*lead, res, res)
