"""Where the networks run: one device resolver and one precision vocabulary for extract, scan, eval
and train, and the process group under torchrun.

Devices: ``auto`` (the GPU when there is one), ``cpu``, ``cuda``, ``cuda:N``. Precisions: ``auto``,
``fp32``, ``bf16``, ``fp16`` (``off`` is read as ``fp32`` for recipes written before the vocabulary was
shared). Mixed precision only ever runs on CUDA: on a CPU every precision is fp32, so the same command
gives the same digits on any CPU.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Optional

from dfdc_cli.errors import UserError

DEVICE_HELP = "auto (the GPU when there is one) | cpu | cuda | cuda:N"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = "auto | fp32 | bf16 | fp16 (mixed precision on a GPU; a CPU always computes in fp32)"
_ALIASES = {"off": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def one_thread() -> None:
    """One torch and one OpenCV thread: for a worker given one core (extract's process pool, a Ray
    task), where more threads per worker only contend with the other workers. (Not for forked
    DataLoader workers: ``cv2.setNumThreads`` hangs there, see ``data.worker_init``.)"""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def resolve_device(device: Optional[str] = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; an unavailable or unknown device is a
    one-line error naming it."""
    dev = str(device or "auto").strip().lower()
    if dev == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return dev
    if dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {dev}: CUDA is not available on this machine (use --device cpu)")
        if ":" in dev and int(dev[5:]) >= torch.cuda.device_count():
            raise UserError(f"--device {dev}: this machine has {torch.cuda.device_count()} GPU(s)")
        return dev
    raise UserError(f"unknown device {device!r} ({DEVICE_HELP})")


def check_precision(precision: Optional[str]) -> str:
    p = str(precision or "auto").strip().lower()
    p = _ALIASES.get(p, p)
    if p not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    return p


def effective_precision(device: str, precision: Optional[str], auto: str = "fp16") -> str:
    """The precision a run really computes in: fp32 off CUDA; on CUDA ``auto`` becomes the caller's
    ``auto`` (scan and eval: fp16, the more precise half format for inference; training passes
    ``bf16``, whose range needs no loss scaling), and bf16 falls back to fp16 on GPUs without it."""
    p = check_precision(precision)
    if not str(device).startswith("cuda"):
        return "fp32"
    if p == "auto":
        p = auto
    if p == "bf16":
        import torch

        if not torch.cuda.is_bf16_supported():
            return "fp16"
    return p


def autocast_dtype(device: str, precision: Optional[str], auto: str = "fp16") -> Any:
    """The torch dtype for ``torch.autocast`` (None: full precision)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
        effective_precision(device, precision, auto)]


def autocast(device: str, dtype: Any):
    """``torch.autocast`` on CUDA with ``dtype``; a no-op context for full precision."""
    if dtype is None or not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda", dtype=dtype)


@dataclass
class Runtime:
    """One training process: its device, its place in the process group, its autocast dtype."""

    device: Any  # torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    amp_dtype: Any = None  # None: full precision
    owns_process_group: bool = False  # this run initialised torch.distributed (and tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list:
        if not self.distributed:
            return [obj]
        import torch

        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Device, autocast dtype and (under torchrun) the process group; RANK / WORLD_SIZE / LOCAL_RANK
    come from torchrun, and ``cuda`` then means each rank's own GPU."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev == "cuda" and world > 1:
        dev = f"cuda:{local}"
    device_t = torch.device(dev)
    if device_t.type == "cuda":
        torch.cuda.set_device(device_t)
    owns = False
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device_t.type == "cuda" else "gloo")
        owns = True
    dtype = autocast_dtype(dev, precision, auto="bf16")
    return Runtime(device_t, rank, world, local, world > 1, dtype, owns)
