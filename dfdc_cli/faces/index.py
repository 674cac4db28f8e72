"""The tube index: the contract between `extract` and `train` / `eval` / `scan`.

An index folder holds two CSV tables:

``videos.csv``  one row per source video: whether extraction worked (``status`` ok / no_face /
                error, with ``reason``), its size, and the label/original when known.
``tubes.csv``   one row per face tube: where it came from (frames, union box in source pixels),
                how sure the detector was, the label, and the paths of the tube MP4 and its track.

Each tube is stored as two files:

``<stem>.mp4``  every frame of the span, cropped to the union box, zero-padded bottom/right to a
                square and resized to 256x256 (``TUBE_SIZE``); H.264 (crf 23), source fps.
``<stem>.npz``  the per-frame track, all in SOURCE pixels (see :class:`Track`).
``<stem>_2d.mp4`` (optional) the 2D member's input: the first 32 (``FRAMES_2D``) frames of the
                span, each a square crop of side 1.2 x the 90th percentile of the track's box size around the
                interpolated box centre, resized to 256x256 (cubic).

Tables are written atomically; paths in ``tube_path``/``track_path`` are absolute. One function
merges rows into them (:func:`write_index`, and :class:`IndexWriter` while a run goes); readers give
tables (:func:`read_index`) or typed records (:func:`read_records`).

This module also owns the facts every stage shares: the tube side and the 2D frame count, the
per-frame track of a tube (:class:`Track`) and the faces of one frame (:class:`Faces`, what the
detector returns and the tube rule takes).

Job arrays (``--shard K/N``) write their own part of the tables, ``videos.part-K-of-N.csv`` and
``tubes.part-K-of-N.csv``, so that shards sharing a folder never write the same file. Readers
(:func:`read_videos`, :func:`read_tubes`) merge the main tables and every part; :func:`merge_parts`
folds the parts into the main tables. Every write of a folder's tables holds the folder's lock
(:func:`dfdc_cli.atomic.index_lock`), so a merge never loses the rows of a shard that is still writing.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from dfdc_cli.atomic import atomic_path, index_lock
from dfdc_cli.errors import UserError
from dfdc_cli.paths import default_tubes_dir

VIDEOS_CSV = "videos.csv"
TUBES_CSV = "tubes.csv"
_PART = re.compile(r"^videos\.part-(\d+)-of-(\d+)\.csv$")

TUBE_SIZE = 256  # side of the tube frames and of the 2D crops (the seed's)
FRAMES_2D = 32  # the 2D pathway's crops: the first 32 frames of each tube (what the 2D member scores)
INDEX_EVERY_S = 2.0  # a run brings its index up to date at most this often (IndexWriter)

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
    tube2d_path: str = ""  # 2D pathway crops (first FRAMES_2D frames, square 1.2x boxes), when extracted
    key: str = ""


VIDEO_COLUMNS = [f.name for f in fields(VideoRecord)]
TUBE_COLUMNS = [f.name for f in fields(TubeRecord)]


@dataclass
class Track:
    """Per-frame geometry of one tube, in source pixels; one entry per frame of the tube.

    Boxes and landmarks are interpolated (linearly) between sampled detections and held constant
    before the first / after the last one; ``detected`` marks the frames that had a real detection.
    Tube pixel = (source pixel - (x1, y1)) * size / side, with side = max(x2 - x1, y2 - y1).
    """

    frames: np.ndarray  # (n,) int64 source frame indices
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    landmarks: np.ndarray  # (n, 5, 2) float32 (eyes, nose, mouth corners) x, y
    probs: np.ndarray  # (n,) float32, detection probability; NaN where not detected
    detected: np.ndarray  # (n,) bool
    crop_box: np.ndarray  # (4,) int64 union box x1, y1, x2, y2
    size: int = TUBE_SIZE  # side of the tube frames

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


@dataclass
class Faces:
    """The faces found in one frame (k may be 0): what :class:`dfdc_cli.faces.detectors.mtcnn.FaceDetector` returns
    (in the pixels of the frame it was given) and :func:`dfdc_cli.faces.tubes.find_tubes` takes (in source
    pixels). Boxes are ``x1, y1, x2, y2`` (a box may extend a little past the frame edges);
    landmarks are five ``(x, y)`` points in MTCNN order: the eye on the image's left, the other eye,
    nose tip, left mouth corner, right mouth corner; the detector orders faces by descending
    probability."""

    boxes: np.ndarray  # (k, 4) float32
    probs: np.ndarray  # (k,) float32: O-Net face probability
    landmarks: np.ndarray  # (k, 5, 2) float32

    def __len__(self) -> int:
        return int(np.asarray(self.boxes).shape[0])

    @staticmethod
    def empty() -> "Faces":
        return Faces(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))


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


_CASTS = {"int": int, "float": float, "str": str}


def record_from(cls, row: Mapping):
    """A record of ``cls`` (:class:`VideoRecord`, :class:`TubeRecord`) from a table row or a
    result's dict: the fields found in ``row``, each cast to its declared type (a blank cell: ""
    for a text field, the field's default for a number); other keys are ignored."""
    out = {}
    for f in fields(cls):
        if f.name not in row:
            continue
        v = row[f.name]
        blank = isinstance(v, str) and v == "" or isinstance(v, float) and math.isnan(v)
        if blank and f.type == "str":
            out[f.name] = ""
        elif not (blank and f.default is not MISSING):
            out[f.name] = _CASTS[f.type](v)
    return cls(**out)


def read_records(index_dir: str | Path) -> tuple[list[VideoRecord], list[TubeRecord]]:
    """The rows of :func:`read_index` as typed records."""
    videos, tubes = read_index(index_dir)
    return ([record_from(VideoRecord, r) for r in videos.to_dict("records")],
            [record_from(TubeRecord, r) for r in tubes.to_dict("records")])


