"""Deterministic synthetic weights and face tubes, by the rules of the seed's golden outputs.

The seed's inference code was run, in float64, on every member filled with synthetic weights in the
released layouts, on synthetic face tubes (the reference goldens; their figures are in
``tests/data/medics_goldens.json``). With the same weights and tubes, our pipeline must give the
same p(fake) to 1e-5; the tests regenerate both here and check them against the goldens' sha256, so a platform that changes a draw is caught before a
p(fake) is compared. The same weights serve as realistic stand-ins where no trained model exists
(benchmarks, measuring scan with all eight members): unlike plain random init they keep every
member's output away from 0 and 1.

Weights (:func:`synthetic_state_dict`): one ``torch.Generator`` per member, seeded with
``crc32(member) ^ (seed * 0x9E3779B1 mod 2**32)``; entries in state_dict order, each drawn in
float64 and cast to its dtype. BatchNorm (a prefix with ``running_mean``): weight 1 + 0.1 N (x 0.5
for the BN closing a residual block's main branch), bias and running mean 0.1 N, running var
1 + 0.2 U[0, 1), ``num_batches_tracked`` = 1 without a draw. Other weights of >= 2 dims: He
(N x sqrt(2 / fan_in)), the stem of a raw-pixel member (r3d34) further x 1/127.5. Other biases:
0.01 N; anything else 0.02 N. Without the two extra scales residual members saturate (p = 0 or 1).

Tubes (:func:`synthetic_tube`): smooth moving sinusoids (shared luminance plus per-channel colour)
and a drifting, bobbing, soft-edged skin-toned ellipse, min/max-normalised to 0..255 and rounded.
"""

from __future__ import annotations

import hashlib
import math
import re
import zlib
from collections import OrderedDict
from typing import Iterable, Optional, Sequence

import torch

from .specs import get_spec

RES_GAMMA = 0.5  # residual rule: scale of the BN that closes each residual block's main branch
RAW_INPUT_GAIN = 1.0 / 127.5  # raw-pixel rule: extra scale of the stem of a member fed 0..255
_BLOCK = re.compile(r"^(.*layer\d+\.\d+)\.(.*)$")


def generator_seed(member: str, seed: int = 0) -> int:
    """32 bits (torch's CPU mt19937 uses only the low 32 bits of a seed); the member's name in it
    gives the pairs that share a layout (i3d_224 / i3d_cutmix_224, ...) different weights."""
    return (zlib.crc32(member.encode()) ^ ((int(seed) * 0x9E3779B1) & 0xFFFFFFFF)) & 0xFFFFFFFF


def layout_of(member: str) -> list[tuple[str, list[int], torch.dtype]]:
    """The member's state_dict layout (key, shape, dtype) in order, from our own network (which
    matches the released checkpoints key for key)."""
    from .registry import build_net

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        sd = build_net(get_spec(member).arch).state_dict()
    return [(k, list(v.shape), v.dtype) for k, v in sd.items()]


def synthetic_member(member: str, seed: int = 0, state_dict=None):
    """A :class:`~dfdc_models.registry.MemberModel` holding the member's synthetic weights (loaded
    strictly, as a registered checkpoint is), in eval mode. ``state_dict``: those weights, when
    already made (:func:`synthetic_state_dict`)."""
    from .registry import MemberModel, build_net

    spec = get_spec(member)
    with torch.device("meta"):  # the weights are assigned below: skip the random initialisation
        net = build_net(spec.arch)
    sd = synthetic_state_dict(member, seed) if state_dict is None else state_dict
    net.load_state_dict(sd, strict=True, assign=True)
    model = MemberModel(spec, net)
    model.source = f"synthetic:{member}:seed{seed}"
    return model.eval()


