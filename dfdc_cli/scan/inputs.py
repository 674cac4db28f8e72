"""What `deepfake scan` scores: face tubes extracted in memory with the scan preset, or the tubes
of an existing `deepfake extract` index (``--index``), handed to the scanner one video at a time
as :class:`Extracted` records, and read into :class:`LoadedTube` pixels.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import numpy as np

from dfdc_cli.errors import UserError, VideoError
from dfdc_cli.faces.extract.job import NOT_CACHED, REBUILT
from dfdc_cli.faces.extract.params import LOW_THRESHOLDS, fallback_stage
from dfdc_cli.faces.index import (
    STATUS_ERROR, STATUS_NO_FACE, STATUS_OK, IndexWriteError, has_index, read_tubes, read_videos,
    resolve_index,
)
from dfdc_cli.faces.inputs import walk
from dfdc_cli.faces.video import frame_count
from dfdc_cli.paths import scan_tubes_dir
from dfdc_cli.scale.shard import select
from dfdc_cli.scan.members import FRAMES_2D
from dfdc_cli.scan.span import TUBE_ID_STRIDE, Window, frames_read_text
from dfdc_cli.ui import warn

if TYPE_CHECKING:
    from dfdc_cli.scale.shard import Shard


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The inputs of ``paths`` (:func:`dfdc_cli.faces.inputs.walk`, extract's walker): files as given,
    folders searched recursively for video files (sorted). Missing paths and unreadable folders
    are kept (they become per-video errors: the extractor, given them again, says why)."""
    return [f.path for f in walk(paths)]


@dataclass
class Extracted:
    """What the extraction stage gives the scorer for one video: its record and tube rows."""

    video: str
    name: str
    status: str
    reason: str
    seconds: float
    tubes: list[dict]
    label: str = ""  # FAKE | REAL when the index knows it
    pixels: Optional[dict] = None  # tube id -> (3D frames, 2D crops or None), when extracted in memory
    key: str = ""  # score-cache key (video content + scan settings); "" -> keyed by the tube files
    fallback: str = ""  # the extraction fallback that found the faces ("" none, "2x", "low_thresholds")
    entry: str = ""  # the store entry's name (scanned in memory)
    n_frames: int = 0  # frames read
    fps: float = 0.0
    windows: list = field(default_factory=list)  # dfdc_cli.scan.span.Window per window read (scanned in memory)
    n_total: int = 0  # the video's frames, when known

    @property
    def weak(self) -> bool:
        """Faces found only by the low-threshold fallback: they may be none (noise, cartoons)."""
        return self.fallback == LOW_THRESHOLDS


def _extracted(vrec, trecs) -> Extracted:
    """An extraction record (dataclass or dict) and its tube rows -> :class:`Extracted`."""
    v = asdict(vrec) if hasattr(vrec, "__dataclass_fields__") else dict(vrec)
    ts = [asdict(t) if hasattr(t, "__dataclass_fields__") else dict(t) for t in trecs]
    ts.sort(key=lambda r: int(r["tube_id"]))
    status = str(v.get("status") or STATUS_ERROR)
    if status == STATUS_OK and not ts:
        status = STATUS_NO_FACE
    reason = str(v.get("reason") or "")
    if status == STATUS_NO_FACE and not reason:
        reason = "no face found"
    name = str(v.get("name") or Path(str(v.get("video", ""))).name)

    return Extracted(str(v.get("video", "")), name, status, reason, float(v.get("seconds") or 0.0), ts,
                     str(v.get("label") or "").upper(), fallback=fallback_stage(reason) if ts else "",
                     n_frames=int(v.get("n_frames") or 0), fps=float(v.get("fps") or 0.0))


def index_items(index_dir: str | Path) -> list[Extracted]:
    """The scorable units of a `deepfake extract` index, without extracting anything: one per
    source video (with its status, tubes and label), then one per self-blended copy (tubes named
    ``<stem>_sbi<seed>.mp4``: they share the real video's path but are FAKE items of their own)."""
    root = resolve_index(index_dir)
    if not has_index(root):
        raise UserError(f"--index {root}: no tube index there (videos.csv / tubes.csv); run `deepfake extract` first")
    try:
        videos = read_videos(root).to_dict("records")
        tubes = read_tubes(root).to_dict("records")
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds on a damaged table
        raise UserError(f"--index {root}: the index tables cannot be read ({exc})") from None
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in tubes:
        groups.setdefault((str(t["video"]), str(t["name"])), []).append(t)
    out = []
    for v in videos:
        out.append(_extracted(v, groups.pop((str(v["video"]), str(v["name"])), [])))
    for (video, name), ts in groups.items():
        out.append(_extracted({"video": video, "name": name, "status": STATUS_OK, "label": ts[0].get("label", "")}, ts))
    return out


