"""What `deepfake scan` says about a video, and how it is written out: the result records
(:class:`VideoScan`, one :class:`FaceScore` per face tube), their JSON document, the DFDC
submission CSV and the run's tally."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .ensemble import PRIOR
from .index import STATUS_ERROR, STATUS_NO_FACE, STATUS_OK


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


@dataclass
class VideoScan:
    video: str  # path as given (absolute)
    name: str  # file name (the DFDC key)
    status: str  # ok | no_face | error
    reason: str = ""  # why there is no verdict (no_face / error), or notes
    n_faces: int = 0
    faces: list[FaceScore] = field(default_factory=list)
    members: dict[str, Optional[float]] = field(default_factory=dict)  # member -> mean over faces
    p_fake: float = PRIOR  # the ensemble, clipped; PRIOR when there is no verdict
    p_fake_raw: Optional[float] = None  # the ensemble before clipping
    verdict: Optional[str] = None  # FAKE | REAL | None (no verdict)
    extract_seconds: float = 0.0  # extraction wall time (~0 on a cache hit)
    cached_members: list[str] = field(default_factory=list)  # members whose scores came from the score cache
    label: str = ""  # FAKE | REAL when known (eval)

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
    no_face: int
    failed: int
    cached: int  # videos that reused some member's scores from the score cache

    @classmethod
    def of(cls, results: Sequence[VideoScan]) -> "Tally":
        return cls(videos=len(results), fake=sum(r.verdict == "FAKE" for r in results),
                   real=sum(r.verdict == "REAL" for r in results),
                   no_face=sum(r.status == STATUS_NO_FACE for r in results),
                   failed=sum(r.status == STATUS_ERROR for r in results),
                   cached=sum(bool(r.cached_members) for r in results))

    @property
    def exit_code(self) -> int:
        """0 when every video was scanned (no face counts as scanned), 1 when any failed."""
        return 1 if self.failed else 0


def to_json(results: Sequence[VideoScan], meta: Mapping) -> dict:
    from . import __version__

    return {"tool": f"deepfake {__version__}", **dict(meta), "videos": [r.to_dict() for r in results]}


def submission_rows(results: Sequence[VideoScan]) -> list[tuple[str, float]]:
    """DFDC submission: (filename, p(fake)); the prior 0.5 for videos without a verdict."""
    return [(r.name, float(r.p_fake)) for r in results]


def write_submission(path: str | Path, results: Sequence[VideoScan]) -> None:
    from .atomic import write_text

    lines = ["filename,label"] + [f"{n},{p:.6f}" for n, p in submission_rows(results)]
    write_text(path, "\n".join(lines) + "\n")
