"""`deepfake scan`: the streaming scanner, verdicts on videos from the ensemble (docs/method.md §5).

Pipeline, per chunk of videos:

1. face tubes extracted with the scan preset (first 100 frames, long side 480, thresholds
   0.8/0.8/0.9, at most 5 faces, the seed's fallbacks) and handed over in memory (3D: every frame
   of the tube, 256x256; 2D: the first 32 crops), as the seed scored them: no H.264 round trip.
   The scan cache (``paths.scan_tubes_dir()``) keeps each video's tube geometry, so a video seen
   before is only decoded and cropped again (or, fully scored, not even decoded). With ``--index``
   the tubes are decoded from the index's MP4s instead (:mod:`dfdc_cli.scan.inputs`);
2. the tubes are grouped by length, so that tubes of several videos go through a member in one
   batch;
3. every member scores every tube: 3D members take the whole tube, centre-cropped to 224 (resized
   to 112 for the 112 members); the member's own ``predict`` applies its input scaling and the
   horizontal-flip TTA (3D) or the per-frame sigmoid median (2D) (:mod:`dfdc_cli.scan.members`);
4. per member: mean over the video's faces; video: weighted mean over members (equal weights by
   default), clipped to [0.001, 0.999] (:mod:`dfdc_cli.scan.ensemble`).

A video with no face gets the prior 0.5 with status ``no_face`` and no verdict; a video that cannot
be read gets 0.5 with status ``error`` and the reason. Extraction of the next chunk runs in a
producer thread while the models score the current one; a bounded queue holds it back when the
models are slower, so a large folder's crops are never all in memory. Member scores are kept in
the score cache (:class:`dfdc_cli.scan.cache.ScanScores`), so a scan resumes where it stopped.

The results are :class:`dfdc_cli.scan.results.VideoScan` records.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from dfdc_cli.faces.extract.params import LOW_THRESHOLDS, PRESETS, fallback_stage
from dfdc_cli.faces.index import STATUS_ERROR, STATUS_OK, Track
from dfdc_cli.runtime import autocast, autocast_dtype, effective_precision, resolve_device
from dfdc_cli.scan.cache import ScanScores, ScoreCache, numeric_mode
from dfdc_cli.scan.ensemble import CLIP_HI, CLIP_LO, PRIOR, aggregate_video, verdict_rule
from dfdc_cli.scan.inputs import Extracted, LoadedTube, read_tube, stream_extract
from dfdc_cli.scan.members import Member, is_builtin, load_members
from dfdc_cli.scan.results import FaceScore, VideoScan
from dfdc_models import builtin


def batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal length (whole tubes are never padded or cut), in batches of at
    most ``batch_size``, longest groups first."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    out = []
    for n in sorted(groups, reverse=True):
        idx = groups[n]
        out.extend(idx[k : k + batch_size] for k in range(0, len(idx), batch_size))
    return out


# ----------------------------------------------------------------------------------------------
# Reading a chunk's tubes


def _read_from_file(vi: int, row: Mapping, need_3d: bool, need_2d: bool) -> tuple[Optional[LoadedTube], str]:
    """A tube of an index: decoded from its MP4s (in a reader thread)."""
    try:
        f3, f2 = read_tube(row, need_3d, need_2d)
        return LoadedTube(vi, int(row["tube_id"]), f3, f2), ""
    except Exception as exc:  # noqa: BLE001 - recorded per video
        return None, f"tube {row.get('tube_id')}: {exc}"


def _handed_over(e: Extracted, vi: int, row: Mapping, need_3d: bool, need_2d: bool) -> Future:
    """A tube extracted in memory: its pixels, as they are (a finished future, like a read's)."""
    f: Future = Future()
    tid = int(row["tube_id"])
    px = e.pixels.get(tid) if e.pixels is not None else None
    if px is None:
        f.set_result((None, f"tube {tid}: its pixels were not handed over"))
    else:
        f.set_result((LoadedTube(vi, tid, px[0] if need_3d else None, px[1] if need_2d else None), ""))
    return f


def _collect_tubes(extracted: Sequence[Extracted], futures: list) -> tuple[list[LoadedTube], list[str]]:
    """The tubes read, and per video the first read error ('' when fine)."""
    errors = [""] * len(extracted)
    tubes: list[LoadedTube] = []
    for vi, fut in futures:
        tube, err = fut.result()
        if tube is not None:
            tubes.append(tube)
        elif not errors[vi]:
            errors[vi] = err
    return tubes, errors


def _by_video(n: int, tubes: Sequence[LoadedTube], scores: Sequence[Mapping[str, float]]) -> list[dict[int, dict[str, float]]]:
    """Per video: tube id -> {member: p} of the tubes scored in this run."""
    out: list[dict[int, dict[str, float]]] = [dict() for _ in range(n)]
    for t, s in zip(tubes, scores):
        out[t.video_idx][t.tube_id] = dict(s)
    return out


def _face(row: Mapping) -> FaceScore:
    return FaceScore(tube_id=int(row["tube_id"]), first_frame=int(row["first_frame"]),
                     last_frame=int(row["last_frame"]), n_frames=int(row["n_frames"]),
                     box=[int(row[k]) for k in ("x1", "y1", "x2", "y2")],
                     mean_prob=float(row.get("mean_prob", float("nan"))),
                     tube_path=str(row.get("tube_path", "")), window=int(row.get("window") or 0),
                     track_path=str(row.get("track_path") or ""),
                     boxes=sampled_boxes(str(row.get("track_path") or ""), int(row.get("start_frame") or 0)))


BOX_EVERY = 10  # the face boxes kept per tube in the results: every 10th frame (the detection frames)


def sampled_boxes(track_path: str, start: int = 0) -> list[list[int]]:
    """[frame, x1, y1, x2, y2, detected] every BOX_EVERY frames of a tube's track file (source
    frames, ``start`` added: a window's tracks count from its first frame); [] when unreadable."""
    if not track_path:
        return []
    try:
        t = Track.load(track_path)
    except (OSError, ValueError, KeyError, TypeError):
        return []
    out = []
    for j in range(0, len(t.frames), BOX_EVERY):
        x1, y1, x2, y2 = (int(round(float(v))) for v in t.boxes[j])
        out.append([int(t.frames[j]) + int(start), x1, y1, x2, y2, int(bool(t.detected[j]))])
    return out


# ----------------------------------------------------------------------------------------------
# The extraction thread


class _Stop(Exception):
    """Raised inside the extraction callback when the consumer has gone away."""


class _Feed:
    """The extractor running in a producer thread, its videos handed over through a bounded queue.

    Bounded: videos extracted in memory carry their tubes' pixels (up to ~100 MB each), so the
    extraction waits for the models rather than piling a large folder's crops up. An exception of
    the extractor is re-raised in the consumer (:meth:`take`).
    """

    _DONE = object()

    def __init__(self, extractor: Callable, paths: Sequence[Path], device: str, workers: Optional[int],
                 chunk_size: int):
        self.chunk_size = chunk_size
        self.q: queue.Queue = queue.Queue(maxsize=max(2, chunk_size))
        self.stop = threading.Event()
        self.finished = False
        self._thread = threading.Thread(target=self._produce, args=(extractor, paths, device, workers),
                                        name="scan-extract", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        """Put ``item``, waiting for room; False when the consumer has gone away."""
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _on_video(self, i: int, e: Extracted) -> None:
        if not self._put((i, e)):
            raise _Stop()

    def _produce(self, extractor, paths, device, workers) -> None:
        try:
            extractor(paths, device, workers, self._on_video)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._put(("error", exc))
        finally:
            self._put(self._DONE)

    def take(self, block: bool) -> list[tuple[int, Extracted]]:
        """Up to ``chunk_size`` extracted videos: those ready now, or (``block``) at least one
        unless the extraction is over."""
        items: list = []
        while len(items) < self.chunk_size and not self.finished:
            try:
                item = self.q.get(block=block and not items)
            except queue.Empty:
                break
            if item is self._DONE:
                self.finished = True
                break
            if item[0] == "error":
                raise item[1]
            items.append(item)
        return items

    def close(self) -> None:
        self.stop.set()


# ----------------------------------------------------------------------------------------------
# The scanner


def drop_non_finite(fresh: Sequence[dict[int, dict[str, float]]]) -> list[list[str]]:
    """A member that gave NaN or Inf for a tube has no score for that video at all (it is an error
    of that member on that video, not a number to average): its scores of the video are removed
    from ``fresh`` (per video: tube id -> {member: p}), and per video the reasons are returned."""
    notes: list[list[str]] = []
    for scores in fresh:
        bad: dict[str, tuple[int, float]] = {}
        for tid, per in sorted(scores.items()):
            for m, p in per.items():
                if not math.isfinite(p) and m not in bad:
                    bad[m] = (tid, p)
        for per in scores.values():
            for m in bad:
                per.pop(m, None)
        notes.append([f"{m} gave {p} for face {tid} (not a finite p(fake)): left out of this video"
                      for m, (tid, p) in bad.items()])
    return notes


class Scanner:
    """Loads the members once and scans videos in chunks, extraction overlapping the models.

    ``members`` may be names (loaded from the registry) or ready :class:`Member` objects (tests,
    benchmarks). ``extractor`` replaces :func:`~dfdc_cli.scan.inputs.stream_extract` (an existing
    index, tests): it is called as ``extractor(paths, device, workers, on_video)`` and calls
    ``on_video(i, Extracted)`` per video.

    ``keep_tubes``: the default extractor also writes the tube MP4s into the scan cache (the
    members score the pixels in memory either way).

    ``score_dir``: a :class:`~dfdc_cli.scan.cache.ScoreCache` root. Member scores found there are
    reused (unless ``reuse_scores`` is False) and new ones stored, so an interrupted scan resumes
    where it stopped and registering one more member costs only that member's work. Members
    without a model id (ready objects in tests) are never cached.
    """

    def __init__(
        self,
        members: Optional[Sequence] = None,
        weights: Optional[Mapping[str, float]] = None,
        threshold: Optional[float] = None,
        device: Optional[str] = None,
        workers: Optional[int] = None,
        batch_size: int = 8,
        chunk_size: Optional[int] = None,
        precision: str = "auto",
        extractor: Optional[Callable] = None,
        score_dir: Optional[str | Path] = None,
        reuse_scores: bool = True,
        keep_tubes: bool = False,
        span: str = "first",
        windows: int = 8,
    ):
        self.device = resolve_device(device)
        self.workers = workers
        self.batch_size = max(1, int(batch_size))
        on_gpu = self.device.startswith("cuda")
        self.chunk_size = chunk_size or (16 if on_gpu else 4)
        precision = effective_precision(self.device, precision)
        self.amp_dtype = autocast_dtype(self.device, precision)
        cache = ScoreCache(score_dir, numeric_mode(self.device, precision)) if score_dir is not None else None
        if on_gpu:
            torch.backends.cudnn.benchmark = True
        self.members: list[Member] = load_members(members, self.device)
        self.names = [m.name for m in self.members]
        self.weights = dict(weights) if weights else {m: 1.0 for m in self.names}
        # None: the band the models record with their calibration (or 0.5 without one)
        self.rule = verdict_rule({m.name: m.calibration for m in self.members}, self.weights, threshold)
        self.threshold = self.rule.hi
        self.scores = ScanScores(cache, self.members, reuse_scores)
        self.span, self.n_windows = span, int(windows)
        self.extractor = extractor or functools.partial(stream_extract, keep_tubes=keep_tubes,
                                                        need_pixels=self.scores.needs_pixels,
                                                        span=span, windows=self.n_windows)
        self._decode_pool: Optional[ThreadPoolExecutor] = None

    # -- scoring ------------------------------------------------------------------------------
    def score_tubes(self, tubes: Sequence[LoadedTube], on_device: Optional[dict] = None,
                    need: Optional[Sequence[set[str]]] = None,
                    frames_out: Optional[list[dict]] = None) -> list[dict[str, float]]:
        """p(fake) of every member for every tube: one dict per tube (member -> p).

        Tubes of equal length are batched together; each group's pixels go to the device once and
        serve every member that needs them. ``need`` (optional): per tube, the members to run
        (the others' scores came from the score cache). ``on_device`` (optional) caches the
        device tensors between calls (the benchmark's models-only ceiling). ``frames_out``
        (optional, one dict per tube) receives the frame models' per-frame p(fake) (member -> list).
        """
        out: list[dict[str, float]] = [dict() for _ in tubes]
        batches: dict[tuple, list[list[int]]] = {}  # members of a kind needing the same tubes share them
        resident = on_device if on_device is not None else {}
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            for m in self.members:
                for g in self._batches(m, tubes, need, batches):
                    self._score_batch(m, self._to_device(m, tubes, g, resident), g, out, frames_out)
        return out

    def _batches(self, m: Member, tubes: Sequence[LoadedTube], need, memo: dict) -> list[list[int]]:
        """The batches (tube indices) member ``m`` scores: the tubes with its kind of pixels that
        it still has to score, grouped by length."""
        idx = tuple(i for i, t in enumerate(tubes)
                    if m.pixels(t) is not None and (need is None or m.name in need[i]))
        key = (m.kind, idx)
        if key not in memo:
            lengths = [m.pixels(tubes[i]).shape[0] for i in idx]
            memo[key] = [[idx[j] for j in g] for g in batches_by_length(lengths, self.batch_size)]
        return memo[key]

    def _to_device(self, m: Member, tubes: Sequence[LoadedTube], g: list[int], resident: dict):
        """A batch's stacked pixels on the device, once per kind of pixels and batch."""
        key = (m.kind, tuple(g))
        if key not in resident:
            t = torch.from_numpy(np.stack([m.pixels(tubes[i]) for i in g]))
            non_blocking = self.device.startswith("cuda")
            if non_blocking:
                t = t.pin_memory()
            resident[key] = t.to(self.device, non_blocking=non_blocking)
        return resident[key]

    def _score_batch(self, m: Member, x, g: list[int], out: list[dict[str, float]],
                     frames_out: Optional[list[dict]] = None) -> None:
        """Score a batch into ``out``; out of device memory, halve it (a single tube that does
        not fit is left unscored by this member, and the video says so)."""
        try:
            p, per_frame = m.score_frames(x)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(g) == 1:
                from dfdc_cli.ui import warn

                warn(f"{m.name}: a tube of {x.shape[1]} frames does not fit in device memory; skipped")
                return
            h = len(g) // 2
            self._score_batch(m, x[:h], g[:h], out, frames_out)
            self._score_batch(m, x[h:], g[h:], out, frames_out)
            return
        for k, (i, v) in enumerate(zip(g, p)):
            out[i][m.name] = float(v)
            if per_frame is not None and frames_out is not None:
                frames_out[i][m.name] = [float(f) for f in per_frame[k]]

    # -- reading tubes --------------------------------------------------------------------------
    def load_tubes(self, extracted: Sequence[Extracted]) -> tuple[list[LoadedTube], list[str]]:
        """Decode the tubes of a chunk (threads). Returns the tubes and, per video, an error
        message ('' when fine) for tubes that could not be read."""
        return _collect_tubes(extracted, self._submit_tubes(extracted))

    def _pool(self) -> ThreadPoolExecutor:
        if self._decode_pool is None:
            self._decode_pool = ThreadPoolExecutor(max(1, min(8, self.workers or 4)), thread_name_prefix="tube-read")
        return self._decode_pool

    def _submit_tubes(self, extracted: Sequence[Extracted], cached: Optional[Sequence[Mapping]] = None) -> list:
        """Start reading the tubes of the videos that some member still has to score: (video
        index, future of (LoadedTube or None, error)) per tube."""
        futures = []
        for vi, e in enumerate(extracted):
            if e.status != STATUS_OK:
                continue
            todo = [m for m in self.members if cached is None or m.name not in cached[vi]]
            if not todo:
                continue
            need_3d = any(m.kind == "3d" for m in todo)
            need_2d = any(m.kind == "2d" for m in todo)
            for row in e.tubes:
                if e.pixels is not None or not row.get("tube_path"):
                    futures.append((vi, _handed_over(e, vi, row, need_3d, need_2d)))
                else:
                    futures.append((vi, self._pool().submit(_read_from_file, vi, row, need_3d, need_2d)))
            e.pixels = None  # the LoadedTubes hold them now; freed with the chunk
        return futures

    # -- results --------------------------------------------------------------------------------
    def _result(self, e: Extracted, scores: dict[int, dict[str, float]], error: str,
                cached_names: Sequence[str], frame_scores: Optional[Mapping[int, Mapping[str, list]]] = None) -> VideoScan:
        """A video's record: its faces that got pixels (``scores``: tube id -> {member: p},
        this run's and the score cache's; ``frame_scores`` likewise, per frame), aggregated over
        the members (and over the windows read, :mod:`dfdc_cli.scan.span`)."""
        r = VideoScan(video=e.video, name=e.name, status=e.status, reason=e.reason, extract_seconds=e.seconds,
                      cached_members=list(cached_names), weak=e.weak, span=self.span if e.windows else "first",
                      n_frames=int(e.n_total), fps=float(e.fps))
        if e.windows:
            r.windows = [asdict(w) for w in e.windows]
            r.frames_read = [[w.start_frame, w.last_frame] for w in e.windows if w.n_frames > 0]
        elif e.n_frames:
            r.frames_read = [[0, e.n_frames - 1]]
        if e.status == STATUS_OK:
            if e.weak:  # aggregate_video says it in its own words
                r.reason = "; ".join(n for n in r.reason.split("; ") if fallback_stage(n) != LOW_THRESHOLDS)
            r.faces = [_face(row) for row in e.tubes if int(row["tube_id"]) in scores]
            for f in r.faces:
                f.frame_scores = {m: list(v) for m, v in (frame_scores or {}).get(f.tube_id, {}).items()}
            if not r.faces:
                r.status = STATUS_ERROR
                r.reason = error or "no face tube could be read"
            elif error:
                r.reason = f"skipped {error}"
        r = aggregate_video(r, scores, self.names, self.weights, self.rule)
        scored = [w for w in r.windows if w.get("p_fake") is not None]
        if len(scored) > 1 and r.window is not None:
            w = next(w for w in r.windows if w["window"] == r.window)
            note = (f"p(fake) of window {r.window + 1} (frames {w['start_frame']}-{w['start_frame'] + w['n_frames'] - 1}), "
                    f"the highest of {len(scored)}")
            r.reason = f"{r.reason}; {note}" if r.reason else note
        return r

    def _scan_chunk(self, ex: Sequence[Extracted], keys, cached, futures,
                    cached_frames: Optional[Sequence[Mapping]] = None) -> list[VideoScan]:
        """Score a chunk whose tubes are being read (``futures``), store the new scores, and
        return its results."""
        tubes, errors = _collect_tubes(ex, futures)
        need = [{m.name for m in self.members if m.name not in cached[t.video_idx]} for t in tubes]
        per_frame: list[dict] = [dict() for _ in tubes]
        fresh = _by_video(len(ex), tubes, self.score_tubes(tubes, need=need, frames_out=per_frame))
        broken = drop_non_finite(fresh)
        fresh_frames = _by_video(len(ex), tubes, per_frame)
        for vi, by_tube in enumerate(fresh_frames):  # (frame scores of a score that was dropped go too)
            for tid, by_member in by_tube.items():
                for m in [m for m, ps in by_member.items()
                          if m not in fresh[vi].get(tid, {}) or not all(math.isfinite(p) for p in ps)]:
                    del by_member[m]
        self.scores.store(ex, keys, cached, fresh, errors, fresh_frames)
        out = []
        for vi, e in enumerate(ex):
            merged = {tid: dict(s) for tid, s in fresh[vi].items()}
            for m, tube_scores in cached[vi].items():
                for tid, p in tube_scores.items():
                    merged.setdefault(int(tid), {})[m] = float(p)
            frames = {tid: dict(s) for tid, s in fresh_frames[vi].items()}
            for m, tube_frames in (cached_frames[vi] if cached_frames else {}).items():
                for tid, ps in tube_frames.items():
                    frames.setdefault(int(tid), {})[m] = list(ps)
            r = self._result(e, merged, errors[vi], [m for m in self.names if m in cached[vi]], frames)
            if broken[vi]:
                note = "; ".join(broken[vi])
                r.reason = f"{r.reason}; {note}" if r.reason else note
            out.append(r)
        return out

    def scan_iter(self, paths: Sequence[str | Path]) -> Iterator[VideoScan]:
        """Scan videos; yields one :class:`VideoScan` per path, in the given order.

        A producer thread runs the extraction (worker processes, one pool for the run) and hands
        over each video as it is done; the models score the videos ready so far in one chunk
        (up to ``chunk_size`` videos, tubes batched across them) while extraction goes on
        meanwhile (and, with --index, the tubes of the next chunk are read from disk).
        """
        paths = [Path(p) for p in paths]
        n = len(paths)
        if n == 0:
            return
        feed = _Feed(self.extractor, paths, self.device, self.workers, self.chunk_size)

        def start(items):
            """Look the chunk up in the score cache and start reading what is left to score."""
            ex = [e for _, e in items]
            keys = self.scores.keys(ex)
            cached_frames: list[dict] = [dict() for _ in ex]
            cached = self.scores.cached(ex, keys, cached_frames)
            return items, keys, cached, self._submit_tubes(ex, cached), cached_frames

        results: list[Optional[VideoScan]] = [None] * n
        emitted = 0
        try:
            cur = start(feed.take(block=True))
            while cur[0]:
                nxt_items = feed.take(block=False)
                nxt = start(nxt_items) if nxt_items else None  # its tubes are read while this one scores
                items, keys, cached, futures, cached_frames = cur
                for (i, _), r in zip(items, self._scan_chunk([e for _, e in items], keys, cached, futures,
                                                             cached_frames)):
                    if not r.video:
                        r.video = str(paths[i])
                    results[i] = r
                while emitted < n and results[emitted] is not None:
                    yield results[emitted]
                    emitted += 1
                cur = nxt if nxt is not None else start(feed.take(block=True))
            for i in range(emitted, n):  # anything the extractor never reported
                r = results[i]
                if r is None:
                    r = aggregate_video(VideoScan(video=str(paths[i]), name=paths[i].name, status=STATUS_ERROR,
                                                  reason="extraction gave no result"),
                                        {}, self.names, self.weights, self.rule)
                yield r
        finally:
            feed.close()

    def scan(self, paths: Sequence[str | Path], on_result: Optional[Callable[[VideoScan], None]] = None) -> list[VideoScan]:
        out = []
        for r in self.scan_iter(paths):
            out.append(r)
            if on_result is not None:
                on_result(r)
        return out

    # -- what the output says about the run ------------------------------------------------------
    def judged_by(self) -> str:
        """One line on which model(s) gave the verdicts; the built-in one points to its model card."""
        parts = []
        for m in self.members:
            if is_builtin(m):
                parts.append(f"the built-in model {m.name} ({m.model_id}), a baseline trained here on public "
                             f"real videos with self-blended fakes; model card: {builtin.CARD}")
            else:
                parts.append(f"{m.name} ({m.model_id or 'unregistered'})")
        return "judged by " + "; ".join(parts)

    def describe(self) -> dict:
        out = {
            "members": self.names,
            "weights": {m: self.weights.get(m, 1.0) for m in self.names},
            "models": {m.name: m.model_id for m in self.members},
            **self.rule.describe(),
            "calibrations": {m.name: m.calibration.to_dict() if m.calibration is not None else None
                             for m in self.members},
            "clip": [CLIP_LO, CLIP_HI],
            "prior": PRIOR,
            "device": self.device,
            "span": self.span,
            "max_windows": self.n_windows,
            "window_rule": "max" if self.span != "first" else None,
            "extraction": _scan_settings(),
            "judged_by": self.judged_by(),
            "builtin": any(is_builtin(m) for m in self.members),
        }
        if out["builtin"]:
            out["model_card"] = builtin.CARD
        return out


def _scan_settings() -> dict:
    """The extraction settings of a scan (the scan preset), for the machine output and reports."""
    d = PRESETS["scan"].to_dict()
    d.pop("span_window", None)
    return d