def select_items(items: Sequence[Extracted], paths: Sequence[Path], index_dir: str | Path) -> list[Extracted]:
    """The index items of the given video files (the real video's own item, not its self-blends);
    a file the index does not hold becomes an error item that says so."""
    by_key = {(e.video, e.name): e for e in items}
    out = []
    for p in paths:
        e = by_key.get((str(p), p.name))
        out.append(e if e is not None else Extracted(str(p), p.name, STATUS_ERROR, f"not in the index {index_dir}", 0.0, []))
    return out


def items_extractor(items: Sequence[Extracted]) -> Callable:
    """A :class:`Scanner` extractor handing over ready items (an index) in order."""

    def extractor(paths, device, workers, on_video) -> None:
        for i, e in enumerate(items):
            on_video(i, e)

    return extractor


def video_key(entry_name: str) -> str:
    """Score-cache key of a video scanned in memory: its store entry's name, i.e. its content's
    sha256 and the extraction settings' key (which include the extractor's version)."""
    return hashlib.sha256(f"video:{entry_name}".encode()).hexdigest()[:32]


def stream_extract(paths: Sequence[Path], device: str, workers: Optional[int],
                   on_video: Callable[[int, Extracted], None], keep_tubes: bool = False,
                   need_pixels: Optional[Callable[[str, Sequence[int]], bool]] = None,
                   span: str = "first", windows: int = 8, group: int = 8) -> None:
    """Face tubes of ``paths``, extracted with the scan preset, handed over in memory; calls
    ``on_video(i, extracted)`` as each video is done (from this thread), so the models start on
    the first videos while the others are extracted.

    The tubes' pixels go straight to the members (:attr:`Extracted.pixels`): no H.264 round trip.
    What is kept in the scan cache (``paths.scan_tubes_dir()``) is each window's tube geometry and
    tracks, so a video seen before is only decoded and cropped again, not detected, and not even
    decoded when ``need_pixels(key, tube_ids)`` says every member's scores of it are cached.
    ``keep_tubes`` also writes the tube MP4s there (to look at them). The cache's index tables
    are kept up to date as the videos are done (:func:`dfdc_cli.faces.extract.iter_extract`).

    ``span`` (:mod:`dfdc_cli.scan.span`): ``first`` reads each video's first 100 frames; ``whole`` up to
    ``windows`` windows spread over it (videos taken ``group`` at a time, so that results keep
    coming); ``auto`` reads the windows of the videos with no face in their first frames only,
    after the others were handed over. Each handed-over record is one video, its windows merged
    (:func:`dfdc_cli.scan.inputs.merge_windows`).

    ``paths`` are files (:func:`expand_paths`): the extractor's inputs are the same, one to one, so
    its input index is the position in ``paths``.
    """
    from dfdc_cli.faces import extract as X

    base = X.PRESETS["scan"]
    totals: dict[int, int] = {}

    def total(i: int) -> int:
        if i not in totals:
            try:
                totals[i] = frame_count(paths[i])
            except VideoError:
                totals[i] = 0
        return totals[i]

    def starts(i: int) -> list[int]:
        return X.window_starts(total(i), int(base.first_frames or 0), windows)

    def params_k(k: int):
        return base if k == 0 else base.replace(span_window=(k, windows))

    def ks_of(i: int) -> list[int]:
        return [0] if span == "first" or (span == "auto" and i not in later) else list(range(len(starts(i))))

    later: set[int] = set()  # auto: the videos read further

    def run_pass(idx: list[int], k: int):
        """(i, Extracted) of window ``k`` of the videos ``idx``, as they are done."""

        def wants(j: int, res: dict) -> bool:
            if need_pixels is None:
                return True
            i = idx[j]
            sha = Path(res["entry"]).name.rsplit("-", 1)[0]
            names = [f"{sha}-{params_k(w).key()}" for w in ks_of(i)]
            key = video_key(names[0]) if len(names) == 1 else video_key("+".join(names))
            return need_pixels(key, [k * TUBE_ID_STRIDE + int(t["tube_id"]) for t in res["tubes"]])

        run = X.iter_extract([str(paths[i]) for i in idx], scan_tubes_dir(), params_k(k), device=device,
                             workers=workers, progress=False, quiet=True,
                             mode=X.MEMORY_AND_FILES if keep_tubes else X.MEMORY, need_pixels=wants)
        handed = 0
        try:
            with contextlib.closing(run):
                for done in run:
                    handed += 1
                    e = _extracted(done.video, done.tubes)
                    for note in e.reason.split("; "):
                        if note.startswith((REBUILT, NOT_CACHED)):
                            warn(f"{e.video}: {note}")
                    e.pixels = done.pixels
                    e.entry = done.video.key or ""
                    yield idx[done.index], e
        except (OSError, IndexWriteError) as exc:
            # Past the last video only the index merge is left; scan never reads that index (the
            # store entries are the cache), so a failure to write it costs no verdict.
            if handed < len(idx):
                raise
            warn(f"the scan cache's index was not updated: {exc}")

    def hand_over(i: int, parts: list) -> None:
        no_face = parts[0][2].status == STATUS_NO_FACE
        on_video(i, merge_windows(parts, total(i) if (no_face or len(parts) > 1 or span != "first") else 0,
                                  span))

    def further(idx: list[int], first: dict) -> None:
        """The other windows of the videos ``idx`` (their window 0 in ``first``), then hand them over."""
        parts = {i: [(0, 0, first[i])] for i in idx}
        todo = [i for i in idx if first[i].status in (STATUS_OK, STATUS_NO_FACE)]
        most = max((len(starts(i)) for i in todo), default=1)
        for k in range(1, most):
            for i, e in run_pass([i for i in todo if len(starts(i)) > k], k):
                parts[i].append((k, starts(i)[k], e))
        for i in idx:
            hand_over(i, parts[i])

    everyone = list(range(len(paths)))
    if span == "whole":
        for g in range(0, len(everyone), max(1, group)):
            idx = everyone[g:g + group]
            further(idx, dict(run_pass(idx, 0)))
        return
    pending: dict[int, Extracted] = {}
    for i, e in run_pass(everyone, 0):
        if span == "auto" and e.status == STATUS_NO_FACE:
            later.add(i)
            pending[i] = e
        else:
            hand_over(i, [(0, 0, e)])
    pending_idx = sorted(pending)
    for g in range(0, len(pending_idx), max(1, group)):
        idx = pending_idx[g:g + group]
        further(idx, {i: pending[i] for i in idx})


