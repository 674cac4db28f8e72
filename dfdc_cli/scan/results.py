"""What `deepfake scan` says about a video, and how it is written out: the result records
(:class:`VideoScan`, one :class:`FaceScore` per face tube), their JSON document, the DFDC
submission CSV and the run's tally."""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from dfdc_cli import __version__
from dfdc_cli.atomic import csv_text, write_text
from dfdc_cli.faces.index import STATUS_ERROR, STATUS_NO_FACE, STATUS_OK

PRIOR = 0.5  # p(fake) of a video with no face or that failed (the seed's rule; scan.ensemble applies it)


@dataclass
class FaceScore:
    """One face tube of a video and what each member said about it."""

    tube_id: int
    first_frame: int
    last_frame: int
    n_frames: int
    box: list[int]  # union box in source pixels: x1, y1, x2, y2
    mean_prob: float  # mean detection probability
    members: dict[str, float] = field(default_factory=dict)  # member -> p(fake) of this tube
    p_fake: Optional[float] = None  # weighted mean over members, clipped
    tube_path: str = ""  # the tube MP4 in the scan cache
    window: int = 0  # the span window it was found in (0: the video's first frames)
    # frame models: member -> p(fake) of the tube's first frames, frame first_frame + i (the crops
    # they median over; every other one flipped, as scored)
    frame_scores: dict[str, list[float]] = field(default_factory=dict)
    boxes: list[list[int]] = field(default_factory=list)  # [frame, x1, y1, x2, y2, detected] every 10th frame
    track_path: str = ""  # the per-frame track in the scan cache (boxes, landmarks)


@dataclass
class VideoScan:
    video: str  # path as given (absolute)
    name: str  # file name (the DFDC key)
    status: str  # ok | no_face | error
    reason: str = ""  # why there is no verdict (no_face / error), or notes
    n_faces: int = 0
    faces: list[FaceScore] = field(default_factory=list)
    members: dict[str, Optional[float]] = field(default_factory=dict)  # member -> mean over faces (raw)
    # member -> its score through the calibration its model records ({}: none applied)
    members_calibrated: dict[str, Optional[float]] = field(default_factory=dict)
    p_fake: float = PRIOR  # the ensemble (of calibrated scores where applied), clipped; PRIOR: no verdict
    p_fake_raw: Optional[float] = None  # the ensemble of the raw scores, before calibration and clipping
    verdict: Optional[str] = None  # FAKE | REAL | UNSURE | None (no verdict)
    weak: bool = False  # faces found only by the low-threshold fallback: the verdict is UNSURE
    model_verdict: Optional[str] = None  # a weak video's verdict from its scores alone
    extract_seconds: float = 0.0  # extraction wall time (~0 on a cache hit)
    cached_members: list[str] = field(default_factory=list)  # members whose scores came from the score cache
    label: str = ""  # FAKE | REAL when known (eval)
    span: str = "first"  # first | whole | auto: which frames were read (dfdc_cli.scan.span)
    n_frames: int = 0  # the video's frames (0: not known; `first` counts them only for a video with no face)
    fps: float = 0.0
    frames_read: list[list[int]] = field(default_factory=list)  # [first, last] source frames per window read
    # per window read: window, start_frame, n_frames, status, reason, tube_ids, members, p_fake
    windows: list[dict] = field(default_factory=list)
    window: Optional[int] = None  # the window whose p(fake) is the video's (dfdc_cli.scan.span.combine_windows)

    @property
    def scanned(self) -> bool:
        return self.status in (STATUS_OK, STATUS_NO_FACE)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["label"]:
            d.pop("label")
        return d


@dataclass
class Tally:
    """A scan's counts, for its summary line and exit code."""

    videos: int
    fake: int
    real: int
    unsure: int  # UNSURE verdicts, weak ones included
    weak: int  # videos whose faces only the low-threshold fallback found
    no_face: int
    failed: int
    cached: int  # videos that reused some member's scores from the score cache

    @classmethod
    def of(cls, results: Sequence[VideoScan]) -> "Tally":
        return cls(videos=len(results), fake=sum(r.verdict == "FAKE" for r in results),
                   real=sum(r.verdict == "REAL" for r in results),
                   unsure=sum(r.verdict == "UNSURE" for r in results), weak=sum(bool(r.weak) for r in results),
                   no_face=sum(r.status == STATUS_NO_FACE for r in results),
                   failed=sum(r.status == STATUS_ERROR for r in results),
                   cached=sum(bool(r.cached_members) for r in results))

    def line(self) -> str:
        """The summary line's counts."""
        unsure = f", {self.unsure} UNSURE" + (f" ({self.weak} weak)" if self.weak else "") \
            if self.unsure or self.weak else ""
        return (f"{self.videos} videos: {self.fake} FAKE, {self.real} REAL{unsure}, {self.no_face} no face, "
                f"{self.failed} failed")

    @property
    def exit_code(self) -> int:
        """0 when every video was scanned (no face counts as scanned), 1 when any failed."""
        return 1 if self.failed else 0


def finite(obj):
    """``obj`` with every NaN/Inf float replaced by None: strict JSON parsers refuse bare NaN."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(results: Sequence[VideoScan], meta: Mapping) -> dict:
    return finite({"tool": f"deepfake {__version__}", **dict(meta), "videos": [r.to_dict() for r in results]})


def distinct_names(paths: Sequence[str]) -> list[str]:
    """Per path: its file name, or, where two different paths share a name, the shortest end of
    the path that tells it from the others (``a/clip.mp4``, ``b/clip.mp4``); the same file given
    twice keeps its name. Linear in the number of paths (folder-per-video datasets repeat one
    name thousands of times)."""
    parts = [tuple(x for x in str(p).split(os.sep) if x) or (str(p),) for p in paths]
    distinct = list(dict.fromkeys(parts))
    depth: dict[tuple[str, ...], int] = {}
    todo = distinct
    k = 1
    while todo:
        counts = Counter(ps[-k:] for ps in todo)
        left = []
        for ps in todo:
            if counts[ps[-k:]] == 1 or k >= len(ps):
                depth[ps] = k
            else:
                left.append(ps)
        todo, k = left, k + 1
    return [os.sep.join(ps[-depth[ps]:]) for ps in parts]


def display_names(results: Sequence[VideoScan]) -> list[str]:
    """The names a scan shows and writes: :func:`distinct_names` of the videos (a result without
    a path keeps its name)."""
    shown = distinct_names([r.video or r.name for r in results])
    return [s if r.video else r.name for s, r in zip(shown, results)]


def submission_rows(results: Sequence[VideoScan]) -> list[tuple[str, float]]:
    """DFDC submission: (filename, p(fake)); the prior 0.5 for videos without a verdict. Two
    videos with one name get their distinguishing paths (:func:`display_names`)."""
    return [(n, float(r.p_fake)) for n, r in zip(display_names(results), results)]


def write_submission(path: str | Path, results: Sequence[VideoScan]) -> None:
    write_text(path, csv_text(["filename", "label"], [(n, f"{p:.6f}") for n, p in submission_rows(results)]))
