"""Training data: the tube table, the train/validation split, the class-balanced sampler and the
clip datasets that `deepfake train` reads.

* :func:`load_tubes` reads ``tubes.csv`` of a tube index (:mod:`dfdc_cli.faces.index`) and adds ``y``
  (1 = FAKE), ``group`` (the real video a tube belongs to: its own name for a real, the
  ``original`` for a fake) and ``part_num`` (the DFDC part number, when the part names one).
* :func:`split_tubes` splits by DFDC part (``--val-parts 45-49``) or by group; either way a fake and
  its original (and that original's other fakes) never sit on both sides.
* :class:`~dfdc_cli.train.sampling.BalancedSampler` (:mod:`dfdc_cli.train.sampling`) yields, per epoch, every real tube once plus as many fakes, drawn across
  all fakes (a stream of permutations, so successive epochs walk through every fake before one
  repeats). It is a pure function of (seed, epoch): it resumes exactly, and under
  DistributedDataParallel each rank takes a disjoint stride of the same epoch list.
* :class:`ClipDataset` decodes a clip from a tube MP4 (only the frames it needs), optionally turns
  a real clip into a self-blended fake, and augments it with one parameter set per clip.

A sampler item is ``(row, self_blend, sample_seed)``: the per-sample seed drives everything random
about the sample (window start, augmentation, self-blend), so the data do not depend on the number
of DataLoader workers or on which worker loads what.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import FRAMES_2D, Track, has_index, read_tubes, resolve_index
from dfdc_cli.faces.tubes import track_2d_geometry, track_tube_geometry
from dfdc_cli.lifecycle import watch_parent
from dfdc_cli.train import augment
from dfdc_cli.train.selfblend import SelfBlendParams, blend_clip

FAKE, REAL = "FAKE", "REAL"
PAD_MODES = ("loop", "reflect", "repeat")

# ----------------------------------------------------------------------------------------------
# The tube table


def part_number(part: str) -> Optional[int]:
    """DFDC part number from a part/folder name: ``dfdc_train_part_45`` -> 45; None if none."""
    m = re.search(r"(\d+)\D*$", str(part or ""))
    return int(m.group(1)) if m else None


def parse_parts(spec: str) -> set[int]:
    """``"45-49"``, ``"45,47"``, ``"0-3,45-49"`` -> a set of part numbers."""
    out: set[int] = set()
    for chunk in str(spec).replace(" ", "").split(","):
        if not chunk:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", chunk)
        if not m:
            raise UserError(f"--val-parts: cannot read {chunk!r} (use e.g. 45-49 or 45,46,47)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a:
            raise UserError(f"--val-parts: empty range {chunk!r}")
        out.update(range(a, b + 1))
    if not out:
        raise UserError("--val-parts: no part numbers given")
    return out


def prepare_tubes(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``y``, ``group`` and ``part_num`` to a tubes table (rows with an unknown label dropped)."""
    df = df.copy()
    for col in ("label", "original", "name", "part", "video"):
        if col not in df.columns:
            df[col] = ""
        df[col] = df[col].fillna("").astype(str).str.strip()
    df["label"] = df["label"].str.upper()
    df = df[df["label"].isin([FAKE, REAL])].reset_index(drop=True)
    df["y"] = (df["label"] == FAKE).astype(np.int64)
    names = df["name"].where(df["name"] != "", df["video"].map(lambda v: Path(v).name if v else ""))
    df["group"] = np.where((df["label"] == FAKE) & (df["original"] != ""), df["original"], names)
    df["part_num"] = df["part"].map(part_number)
    if "n_frames" not in df.columns:
        df["n_frames"] = 0
    return df


def load_tubes(index: Optional[str | Path]) -> pd.DataFrame:
    """Read the tube index (folder or tubes.csv) for training; raises UserError when unusable."""
    folder = resolve_index(index)
    if not has_index(folder):
        raise UserError(
            f"no tube index at {folder} (tubes.csv missing): run `deepfake extract` first or pass --index"
        )
    raw = read_tubes(folder)
    if raw.empty:
        raise UserError(f"{folder / 'tubes.csv'} lists no tubes")
    df = prepare_tubes(raw)
    if df.empty:
        raise UserError(f"{folder / 'tubes.csv'}: no tube has a FAKE/REAL label (training needs labels)")
    missing = [p for p in df["tube_path"] if not Path(p).exists()]
    if missing:
        raise UserError(f"{len(missing)} tube file(s) listed in the index are missing, e.g. {missing[0]}")
    return df