def write_index(out_dir: str | Path, videos: Sequence[VideoRecord], tubes: Sequence[TubeRecord],
                fresh: bool = False, shard: Optional[tuple[int, int]] = None) -> None:
    """Merge rows into ``out_dir``'s tables: each of ``videos`` replaces the rows of the same video
    and all its tubes; a tube of a video not among ``videos`` (a self-blended copy added beside its
    real tube) replaces the row of the same ``tube_path``. ``fresh`` drops the rows already there.
    A shard's rows go to its own part of the tables (:func:`table_paths`). Holds the folder's lock:
    runs and shards writing into one folder at once never lose each other's rows."""
    videos_csv, tubes_csv = table_paths(out_dir, shard)
    new_v = pd.DataFrame([asdict(v) for v in videos], columns=VIDEO_COLUMNS)
    new_t = pd.DataFrame([asdict(t) for t in tubes], columns=TUBE_COLUMNS)
    done = set(new_v["video"].astype(str))
    added = set(new_t.loc[~new_t["video"].astype(str).isin(done), "tube_path"].astype(str))
    with index_lock(out_dir):
        if not fresh:
            old_v, old_t = read_table(videos_csv, VIDEO_COLUMNS), read_table(tubes_csv, TUBE_COLUMNS)
            if len(old_v):
                old_v = old_v[~old_v["video"].astype(str).isin(done)]
                new_v = pd.concat([old_v.reindex(columns=VIDEO_COLUMNS), new_v], ignore_index=True)
            if len(old_t):
                gone = old_t["video"].astype(str).isin(done) | old_t["tube_path"].astype(str).isin(added)
                new_t = pd.concat([old_t[~gone].reindex(columns=TUBE_COLUMNS), new_t], ignore_index=True)
        # Tubes first: a video's row is never in the index before its tubes' rows.
        write_table(tubes_csv, new_t.to_dict("records"), TUBE_COLUMNS)
        if len(videos) or fresh:  # (tubes alone leave the videos' table as it is)
            write_table(videos_csv, new_v.to_dict("records"), VIDEO_COLUMNS)


class IndexWriteError(UserError):
    """The index tables could not be written at the end of a run (disk full, read-only folder)."""


class IndexWriter:
    """Brings ``out_dir``'s index up to date as a run's videos finish, so that the finished videos
    of a killed run are in the index without a rerun.

    Each :meth:`add` merges the run's rows into the tables (:func:`write_index`, atomic) unless
    the last merge was less than ``every`` seconds ago (longer for big tables: at most a tenth of
    the time goes to merging; 0: at every video); then a timer thread merges them when that time
    is up. :meth:`close` merges what is left and raises what a timed merge could not write."""

    def __init__(self, out_dir: Path, fresh: bool = False, every: Optional[float] = None,
                 shard: Optional[tuple[int, int]] = None):
        self.out_dir, self.fresh, self.shard = out_dir, fresh, shard
        self.every = INDEX_EVERY_S if every is None else float(every)
        self.rows: dict[int, tuple[VideoRecord, list[TubeRecord]]] = {}
        self.lock = threading.Lock()
        self.timer: Optional[threading.Timer] = None
        self.dirty = False
        self.last = 0.0  # when the last merge ended
        self.cost = 0.0  # how long it took
        self.error: Optional[OSError] = None

    def add(self, key: int, video: VideoRecord, tubes: list[TubeRecord]) -> None:
        with self.lock:
            self.rows[key] = (video, tubes)
            self.dirty = True
            wait = self.last + max(self.every, 10 * self.cost) - time.time() if self.every > 0 else 0.0
            if wait <= 0:
                try:
                    self._merge()
                except OSError as exc:  # a full or read-only disk: the batch goes on, close() retries
                    self._failed(exc)
            elif self.timer is None:
                self.timer = threading.Timer(wait, self._timed)
                self.timer.daemon = True
                self.timer.start()

    def _timed(self) -> None:
        with self.lock:
            self.timer = None
            if self.dirty:
                try:
                    self._merge()
                except OSError as exc:
                    self._failed(exc)

    def _merge(self) -> None:
        t0 = time.time()
        done = [self.rows[k] for k in sorted(self.rows)]
        write_index(self.out_dir, [v for v, _ in done], [t for _, ts in done for t in ts], fresh=self.fresh,
                    shard=self.shard)
        self.dirty = False
        self.last = time.time()
        self.cost = self.last - t0

    def _failed(self, exc: OSError) -> None:
        """Remember a failed merge (close() tries again); say it once, in one line."""
        first = self.error is None
        self.error = exc
        self.last = time.time()  # not again at once: at the next timed merge, or at close()
        if first:
            from dfdc_cli.ui import warn

            warn(f"{self._what(exc)}; the run goes on and tries again at its end")

    def _what(self, exc: OSError) -> str:
        return (f"the tube index {table_paths(self.out_dir, self.shard)[0]} could not be written "
                f"({exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''})")

    def close(self) -> None:
        """Merge what is left; :class:`IndexWriteError` (one line) when the tables cannot be written."""
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.dirty or self.error is not None:
                try:
                    self._merge()
                except OSError as exc:
                    raise IndexWriteError(f"{self._what(exc)}; the videos done are kept in the tube store "
                                          f"(run the same command again to index them)") from None
                self.error = None


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
    p = Path(path) if path is not None else default_tubes_dir()
    if p.is_file() and p.name in (VIDEOS_CSV, TUBES_CSV):
        p = p.parent
    return p