def synthetic_state_dict(member: str, seed: int = 0,
                         layout: Optional[Iterable[tuple[str, Sequence[int], torch.dtype]]] = None,
                         raw_pixels: Optional[bool] = None) -> "OrderedDict[str, torch.Tensor]":
    """The member's synthetic weights (rules in the module docstring). ``layout`` defaults to
    :func:`layout_of`; ``raw_pixels`` to whether the member takes raw 0..255 input."""
    entries = [(k, [int(d) for d in s], dt) for k, s, dt in (layout if layout is not None else layout_of(member))]
    if raw_pixels is None:
        raw_pixels = get_spec(member).scaling == "raw"
    g = torch.Generator().manual_seed(generator_seed(member, seed))

    bn = [k.rsplit(".", 1)[0] for k, _, _ in entries if k.endswith(".running_mean")]
    closing: dict[str, str] = {}
    for p in bn:  # in order: the last BN of a block's main branch wins
        m = _BLOCK.match(p)
        if m and "downsample" not in m.group(2):
            closing[m.group(1)] = p
    residual, bn = set(closing.values()), set(bn)
    stem_pending = bool(raw_pixels)

    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, shape, dtype in entries:
        prefix, _, leaf = key.rpartition(".")
        if not dtype.is_floating_point:
            out[key] = torch.ones(shape, dtype=dtype) if shape else torch.tensor(1, dtype=dtype)
            continue

        def randn():
            return torch.randn(shape, generator=g, dtype=torch.float64)

        if prefix in bn:
            if leaf == "weight":
                t = (1.0 + 0.1 * randn()) * (RES_GAMMA if prefix in residual else 1.0)
            elif leaf in ("bias", "running_mean"):
                t = 0.1 * randn()
            elif leaf == "running_var":
                t = 1.0 + 0.2 * torch.rand(shape, generator=g, dtype=torch.float64)
            else:
                t = 0.02 * randn()
        elif leaf == "weight" and len(shape) >= 2:
            scale = math.sqrt(2.0 / math.prod(shape[1:]))
            if stem_pending and len(shape) >= 3 and shape[1] == 3:
                scale *= RAW_INPUT_GAIN
                stem_pending = False
            t = randn() * scale
        elif leaf == "bias":
            t = 0.01 * randn()
        else:
            t = 0.02 * randn()
        out[key] = t.to(dtype).contiguous()
    return out


def synthetic_tube(seed: int, frames: int, size: int = 256) -> torch.Tensor:
    """A smooth synthetic face tube: uint8 (frames, size, size, 3), RGB, spanning exactly 0..255.
    The normalisation spans the whole tube, so a longer tube changes every frame."""
    g = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64

    def u(lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=g, dtype=f64))

    t = torch.arange(frames, dtype=f64).view(-1, 1, 1)
    y = ((torch.arange(size, dtype=f64) + 0.5) / size).view(1, -1, 1)
    x = ((torch.arange(size, dtype=f64) + 0.5) / size).view(1, 1, -1)
    tau = 2.0 * math.pi

    def waves(base: torch.Tensor, amp: tuple, freq: float, speed: float) -> torch.Tensor:
        for _ in range(4):
            a, fx, fy, w, ph = u(*amp), u(-freq, freq), u(-freq, freq), u(-speed, speed), u(0.0, tau)
            base = base + a * torch.sin(tau * (fx * x + fy * y) + w * t + ph)
        return base

    shared = waves(torch.zeros(frames, size, size, dtype=f64), (0.5, 1.0), 2.0, 0.12)
    img = torch.stack([waves(shared.clone(), (0.2, 0.6), 2.5, 0.15) for _ in range(3)], dim=-1)

    cx0, cy0 = u(0.42, 0.58), u(0.40, 0.55)
    vx, vy = u(-0.0015, 0.0015), u(-0.0015, 0.0015)
    bob_a, bob_w, bob_p = u(0.005, 0.02), u(0.05, 0.15), u(0.0, tau)
    ax, ay = u(0.20, 0.26), u(0.27, 0.33)
    cx = cx0 + vx * t + bob_a * torch.sin(bob_w * t + bob_p)
    cy = cy0 + vy * t + bob_a * torch.cos(bob_w * t + bob_p)
    r = torch.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    face = torch.sigmoid((1.0 - r) / 0.08)
    tone = torch.tensor([u(1.0, 1.3), u(0.7, 0.95), u(0.5, 0.75)], dtype=f64)
    img = img + 4.0 * face.unsqueeze(-1) * tone

    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) * 255.0
    return torch.round(img).clamp_(0, 255).to(torch.uint8).contiguous()


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and raw bytes (the goldens' convention)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{list(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def state_dict_sha256(sd) -> str:
    """sha256 over every entry's key and :func:`tensor_sha256`, in order."""
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode())
        h.update(tensor_sha256(v).encode())
    return h.hexdigest()