def apply_groups(df: pd.DataFrame, csv_path: str | Path, column: str = "identity") -> pd.DataFrame:
    """Regroup tubes by a column of a CSV (e.g. a corpus manifest's ``identity``: split by person).

    The CSV has a ``file`` column (a video path; matched to the tubes' videos by file name) and
    ``column``; a tube's ``group`` becomes that value. Every tube's video must be listed: a person
    missing from the table could otherwise sit on both sides of the split unnoticed."""
    p = Path(csv_path).expanduser()
    if not p.is_file():
        raise UserError(f"data.groups_csv: {p} not found")
    try:
        table = pd.read_csv(p, dtype=str).fillna("")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"data.groups_csv: {p} is not a readable CSV ({exc})") from None
    for col in ("file", column):
        if col not in table.columns:
            raise UserError(f"data.groups_csv: {p} has no {col!r} column (columns: {', '.join(table.columns)})")
    by_name = {Path(f).name: g for f, g in zip(table["file"], table[column]) if f and g}
    names = df["video"].map(lambda v: Path(v).name) if "video" in df.columns else df["name"]
    names = names.where(names != "", df["name"])
    missing = sorted({n for n in names if n not in by_name})
    if missing:
        raise UserError(f"data.groups_csv: {len(missing)} video(s) of the index are not in {p} "
                        f"(column {column!r}), e.g. {missing[0]}")
    out = df.copy()
    out["group"] = names.map(by_name).to_numpy()
    return out


# ----------------------------------------------------------------------------------------------
# Split


@dataclass
class Split:
    train: pd.DataFrame
    val: pd.DataFrame
    how: str  # "parts 45-49" | "groups 10%"
    moved_groups: int = 0  # groups moved to the validation side to avoid leakage (parts split)

    def sizes(self) -> dict[str, dict[str, int]]:
        out = {}
        for side, d in (("train", self.train), ("val", self.val)):
            real, fake = d[d["y"] == 0], d[d["y"] == 1]
            out[side] = {
                "real_tubes": int(len(real)),
                "fake_tubes": int(len(fake)),
                "real_videos": int(real["name"].nunique()),
                "fake_videos": int(fake["name"].nunique()),
                "groups": int(d["group"].nunique()),
            }
        return out

    def summary(self) -> str:
        s = self.sizes()
        lines = [f"split by {self.how}" + (f" ({self.moved_groups} group(s) moved to val to avoid leakage)"
                                           if self.moved_groups else "")]
        for side in ("train", "val"):
            v = s[side]
            lines.append(
                f"  {side:5s}: {v['real_tubes']} real / {v['fake_tubes']} fake tubes, "
                f"{v['real_videos']} real / {v['fake_videos']} fake videos, {v['groups']} groups"
            )
        return "\n".join(lines)


def split_tubes(
    df: pd.DataFrame, val_parts: Optional[str] = None, val_fraction: float = 0.1, seed: int = 0,
    val_groups: Sequence[str] = (),
) -> Split:
    """Train/validation split without leakage between a fake and its original.

    ``val_parts``: tubes whose DFDC part number is listed go to validation; a group found on both
    sides (a fake whose original sits in another part) is moved wholly to validation. Otherwise:
    the groups named in ``val_groups`` go to validation, and of the others (one real video and all
    its fakes, or a person, see :func:`apply_groups`), shuffled with ``seed``, ``val_fraction``.
    """
    if val_parts:
        parts = parse_parts(val_parts)
        in_val = df["part_num"].isin(parts)
        if not in_val.any():
            known = sorted({int(p) for p in df["part_num"].dropna()})
            raise UserError(f"--val-parts {val_parts}: no tube is in those parts (parts in the index: {known})")
        val_groups = set(df.loc[in_val, "group"])
        straddle = val_groups & set(df.loc[~in_val, "group"])
        mask = df["group"].isin(val_groups)
        return Split(df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True),
                     f"parts {val_parts}", moved_groups=len(straddle))
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    forced = {str(g) for g in val_groups}
    groups = np.array(sorted(g for g in df["group"].unique() if g not in forced))
    rng = np.random.default_rng([int(seed), 0x5EED5])
    rng.shuffle(groups)
    n_val = int(round(val_fraction * len(groups)))
    if val_fraction > 0 and n_val == 0 and len(groups) >= 2:
        n_val = 1
    chosen = set(groups[:n_val]) | forced
    mask = df["group"].isin(chosen)
    how = f"groups ({val_fraction:.0%} of {len(groups)} groups, seed {seed})"
    if forced:
        how = f"groups ({len(forced)} named + {val_fraction:.0%} of the other {len(groups)}, seed {seed})"
    return Split(df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True), how)


