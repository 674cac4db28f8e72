"""The options of a scan, as one typed record: `deepfake scan` and `deepfake eval` build it once from
their command line, and :func:`dfdc_cli.scan.factory.make_scanner` reads it. No torch here (the
commands import it for ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ScanOptions:
    members: Optional[tuple[str, ...]] = None  # None: every member with a model (else the built-in one)
    weights: Optional[str] = None  # as --weights gives them, e.g. "i3d_224=2,mc3_112=0.5"; None: equal
    threshold: Optional[float] = None  # verdict FAKE at p(fake) >= this; None: the model's band, else 0.5
    device: str = "auto"
    workers: Optional[int] = None  # extraction/decoding workers; None: per core
    batch_size: int = 8  # tubes per forward pass
    precision: str = "auto"
    rescore: bool = False  # recompute member scores the score cache has
    ray: Optional[str] = None  # a Ray cluster (local, auto or an address) whose actors scan; None: here
    keep_tubes: bool = False  # also write the tube MP4s into the scan cache
    span: str = 'first'  # make_scanner's span (see the scan command's --span)
    windows: int = 8  # make_scanner's windows (see the scan command's --windows)
