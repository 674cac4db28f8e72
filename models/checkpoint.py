"""Reading checkpoint files safely, with one-line errors a user can act on, and describing how a
state_dict differs from a network's (strict loading against the registered architectures is
:func:`dfdc_models.registry.load_strict`)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path
from .errors import UserError
from .layouts import largest_layout_bytes


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into ``path`` atomically, the same tensors giving the same bytes.

    torch names the archive's inner folder after the path it is handed, and an atomic write's
    temporary file has a random name: given an open file, it names it "archive". So a regenerated
    model is byte-identical, and its registry id (a hash of the file) the same."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Files up to this size are never too large (every member's weights are smaller); above it the
# cap below is worked out from the architectures' layouts.
SIZE_FLOOR = 256 << 20
# A trainer's last.pt holds the weights and about four copies more (optimiser moments, lookahead's
# slow weights); anything beyond that, and a margin, is not a checkpoint of a member.
_COPIES = 6
_MARGIN = 64 << 20


def size_cap() -> int:
    """The largest checkpoint (bytes on disk, or unpacked from its zip) loaded at all: a few times the
    largest registered architecture's fp32 weights. A bigger file is refused before it is read, so
    neither a huge file nor a zip bomb can take the machine's memory."""
    return max(SIZE_FLOOR, _COPIES * largest_layout_bytes() + _MARGIN)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def _check_size(path: Path, size: int, what: str) -> None:
    if size > SIZE_FLOOR:
        cap = size_cap()
        if size > cap:
            raise UserError(f"{path} {what} {_gib(size)}, far more than any member's weights (the limit is "
                            f"{_gib(cap)}); not loaded")


def _check_unpacked(path: Path, source) -> None:
    """A zip checkpoint (torch's format) is refused when its entries unpack to more than the cap."""
    try:
        if not zipfile.is_zipfile(source):
            return
        with zipfile.ZipFile(source) as z:
            total = sum(i.file_size for i in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load says what is wrong with it
    finally:
        if hasattr(source, "seek"):
            source.seek(0)
    _check_size(path, total, "unpacks to")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise UserError(f"not a file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path} is empty")
    _check_size(path, size, "is")


def read_bytes(path: str | os.PathLike) -> bytes:
    """A checkpoint file's bytes (one read serves loading, hashing and storing it), with the same
    one-line errors as :func:`read_checkpoint`."""
    path = Path(path).expanduser()
    _check_file(path)
    return path.read_bytes()


def numpy_globals() -> list:
    """The numpy types a trainer checkpoint pickles (the numpy RNG state, numpy scalars in the
    history): allow-listed by name for a safe load, so no other global can run."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    kinds = (np.bool_, np.uint8, np.uint32, np.int32, np.int64, np.float16, np.float32, np.float64)
    return [np.ndarray, np.dtype, _reconstruct, scalar, *{type(np.dtype(k)) for k in kinds}]


def read_checkpoint(path: str | os.PathLike, data: bytes | None = None, allow: tuple = ()) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with clear errors for missing,
    truncated, corrupt or non-tensor (arbitrary pickle) files. ``data``: the file's bytes, when the
    caller has already read them (:func:`read_bytes`). ``allow``: further types the safe load may
    rebuild (e.g. :func:`numpy_globals` for a trainer's ``last.pt``); nothing else is ever run."""
    path = Path(path).expanduser()
    if data is None:
        _check_file(path)
    source = path if data is None else io.BytesIO(data)
    _check_unpacked(path, source)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allow)):
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if m:
            raise UserError(f"{path} is not a plain weights file: it pickles the Python object "
                            f"{m.group(1)}, which a safe load (weights_only) refuses; save a state_dict "
                            "instead") from None
        raise UserError(f"{path} is not a PyTorch weights file that loads safely (weights_only) - is it "
                        "truncated, corrupt, or a pickle of something other than tensors?") from None
    except Exception as exc:  # torch raises RuntimeError/KeyError/EOFError/... for damaged files
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {_short(first)}); "
                        "is it truncated or corrupt?") from None


def _short(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded checkpoint: a plain state_dict, or a ``{'state_dict': ...}`` /
    ``{'model': ...}`` wrapper (our trainer, kenshohara's files); a ``module.`` prefix (DataParallel) is
    stripped."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model", "net"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        kind = type(obj).__name__
        raise UserError(f"{source} does not hold a state_dict (found {kind}"
                        f"{' with keys ' + ', '.join(map(str, list(obj)[:5])) if isinstance(obj, Mapping) and obj else ''})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{source} does not hold a state_dict: entry {bad[0]!r} is not a named tensor")
    return strip_prefix(dict(obj), "module.")


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def describe_mismatch(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], shapes: list[str],
                      missing: list[str], unexpected: list[str], shown: tuple[int, int, int] = (1, 2, 2)) -> str:
    """One line naming the first shape mismatches, missing and unexpected keys (``shown`` of each)."""
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es), first " + ", ".join(
            f"{k}: file {_shape(sd[k])} vs model {_shape(own[k])}" for k in shapes[: shown[0]]))
    if missing:
        parts.append(f"{len(missing)} missing key(s), first " + ", ".join(missing[: shown[1]]))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first " + ", ".join(unexpected[: shown[2]]))
    return "; ".join(parts)


def differences(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]):
    """The keys of ``sd`` that differ from ``own``: (shape mismatches, missing, unexpected)."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    return shapes, missing, unexpected


def mismatch_report(net: nn.Module, sd: Mapping[str, torch.Tensor]) -> str | None:
    """None when ``sd`` matches ``net``'s state_dict key for key and shape for shape, otherwise one line
    naming the first differences."""
    own = net.state_dict()
    shapes, missing, unexpected = differences(own, sd)
    if not (missing or unexpected or shapes):
        return None
    return describe_mismatch(own, sd, shapes, missing, unexpected)
