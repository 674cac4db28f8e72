"""Face detectors behind one interface, so that another detector is one module in this folder.

A detector module defines ``make(device, batch_size) -> Detector``; :func:`load` finds it by name. A
:class:`Detector` answers ``faces(frames, settings)``: one :class:`~dfdc_cli.faces.index.Faces` per
frame (boxes ``x1, y1, x2, y2`` and five landmarks in frame pixels, by descending probability).
Extraction only ever calls a :data:`DetectFn` (a detector's bound ``faces``, or a proxy to one in
the main process or a Ray actor), so it does not know which detector runs.

:class:`DetectSettings` is what one call asks for; extraction's parameters fill it
(:class:`dfdc_cli.faces.extract.params.ExtractParams`: MTCNN's per-stage thresholds, pyramid factor
and minimum face size). A detector without a cascade or a pyramid reads ``thresholds[-1]`` as its
confidence threshold and ignores what it has no use for.

Detectors: :mod:`.mtcnn` (our batched MTCNN cascade on facenet-pytorch's weights; the default).
"""

from __future__ import annotations

import importlib
from typing import Callable, NamedTuple, Optional, Protocol, Sequence

import numpy as np

from dfdc_cli.faces.index import Faces

DEFAULT = "mtcnn"


class DetectSettings(NamedTuple):
    """One detection call's settings: frames with equal settings and size share a batch."""

    thresholds: tuple
    factor: float
    min_face_size: float


class Detector(Protocol):
    def faces(self, frames: Sequence[np.ndarray], settings: DetectSettings) -> list[Faces]:
        """uint8 RGB frames (H, W, 3) of one size -> one Faces per frame, in input order."""
        ...


# What extraction calls: (uint8 RGB frames of one size, settings) -> one Faces per frame.
DetectFn = Callable[[list, DetectSettings], list]


def load(name: str = DEFAULT, device: str = "cpu", batch_size: Optional[int] = None) -> Detector:
    """The detector module ``name`` of this folder, built for ``device``."""
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise ValueError(f"unknown face detector {name!r}") from None
    return module.make(device=device, batch_size=batch_size)