@dataclass
class LoadedTube:
    """One face tube's pixels, ready for the members."""

    video_idx: int  # index into the chunk's video list
    tube_id: int
    frames: Optional[np.ndarray]  # uint8 (T, 256, 256, 3): the 3D input
    frames2d: Optional[np.ndarray]  # uint8 (N<=32, 256, 256, 3): the 2D input, or None


def read_tube(row: Mapping, need_3d: bool = True, need_2d: bool = False) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Decode a tube MP4 (and its 2D crops when asked and present)."""
    from dfdc_cli.faces.video import read_video

    f3 = read_video(row["tube_path"]) if need_3d else None
    f2 = None
    p2 = str(row.get("tube2d_path", "") or "")
    if need_2d and p2 and Path(p2).exists():
        f2 = read_video(p2, count=FRAMES_2D)
    return f3, f2


def index_source(index: Path, paths) -> list[Extracted]:
    """The items of an extract index to score: every item, or those of ``paths`` (files or
    folders)."""
    items = index_items(index)
    if paths:
        items = select_items(items, expand_paths(paths), index)
    return items


def missing_2d_note(members: Sequence, items: Sequence[Extracted]) -> Optional[str]:
    """An index extracted without --with-2d has no crops for the 2D member, which then scores
    nothing there: the warning that says so (None when nothing is missing)."""
    lacking = sum(1 for e in items for r in e.tubes if not str(r.get("tube2d_path") or ""))
    two_d = [m.name for m in members if m.kind == "2d"]
    if lacking and two_d:
        return (f"{lacking} tubes of the index have no 2D crops (extract --with-2d makes them); "
                f"{', '.join(two_d)} does not score those")
    return None


def scan_inputs(paths: Optional[Sequence[Path]], index: Optional[Path],
                part: Optional["Shard"] = None) -> tuple[list[Path], Optional[list[Extracted]]]:
    """The videos a scan scores (this shard's ``part`` of them) and, with an ``index``, the index
    items they are (None otherwise: they are extracted)."""
    if index is not None:
        items = select(index_source(index, paths), part, lambda e: e.name)
        videos = [Path(e.video) for e in items]
        if not videos and part is None:
            raise UserError(f"--index {index}: the index holds no videos")
        return videos, items
    if not paths:
        raise UserError("give video files or folders to scan (or --index DIR)")
    videos = expand_paths(paths)
    if not videos:
        raise UserError("no video files found in the given paths")
    return select(videos, part, lambda p: p.name), None


def merge_windows(parts: Sequence[tuple[int, int, object]], total: int, span: str):
    """One :class:`~dfdc_cli.scan.inputs.Extracted` of a video from its windows' extractions
    ``(k, start frame, Extracted)`` (window order): tube ids offset by window, frame numbers made
    absolute, pixels re-keyed, the windows recorded, and the note saying which frames were read."""
    parts = sorted(parts, key=lambda p: p[0])
    first = parts[0][2]
    # Faces found only by the low-threshold fallback may be none (noise, cartoons): when another
    # window has faces found at the seed's thresholds, those windows' "faces" are left out, lest
    # the highest window be a patch of texture.
    solid = any(e.tubes and e.fallback != LOW_THRESHOLDS for _, _, e in parts)
    dropped = [k for k, _, e in parts if solid and e.tubes and e.fallback == LOW_THRESHOLDS]
    tubes: list[dict] = []
    pixels: Optional[dict] = {} if any(e.pixels is not None for _, _, e in parts) else None
    windows: list[Window] = []
    keys = []
    notes = []
    for k, start, e in parts:
        ids = []
        for row in ([] if k in dropped else e.tubes):
            tid = k * TUBE_ID_STRIDE + int(row["tube_id"])
            r = dict(row)
            r.update(tube_id=tid, window=k, first_frame=int(row["first_frame"]) + start,
                     last_frame=int(row["last_frame"]) + start, start_frame=start)
            tubes.append(r)
            ids.append(tid)
            if pixels is not None and e.pixels is not None and int(row["tube_id"]) in e.pixels:
                pixels[tid] = e.pixels[int(row["tube_id"])]
        windows.append(Window(k, start, int(e.n_frames), e.status, e.reason, ids))
        keys.append(e.entry)
        if k in dropped:
            notes.append(f"window {k + 1}: left out, its face found only by the low-threshold fallback")
        elif len(parts) > 1 and e.reason and e.status != STATUS_NO_FACE:
            notes.append(f"window {k + 1}: {e.reason}")
    if first.status == STATUS_ERROR:
        status, reason = STATUS_ERROR, first.reason
    elif tubes:
        status, reason = STATUS_OK, (first.reason if len(parts) == 1 else "")
    elif any(w.status == STATUS_NO_FACE for w in windows):
        status, reason = STATUS_NO_FACE, "no face found"
    else:
        status, reason = STATUS_ERROR, "; ".join(w.reason for w in windows if w.reason)
    read = frames_read_text(windows, total)
    if status == STATUS_NO_FACE:
        if span == "first" and not (total and windows[0].n_frames >= total):
            reason = (f"no face in the first {windows[0].n_frames} frames (only those were read; "
                      f"--span whole reads the whole video): {read}")
        else:
            reason = f"no face in {read}"
    elif status == STATUS_OK and len(parts) > 1:
        notes.insert(0, f"read {read}")
    if status != STATUS_ERROR and notes:
        reason = "; ".join(([reason] if reason else []) + notes)
    key = ""
    if all(keys):
        key = video_key(keys[0]) if len(keys) == 1 else video_key("+".join(keys))
    out = Extracted(first.video, first.name, status, reason, sum(e.seconds for _, _, e in parts), tubes,
                    first.label, pixels if tubes else None, key)
    out.windows = windows
    out.n_total = int(total)
    # Weak (the faces may be none) when every window with faces found them only by the
    # low-threshold fallback; one window of faces found at the seed's thresholds is enough.
    found = [e.fallback for k, _, e in parts if e.tubes and k not in dropped]
    out.fallback = found[0] if len(set(found)) == 1 else ""
    out.fps = next((e.fps for _, _, e in parts if e.fps), 0.0)
    return out
