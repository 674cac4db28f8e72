"""Helpers shared by the model tests: the seed's checkpoint layouts (tests/data/layouts) and random
state_dicts built from them."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import torch

LAYOUTS = Path(__file__).parent / "data" / "layouts"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}


@lru_cache(maxsize=None)
def layout(member: str) -> dict:
    return json.loads((LAYOUTS / f"{member}.json").read_text())


def random_state_dict(member: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the keys, shapes and dtypes of the member's released checkpoint."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape, dtype in layout(member)["state_dict"]:
        dt = _DTYPES[dtype]
        if dt.is_floating_point:
            t = torch.rand(shape, generator=g, dtype=dt) * 0.1
            if key.endswith("running_var"):
                t = t + 1.0
        else:
            t = torch.randint(0, 1000, shape, generator=g, dtype=dt)
        sd[key] = t
    return sd


def shared_state_dict(member: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Like :func:`random_state_dict` (same keys, shapes, dtypes), but every float tensor is a view of
    one random buffer, so ``torch.save`` writes that buffer once: a checkpoint in the released layout
    at a fraction of the size (the 224 members are ~0.7 GB together otherwise)."""
    return shared_random([(k, s, _DTYPES[d]) for k, s, d in layout(member)["state_dict"]], seed)


def shared_random(entries, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict for ``(key, shape, dtype)`` entries whose float tensors share one random buffer."""
    g = torch.Generator().manual_seed(seed)
    entries = [(k, list(s), d) for k, s, d in entries]
    biggest = max(math.prod(shape) for _, shape, _ in entries)
    buf = torch.rand(biggest, generator=g) * 0.1 + 0.5  # > 0: a valid running_var too
    sd: dict[str, torch.Tensor] = {}
    for key, shape, dt in entries:
        if dt == torch.float32:
            sd[key] = buf[: math.prod(shape)].view(shape)
        else:
            sd[key] = torch.randint(0, 1000, shape, generator=g, dtype=dt)
    return sd


def save_layout_checkpoint(member: str, path: Path, prefix: str = "", wrap: str | None = None) -> Path:
    sd = {prefix + k: v for k, v in random_state_dict(member).items()}
    torch.save({wrap: sd} if wrap else sd, path)
    return path
