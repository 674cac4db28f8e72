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

Job arrays (``--shard K/N``) write their own part of the tables, ``videos.part-K-of-N.csv`` and
``tubes.part-K-of-N.csv``, so that shards sharing a folder never write the same file. Readers
(:func:`read_videos`, :func:`read_tubes`) merge the main tables and every part; :func:`merge_parts`
folds the parts into the main tables. Every write of a folder's tables holds the folder's lock
(:func:`index_lock`), so a merge never loses the rows of a shard that is still writing.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from .atomic import atomic_path

VIDEOS_CSV = "videos.csv"
TUBES_CSV = "tubes.csv"
LOCK_FILE = ".index.lock"
_PART = re.compile(r"^videos\.part-(\d+)-of-(\d+)\.csv$")

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


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """One CSV table as written (an empty frame with ``columns`` when it does not exist)."""
    if not path.exists():
        return pd.DataFrame(columns=columns)
    df = pd.read_csv(path, keep_default_na=False, dtype={"label": str, "original": str, "part": str})
    return df


def table_paths(index_dir: str | Path, shard: Optional[tuple[int, int]] = None) -> tuple[Path, Path]:
    """(videos, tubes) tables a run writes: the main ones, or shard K of N's part."""
    d = Path(index_dir)
    if shard is None:
        return d / VIDEOS_CSV, d / TUBES_CSV
    k, n = shard
    return d / f"videos.part-{k}-of-{n}.csv", d / f"tubes.part-{k}-of-{n}.csv"


def part_tables(index_dir: str | Path) -> list[tuple[Path, Path]]:
    """The (videos, tubes) parts that shards left in ``index_dir``, by N then K."""
    return [table_paths(index_dir, (k, n)) for k, n in parts_of(index_dir)]


def parts_of(index_dir: str | Path) -> list[tuple[int, int]]:
    """The shards (K, N) whose parts are in ``index_dir``, by N then K."""
    d = Path(index_dir)
    found = []
    for p in d.glob("videos.part-*-of-*.csv") if d.is_dir() else []:
        m = _PART.match(p.name)
        if m:
            found.append((int(m.group(2)), int(m.group(1))))
    return [(k, n) for n, k in sorted(found)]


def has_index(index_dir: str | Path) -> bool:
    v, t = table_paths(index_dir)
    return v.exists() or t.exists() or bool(part_tables(index_dir))


@contextlib.contextmanager
def index_lock(index_dir: str | Path) -> Iterator[None]:
    """Exclusive lock on a folder's tables (``.index.lock``; flock works across the nodes of NFS v4
    and of most cluster filesystems, Lustre only when mounted with ``-o flock``)."""
    import fcntl

    d = Path(index_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _by_path(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by their video's path, as a folder's files are (stable: tubes keep their order)."""
    keys = [Path(str(x)).parts for x in df["video"]]
    return df.iloc[sorted(range(len(keys)), key=keys.__getitem__)]


def read_index(index_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(videos, tubes) of a folder: the main tables merged with every shard's part.

    A video's rows come from the last table that has it (parts after the main tables), so a
    video extracted again by a shard replaces its older rows. With parts present the rows are
    sorted by video path (tube rows keep their order within a video), which is the order of one
    run over the same folder, whatever shards wrote them."""
    sources = [table_paths(index_dir)] + part_tables(index_dir)
    if len(sources) == 1:
        return read_table(sources[0][0], VIDEO_COLUMNS), read_table(sources[0][1], TUBE_COLUMNS)
    vids, tubes = [], []
    for src, (vp, tp) in enumerate(sources):
        v, t = read_table(vp, VIDEO_COLUMNS), read_table(tp, TUBE_COLUMNS)
        vids.append(v.assign(_src=src))
        tubes.append(t.assign(_src=src))
    v = pd.concat(vids, ignore_index=True)
    t = pd.concat(tubes, ignore_index=True)
    winner = v.groupby(v["video"].astype(str))["_src"].max().to_dict()
    # boolean masks as arrays: an empty list would select no columns instead of no rows
    v = v[np.array([winner[str(x)] == s for x, s in zip(v["video"], v["_src"])], dtype=bool)]
    v = v.drop_duplicates(subset=["video"], keep="last")
    keep = np.array([winner.get(str(x), s) == s for x, s in zip(t["video"], t["_src"])], dtype=bool)
    t = t[keep].drop_duplicates(subset=["tube_path"], keep="last")
    v, t = _by_path(v), _by_path(t)
    return (v.drop(columns="_src").reset_index(drop=True).reindex(columns=VIDEO_COLUMNS),
            t.drop(columns="_src").reset_index(drop=True).reindex(columns=TUBE_COLUMNS))


def read_videos(index_dir: str | Path) -> pd.DataFrame:
    return read_index(index_dir)[0]


def read_tubes(index_dir: str | Path) -> pd.DataFrame:
    return read_index(index_dir)[1]


def merge_parts(index_dir: str | Path) -> tuple[list[tuple[int, int]], int, int]:
    """Fold the shards' parts into the main tables and remove them, under the folder's lock.
    Returns (the shards (K, N) merged, videos, tubes). Safe to interrupt: the parts are removed
    only after the merged tables are written, and merging again gives the same tables."""
    d = Path(index_dir)
    with index_lock(d):
        shards = parts_of(d)
        videos, tubes = read_index(d)
        if shards:
            main_v, main_t = table_paths(d)
            write_table(main_v, videos.to_dict("records"), VIDEO_COLUMNS)
            write_table(main_t, tubes.to_dict("records"), TUBE_COLUMNS)
            for vp, tp in part_tables(d):
                vp.unlink(missing_ok=True)
                tp.unlink(missing_ok=True)
    return shards, len(videos), len(tubes)


def resolve_index(path: Optional[str | Path]) -> Path:
    """Accept an index folder or either of its CSV files; default: the data dir's tube index."""
    from .paths import default_tubes_dir

    p = Path(path) if path is not None else default_tubes_dir()
    if p.is_file() and p.name in (VIDEOS_CSV, TUBES_CSV):
        p = p.parent
    return p
