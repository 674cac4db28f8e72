"""The single place that builds an ensemble member and checks weights against a network.

:func:`build` turns a :class:`MemberSpec` (or a member name) into a :class:`~dfdc_models.member.MemberModel`
(RGB 0..255 clips in, FAKE logit / p(fake) out); :func:`build_net` gives an architecture's bare network
from its :mod:`dfdc_models.archs` record. :func:`load_strict` / :func:`check_layout` compare a state_dict with
a network and say in one line what differs, naming the architecture the file is when it is another
(:func:`match_layouts`: every registered layout, built on the meta device).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from . import layouts
from .archs import arch_names, get_arch
from .checkpoint import (
    describe_mismatch, differences, extract_state_dict, mismatch_report, read_checkpoint, strip_prefix,
)
from .errors import UserError
from .member import IMAGENET_MEAN, IMAGENET_STD, MemberModel  # noqa: F401 - where callers import them from
from .specs import MemberSpec, get_spec

SpecLike = Union[MemberSpec, str]


def build_net(arch: str) -> nn.Module:
    """The bare network of an architecture, with a fresh (random) head, in the seed's layout.

    Everything here builds networks through this name, so tests and the benchmark can swap in tiny
    stand-ins by replacing it (``monkeypatch.setattr(dfdc_models.registry, "build_net", ...)``)."""
    return get_arch(arch).build()


def build(spec: SpecLike, *, init: Optional[Union[str, os.PathLike]] = None,
          weights: Optional[Union[str, os.PathLike]] = None,
          device: Optional[Union[str, torch.device]] = None) -> MemberModel:
    """Build a member (a :class:`MemberSpec`, a seed member name or ``<arch>_<res>``).

    ``init``: a local pretrained file to start training from (Kinetics/ImageNet, see
    :mod:`dfdc_models.pretrained`); the classification head stays fresh.
    ``weights``: a full checkpoint of this member (a state_dict in the seed's layout, or a trainer
    checkpoint wrapping one), loaded strictly.
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    net = build_net(spec.arch)
    model = MemberModel(spec, net)
    if init is not None and weights is not None:
        raise ValueError("give either init= (pretrained backbone) or weights= (full checkpoint), not both")
    if init is not None:
        from .pretrained import load_pretrained

        load_pretrained(net, spec.arch, init)
        model.source = f"init:{Path(init).name}"
    if weights is not None:
        sd = extract_state_dict(read_checkpoint(weights), source=str(weights))
        load_strict(net, normalize_keys(sd), str(weights), f"member {spec.name} ({spec.arch})")
        model.source = str(weights)
    if device is not None:
        model = model.to(device)
    return model


def normalize_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes a full checkpoint may carry: ``module.`` (DataParallel) and ``net.`` (a
    :class:`MemberModel`'s own state_dict)."""
    return strip_prefix(strip_prefix(sd, "module."), "net.")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def largest_layout_bytes() -> int:
    """The fp32 size of the largest registered architecture's weights, as :func:`build_net` builds them."""
    return layouts.largest_layout_bytes(build_net)


def match_layouts(sd: Mapping[str, torch.Tensor]) -> tuple[list[str], str, str]:
    """Which architectures' layouts ``sd`` matches exactly (networks built on the meta device).

    Returns (matching architectures, the closest architecture, its mismatch line); the last two are
    what to tell a user whose file matches none ("" when one matches)."""
    matches: list[str] = []
    closest: tuple[int, str, str] = (1 << 30, "", "")
    for arch in arch_names():
        own = layouts.meta_state_dict(arch, build_net)
        shapes, missing, unexpected = differences(own, sd)
        n = len(shapes) + len(missing) + len(unexpected)
        if n == 0:
            matches.append(arch)
        elif not matches and n < closest[0]:
            closest = (n, arch, describe_mismatch(own, sd, shapes, missing, unexpected))
    return (matches, "", "") if matches else ([], closest[1], closest[2])


def guess_arch(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The architecture whose fresh state_dict matches ``sd`` exactly, if any."""
    matches = match_layouts(sd)[0]
    return matches[0] if matches else None


def check_layout(net: nn.Module, sd: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """A one-line :class:`UserError` unless ``sd`` loads strictly into ``net`` (which may live on the
    meta device: only keys and shapes are compared)."""
    problem = mismatch_report(net, sd)
    if problem is not None:
        guess = guess_arch(sd)
        hint = f" (it is a {guess} checkpoint)" if guess else ""
        raise UserError(f"{source} does not match {what}{hint}: {problem}")


def load_strict(net: nn.Module, sd: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """``net.load_state_dict(sd, strict=True)`` with a one-line :class:`UserError` on any mismatch."""
    check_layout(net, sd, source, what)
    net.load_state_dict(sd, strict=True)