# ----------------------------------------------------------------------------------------------
# Datasets


def pad_indices(n: int, t: int, mode: str = "loop") -> np.ndarray:
    """Frame indices that stretch n decoded frames to t: loop 0..n-1,0..; reflect 0..n-1,n-2..1,0..;
    repeat: the last frame repeated."""
    if n >= t:
        return np.arange(t)
    if mode == "loop":
        return np.arange(t) % n
    if mode == "reflect":
        if n == 1:
            return np.zeros(t, np.int64)
        cycle = np.r_[np.arange(n), np.arange(n - 2, 0, -1)]
        return cycle[np.arange(t) % len(cycle)]
    if mode == "repeat":
        return np.minimum(np.arange(t), n - 1)
    raise UserError(f"data.pad must be one of {', '.join(PAD_MODES)}, got {mode!r}")


def worker_init(_worker_id: int) -> None:
    """DataLoader workers: one torch thread each (the workers are the parallelism), and they end
    when the training process dies, however it dies (:func:`dfdc_cli.lifecycle.watch_parent`;
    torch's own check notices only a fork-context parent, and only between batches).

    (OpenCV's thread count is left alone: calling ``cv2.setNumThreads`` in a forked worker hangs
    when the parent process had already used OpenCV's thread pool.)
    """
    watch_parent()
    torch.set_num_threads(1)


def parse_item(item) -> tuple[int, bool, np.random.Generator]:
    """A sampler item ``(row, self_blend, sample_seed)`` (or a plain row: no self-blend, seed = row)
    -> (row, self_blend, the sample's random generator)."""
    if isinstance(item, (tuple, list)):
        row, sbi, seed = int(item[0]), bool(item[1]), int(item[2])
    else:
        row, sbi, seed = int(item), False, int(item)
    return row, sbi, np.random.default_rng(seed)


