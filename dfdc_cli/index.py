"""The tube index: the contract between `extract` and `train` / `eval` / `scan`.

An index folder holds two CSV tables:

``videos.csv``  one row per source video: whether extraction worked (``status`` ok / no_face /
                error, with ``reason``), its size, and the label/original when known.
``tubes.csv``   one row per face tube: where it came from (frames, union box in source pixels),
                how sure the detector was, the label, and the paths of the tube MP4 and its track.

Each tube is stored as two files:

``<stem>.mp4``  every frame of the span, cropped to the union box, zero-padded bottom/right to a
                square and resized to 256x256; H.264 (crf 23), source fps.
``<stem>.npz``  the per-frame track, all in SOURCE pixels (see :class:`Track`).
``<stem>_2d.mp4`` (optional) the 2D member's input: the first 32 frames of the span, each a square
                crop of side 1.2 x the 90th percentile of the track's box size around the
                interpolated box centre, resized to 256x256 (cubic).

Tables are written atomically; paths in ``tube_path``/``track_path`` are absolute.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .atomic import atomic_path

VIDEOS_CSV = "videos.csv"
TUBES_CSV = "tubes.csv"

STATUS_OK = "ok"
STATUS_NO_FACE = "no_face"
STATUS_ERROR = "error"


@dataclass
class VideoRecord:
    video: str  # absolute path of the source video
    name: str  # file name, e.g. "abofeumbvv.mp4" (the DFDC key)
    status: str  # ok | no_face | error
    reason: str = ""  # why, for no_face / error
    n_tubes: int = 0
    n_frames: int = 0  # frames decoded (after any --first-frames limit)
    width: int = 0  # displayed size (after rotation)
    height: int = 0
    fps: float = 0.0
    label: str = ""  # FAKE | REAL | "" (unknown)
    original: str = ""  # for fakes: the real video it was made from (DFDC metadata), else ""
    part: str = ""  # DFDC part folder name (e.g. dfdc_train_part_45), else parent folder name
    key: str = ""  # cache key (content hash + parameters)
    seconds: float = 0.0  # wall time of the extraction


@dataclass
class TubeRecord:
    video: str
    name: str
    tube_id: int  # 0..k-1, ranked by mean detection probability (0 = most confident)
    first_frame: int  # inclusive, source frame index
    last_frame: int  # inclusive
    n_frames: int  # last_frame - first_frame + 1 == frames in the tube MP4
    x1: int  # union box in source pixels (after rotation), x2/y2 exclusive
    y1: int
    x2: int
    y2: int
    mean_prob: float
    max_prob: float
    n_detections: int  # sampled frames with a detection in this tube
    label: str = ""
    original: str = ""
    part: str = ""
    tube_path: str = ""
    track_path: str = ""
    tube2d_path: str = ""  # 2D pathway crops (first 32 frames, square 1.2x boxes), when extracted
    key: str = ""


VIDEO_COLUMNS = [f.name for f in fields(VideoRecord)]
TUBE_COLUMNS = [f.name for f in fields(TubeRecord)]


@dataclass
class Track:
    """Per-frame geometry of one tube, in source pixels; one entry per frame of the tube.

    Boxes and landmarks are interpolated (linearly) between sampled detections and held constant
    before the first / after the last one; ``detected`` marks the frames that had a real detection.
    Tube pixel = (source pixel - (x1, y1)) * 256 / side, with side = max(x2 - x1, y2 - y1).
    """

    frames: np.ndarray  # (n,) int64 source frame indices
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    landmarks: np.ndarray  # (n, 5, 2) float32 (eyes, nose, mouth corners) x, y
    probs: np.ndarray  # (n,) float32, detection probability; NaN where not detected
    detected: np.ndarray  # (n,) bool
    crop_box: np.ndarray  # (4,) int64 union box x1, y1, x2, y2
    size: int = 256  # side of the tube frames

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{k: np.asarray(v) for k, v in asdict(self).items()})

    @classmethod
    def load(cls, path: str | Path) -> "Track":
        with np.load(path) as z:
            return cls(**{k: (z[k] if z[k].ndim else z[k].item()) for k in z.files})

    def to_tube_coords(self, xy: np.ndarray) -> np.ndarray:
        """Map source-pixel coordinates (..., 2) to tube-frame pixel coordinates."""
        x1, y1, x2, y2 = (float(v) for v in self.crop_box)
        side = max(x2 - x1, y2 - y1)
        return (np.asarray(xy, dtype=np.float32) - np.array([x1, y1], np.float32)) * (self.size / side)


def write_table(path: str | Path, rows: list, columns: list[str]) -> None:
    """Write dataclass rows (or dicts) as CSV, atomically, with a fixed column order."""
    df = pd.DataFrame([asdict(r) if not isinstance(r, dict) else r for r in rows], columns=columns)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=columns)
    df = pd.read_csv(path, keep_default_na=False, dtype={"label": str, "original": str, "part": str})
    return df


def read_videos(index_dir: str | Path) -> pd.DataFrame:
    return _read(Path(index_dir) / VIDEOS_CSV, VIDEO_COLUMNS)


def read_tubes(index_dir: str | Path) -> pd.DataFrame:
    return _read(Path(index_dir) / TUBES_CSV, TUBE_COLUMNS)


def resolve_index(path: Optional[str | Path]) -> Path:
    """Accept an index folder or either of its CSV files; default: the data dir's tube index."""
    from .paths import default_tubes_dir

    p = Path(path) if path is not None else default_tubes_dir()
    if p.is_file() and p.name in (VIDEOS_CSV, TUBES_CSV):
        p = p.parent
    return p
