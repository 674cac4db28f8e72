"""Architectures' weight layouts on the meta device (shapes only, no memory): what the registry matches
files against and what bounds the size of a checkpoint worth reading. A leaf: :mod:`.checkpoint` and
:mod:`.registry` both use it."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Optional

import torch
from torch import nn

from .archs import arch_names, get_arch


def _own_network(arch: str) -> nn.Module:
    return get_arch(arch).build()


@lru_cache(maxsize=None)
def meta_state_dict(arch: str, builder: Optional[Callable[[str], nn.Module]] = None) -> dict[str, torch.Tensor]:
    """An architecture's state_dict on the meta device, built once per builder (default: the
    architecture's own network; the registry passes its build_net, which tests swap for tiny ones)."""
    with torch.device("meta"):
        return (builder or _own_network)(arch).state_dict()


def largest_layout_bytes(builder: Optional[Callable[[str], nn.Module]] = None) -> int:
    """The fp32 size of the largest registered architecture's weights."""
    return max(sum(v.numel() * max(4, v.element_size()) for v in meta_state_dict(a, builder).values())
               for a in arch_names())