class ClipDataset(Dataset):
    """Clips (3D members) or frames (2D member) from tube MP4s.

    Item in: ``(row, self_blend, sample_seed)`` (or a plain row index: no self-blend, seed = row).
    Item out: ``(x, y)`` with ``x`` (3, T, res, res) for 3D, and for 2D (3, res, res) in
    training or (3, frames_2d, res, res) in validation; ``y`` float (1.0 = FAKE). ``x`` is uint8,
    except a validation clip resized to ``res`` (a 112 member's centre crop): float32 0..255, not
    re-quantised, as scan gives it to the member.

    Training: a random contiguous window of T frames (only frames up to start + T are decoded), or
    for 2D one random frame; random augmentation. Validation: the first T (2D: ``frames_2d``)
    frames, centre crop; the 2D stack is scored as scan scores it (see
    :meth:`dfdc_models.registry.MemberModel.p_fake_2d`). Tubes shorter than that are padded with
    ``pad`` ("loop" by default: frames 0..n-1, 0..).
    """

    def __init__(
        self,
        tubes: pd.DataFrame,
        *,
        clip_frames: int,
        res: int,
        train: bool,
        kind: str = "3d",
        aug: Optional[Mapping[str, Any]] = None,
        pad: str = "loop",
        selfblend: Optional[Mapping[str, Any]] = None,
        frames_2d: int = FRAMES_2D,
        interpolation: str = "bilinear",
    ):
        self.interpolation = interpolation  # the resize to res (the architecture record's, as at scan)
        self.paths = tubes["tube_path"].astype(str).tolist()
        self.paths_2d = (
            tubes["tube2d_path"].fillna("").astype(str).tolist() if "tube2d_path" in tubes.columns else [""] * len(tubes)
        )
        self.tracks = (
            tubes["track_path"].fillna("").astype(str).tolist() if "track_path" in tubes.columns else [""] * len(tubes)
        )
        self.n_frames = [int(n) if str(n) not in ("", "nan") else 0 for n in tubes["n_frames"].tolist()]
        self.labels = tubes["y"].astype(np.float32).tolist()
        self.T = int(clip_frames)
        self.res = int(res)
        self.train = bool(train)
        self.kind = kind
        self.aug = augment.clip_config(aug)
        self.pad = pad
        pad_indices(1, 2, pad)  # validate early
        self.selfblend = dict(selfblend or {})
        self._sb_params = None
        self.frames_2d = int(frames_2d)

    def __len__(self) -> int:
        return len(self.paths)

    # -- decoding --------------------------------------------------------------------------
    def _window(self, row: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Decoded frames (T, H, W, 3) and their tube frame indices (T,)."""
        from dfdc_cli.faces.video import read_video

        n = self.n_frames[row]
        start = int(rng.integers(0, n - self.T + 1)) if (self.train and n > self.T) else 0
        count = self.T if n <= 0 else max(1, min(self.T, n - start))
        frames = read_video(self.paths[row], start, count)
        idx = pad_indices(len(frames), self.T, self.pad)
        return frames[idx], start + idx

    def _frames_2d(self, row: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
        """The 2D member's frames: (frames (K, H, W, 3), their frame indices (K,), read from 2D crops?).

        Training: one random frame (K = 1). Validation: the first ``frames_2d`` frames (K =
        ``frames_2d``, short tubes padded with ``pad``): the frames scan scores, so that the validation
        loss that picks the best checkpoint measures the member as scan will use it."""
        from dfdc_cli.faces.video import read_video

        p2 = self.paths_2d[row]
        from_2d = bool(p2) and Path(p2).exists()
        path = p2 if from_2d else self.paths[row]
        if not self.train:
            frames = read_video(path, 0, self.frames_2d)
            idx = pad_indices(len(frames), self.frames_2d, self.pad)
            return frames[idx], idx, from_2d
        n = self.n_frames[row] or self.frames_2d
        n = min(n, self.frames_2d) if from_2d else n
        i = int(rng.integers(0, max(n, 1)))
        frames = read_video(path, 0, i + 1)
        return frames[-1:], np.array([i], np.int64), from_2d

    def _self_blend(self, row: int, frames: np.ndarray, tube_idx: np.ndarray, rng: np.random.Generator,
                    from_2d: bool = False) -> np.ndarray:
        """A self-blended fake of a real clip; the blend mask follows the tube's track.

        ``from_2d``: the frames are the 2D pathway's crops, whose geometry differs from the tube's
        (per-frame square boxes), so the track is mapped into those crops instead."""
        if not self.tracks[row] or not Path(self.tracks[row]).exists():
            raise UserError(f"self-blending needs the tube's track file (track_path) for {self.paths[row]}")
        if self._sb_params is None:
            self._sb_params = SelfBlendParams.from_dict(self.selfblend)
        track = Track.load(self.tracks[row])
        lm, bx = track_2d_geometry(track, n=self.frames_2d) if from_2d else track_tube_geometry(track)
        h, w = frames.shape[1:3]
        sx, sy = w / float(track.size), h / float(track.size)
        ti = np.clip(tube_idx, 0, len(bx) - 1)
        lm = lm[ti] * np.array([sx, sy], np.float32)
        bx = bx[ti] * np.array([sx, sy, sx, sy], np.float32)
        fake, _mask = blend_clip(frames, lm, bx, self._sb_params, rng)
        return fake

    # -- items -----------------------------------------------------------------------------
    def __getitem__(self, item):
        row, sbi, rng = parse_item(item)
        from_2d = False
        if self.kind == "2d":
            frames, tube_idx, from_2d = self._frames_2d(row, rng)
        else:
            frames, tube_idx = self._window(row, rng)
        y = self.labels[row]
        quality = augment.sample_jpeg_quality(rng, self.aug) if self.train else 0
        if sbi:
            frames = self._self_blend(row, frames, tube_idx, rng, from_2d)
            y = 1.0
        if quality:
            frames = augment.jpeg_roundtrip(frames, quality)
        h, w = frames.shape[1:3]
        params = augment.sample_clip_params(rng, h, w, self.aug) if self.train else augment.val_clip_params(h, w, self.aug)
        # Validation clips are not re-quantised after the resize: scan hands them to the member so.
        x = augment.apply_clip_params(frames, params, self.res, quantise=self.train, mode=self.interpolation)
        if self.kind == "2d" and self.train:
            x = x[:, 0]
        return x, torch.tensor(y, dtype=torch.float32)


class FrameBank(Dataset):
    """The 2D member's training frames held in memory: for a frame model, decoding a tube MP4 per
    sample would cost more than the network's step on a few CPU cores.

    At construction, every ``every``-th frame of each tube's 2D crops (``tube2d_path``; the tube
    itself where there are none) is decoded once, resized to ``store_res`` and kept with its face
    landmarks and box in those pixels (from the track). Items are the trainer's ``(row, self_blend,
    sample_seed)``: one random kept frame of the tube, self-blended when asked (a one-frame clip of
    :func:`dfdc_cli.train.selfblend.blend_clip`), augmented and resized to ``res``: uint8 (3, res, res).
    Memory: about ``frames x store_res^2 x 3`` bytes, shared copy-on-write with forked workers.
    """

    def __init__(
        self,
        tubes: pd.DataFrame,
        *,
        res: int,
        every: int = 1,
        store_res: int = 0,
        aug: Optional[Mapping[str, Any]] = None,
        selfblend: Optional[Mapping[str, Any]] = None,
        progress=None,
        interpolation: str = "bilinear",
    ):
        self.interpolation = interpolation
        from dfdc_cli.faces.video import read_video

        self.res = int(res)
        self.aug = augment.clip_config(aug)
        self.params = SelfBlendParams.from_dict(dict(selfblend or {}))
        self.labels = tubes["y"].astype(np.float32).tolist()
        every = max(1, int(every))
        self.frames: list[np.ndarray] = []
        self.landmarks: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        paths_2d = tubes["tube2d_path"].fillna("").astype(str) if "tube2d_path" in tubes.columns else None
        tracks = tubes["track_path"].fillna("").astype(str) if "track_path" in tubes.columns else None
        for k, path in enumerate(tubes["tube_path"].astype(str)):
            p2 = paths_2d.iloc[k] if paths_2d is not None else ""
            from_2d = bool(p2) and Path(p2).exists()
            frames = read_video(p2 if from_2d else path)
            keep = np.arange(0, len(frames), every)
            h = frames.shape[1]
            side = int(store_res) or h
            tp = tracks.iloc[k] if tracks is not None else ""
            if tp and Path(tp).exists():
                track = Track.load(tp)
                lm, bx = track_2d_geometry(track, n=len(frames), size=h) if from_2d else track_tube_geometry(track)
                keep = keep[keep < len(bx)]
                f = side / float(h if from_2d else track.size)
                lm, bx = lm[keep] * f, bx[keep] * f
            else:  # no track: the frame can be a real sample but not self-blended
                lm = np.full((len(keep), 5, 2), np.nan, np.float32)
                bx = np.full((len(keep), 4), np.nan, np.float32)
            frames = frames[keep]
            if side != h:
                import cv2

                frames = np.stack([cv2.resize(fr, (side, side), interpolation=cv2.INTER_AREA) for fr in frames])
            self.frames.append(np.ascontiguousarray(frames))
            self.landmarks.append(lm.astype(np.float32))
            self.boxes.append(bx.astype(np.float32))
            if progress is not None:
                progress(k + 1, len(tubes))

    @property
    def n_frames(self) -> int:
        return int(sum(len(f) for f in self.frames))

    @property
    def nbytes(self) -> int:
        return int(sum(f.nbytes for f in self.frames))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, item):
        row, sbi, rng = parse_item(item)
        i = int(rng.integers(0, len(self.frames[row])))
        frame = self.frames[row][i : i + 1]
        y = self.labels[row]
        quality = augment.sample_jpeg_quality(rng, self.aug)
        if sbi:
            if not np.isfinite(self.boxes[row][i]).all():
                raise UserError(f"self-blending needs the tube's track file (track_path) for tube row {row}")
            frame, _mask = blend_clip(frame, self.landmarks[row][i : i + 1], self.boxes[row][i : i + 1],
                                      self.params, rng)
            y = 1.0
        if quality:
            frame = augment.jpeg_roundtrip(frame, quality)
        h, w = frame.shape[1:3]
        params = augment.sample_clip_params(rng, h, w, self.aug)
        x = augment.apply_clip_params(frame, params, self.res, mode=self.interpolation)
        return x[:, 0], torch.tensor(y, dtype=torch.float32)
