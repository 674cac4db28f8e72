"""The per-video job: one video -> its store entry (and, in the memory modes, its tubes' pixels).

:func:`process_video`: cache lookup (:mod:`.store`); one sequential decode detecting on every n-th
frame (MTCNN on frames resized for detection, through a detect function: in this process, in the
main process batched across videos, or in a Ray actor); the tube rule
(:func:`dfdc_cli.faces.tubes.find_tubes`); when no tube is found and fallbacks are on, the seed's
fallbacks (:func:`.params.fallback_attempts`); then every tube's frames cropped
(:mod:`.crops`) from the held frames or from a second decode (:mod:`.memory`).
:func:`safe_process` is the same job that never raises, what the pool and Ray tasks run.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np

from dfdc_cli import atomic
from dfdc_cli.errors import UserError, VideoError
from dfdc_cli.faces import video
from dfdc_cli.faces.detectors import DetectFn, DetectSettings, load as load_detector
from dfdc_cli.faces.extract.crops import write_tubes
from dfdc_cli.faces.extract.memory import check_memory, detect_chunk
from dfdc_cli.faces.extract.params import ExtractParams, fallback_attempts
from dfdc_cli.faces.extract.store import RESULT_JSON, lookup, new_result, tube_json
from dfdc_cli.faces.index import STATUS_OK, Faces, Track
from dfdc_cli.faces.tubes import find_tubes


FILES, MEMORY, MEMORY_AND_FILES = "files", "memory", "memory+files"  # where the tube pixels go
MODES = (FILES, MEMORY, MEMORY_AND_FILES)


def local_detector(device: str = "cpu", batch_size: int = 16) -> DetectFn:
    """A detect function backed by an in-process detector (:func:`dfdc_cli.faces.detectors.load`)."""
    return load_detector(device=device, batch_size=batch_size).faces


def _settings(params: ExtractParams, thresholds) -> DetectSettings:
    return DetectSettings(tuple(thresholds), params.factor, float(params.min_face_size))


def _to_source(found, width: int, height: int, w: int, h: int) -> list:
    """Detections on w x h detection frames -> :class:`~dfdc_cli.faces.index.Faces` in source pixels."""
    sx, sy = width / w, height / h
    s = np.array([sx, sy, sx, sy], np.float32)
    out = []
    for ff in found:
        boxes = np.asarray(ff.boxes, np.float32).reshape(-1, 4) * s
        marks = np.asarray(ff.landmarks, np.float32).reshape(-1, 5, 2) * np.array([sx, sy], np.float32)
        out.append(Faces(boxes, np.asarray(ff.probs, np.float32).reshape(-1), marks))
    return out


def _detect_sampled(frames, params: ExtractParams, detect: DetectFn, mult: float, thresholds) -> list:
    """Faces of every n-th frame of held frames, in source pixels."""
    w, h = params.detect_size(frames.width, frames.height, mult)
    idx = list(range(0, len(frames), params.every))
    images = [frames.rgb_resized(i, w, h) for i in idx]
    found = detect(images, _settings(params, thresholds))
    return _to_source(found, frames.width, frames.height, w, h)


def _find(faces: list, frames, params: ExtractParams, max_faces: int) -> list:
    return find_tubes(
        faces,
        params.every,
        len(frames),
        frames.width,
        frames.height,
        mask_downscale=params.mask_downscale,
        min_frames=params.min_frames,
        max_frames=params.max_frames,
        max_faces=max_faces,
        windows=params.windows,
    )


def _detect_pass(path, params: ExtractParams, detect: DetectFn, mult: float, thresholds, hold: bool,
                 start: int = 0):
    """One sequential decode of ``path``, detecting while decoding: returns (frames, faces in
    source pixels of every n-th frame, held). With ``hold``, the decoded frames are kept while they
    fit the budget (``held`` says whether all of them were); otherwise only the current one."""
    settings = _settings(params, thresholds)
    faces: list = []
    batch: list = []
    frames = None
    size = (0, 0)
    chunk = 1
    budget = 0

    def flush() -> None:
        found = detect(batch, settings)
        faces.extend(_to_source(found, frames.width, frames.height, *size))
        batch.clear()

    for frames in video.decode_iter(path, max_frames=params.first_frames, start=start):
        i = len(frames) - 1
        if i == 0:
            size = params.detect_size(frames.width, frames.height, mult)
            chunk = detect_chunk(*size)
            budget = check_memory(frames, params) if hold else 0
            expected = frames.declared
            if params.first_frames:
                expected = min(expected, params.first_frames) if expected else params.first_frames
            if hold and expected * frames.frame_bytes > budget:
                hold = False  # known to be long: stream from the start
            if not hold:
                video.free_pool()
        if i % params.every == 0:
            batch.append(frames.rgb_resized(i, *size))
            if len(batch) >= chunk:
                flush()
        if hold and frames.nbytes > budget:
            hold = False  # longer than its container said
            frames.drop_before(i + 1)
            video.free_pool()
        elif not hold:
            frames.drop_before(i + 1)
    if batch:
        flush()
    return frames, faces, hold


def _redecode(path, n: int, start: int = 0):
    """The first ``n`` frames (from ``start``) again, one at a time, as (index, frames) with only
    that frame held."""
    frames = None
    for frames in video.decode_iter(path, max_frames=n, start=start):
        i = len(frames) - 1
        yield i, frames
        frames.drop_before(i + 1)
    if frames is None or len(frames) < n:
        raise VideoError(f"the second decode ended after {0 if frames is None else len(frames)} of {n} frames")


def process_video(path: str | Path, out_dir: str | Path, params: ExtractParams, detect: Optional[DetectFn],
                  mode: str = FILES) -> dict:
    """Extract one video into its store entry (or reuse the entry). Returns the entry's result
    dict plus ``entry`` (absolute folder), ``cached`` and ``seconds``; raises VideoError.

    ``mode``: ``files`` writes the tube MP4s (``deepfake extract``); ``memory`` writes only the
    entry's result and tracks (the tubes' geometry) and hands the tubes' pixels over in
    ``result["pixels"]`` (tube id -> (3D frames, 2D crops or None)); ``memory+files`` does both.
    In the memory modes a stored entry is decoded and cropped again (no detection).

    Memory stays bounded whatever the video's length: frames are held only while they fit the
    hold budget (:func:`.memory.hold_bytes`, less when memory is short); a longer video is decoded a
    second time to crop its tubes."""
    t0 = time.time()
    path = Path(path)
    sha, entry, cached = lookup(path, out_dir, params, need_files=mode != MEMORY)
    rebuilt = ""
    if cached is not None:
        if mode == FILES or cached.get("status") != STATUS_OK:
            return cached
        try:
            cached["pixels"] = _crop_again(path, cached, entry, params)
        except DamagedEntry as exc:
            # A cache entry that cannot be read is dropped and made again, never a lasting failure.
            import shutil

            shutil.rmtree(entry, ignore_errors=True)
            rebuilt = f"{REBUILT} ({exc})"
        else:
            cached["seconds"] = time.time() - t0
            return cached
    if detect is None:
        detect = LazyDetect()
    clock = DetectClock(detect)
    start = window_start(path, params)
    frames, faces, held = _detect_pass(path, params, clock, 1.0, params.thresholds, hold=True, start=start)
    try:
        tubes = _find(faces, frames, params, params.max_faces)
        stage = ""
        if not tubes and params.fallbacks:
            for stage, mult, thresholds, max_faces in fallback_attempts(params):
                if held:
                    faces = _detect_sampled(frames, params, clock, mult, thresholds)
                else:
                    faces = _detect_pass(path, params, clock, mult, thresholds, hold=False, start=start)[1]
                tubes = _find(faces, frames, params, max_faces)
                if tubes:
                    break
            else:
                stage = ""
        t1 = time.time()
        res = new_result(frames, sha, params, tubes, stage)
        res["start_frame"] = start  # the tubes' frame numbers count from here
        res["passes"] = 1 if held or not tubes else 2
        fps = frames.fps if frames.fps > 0 else 30.0
        end = max((t.last_frame for t in tubes), default=-1) + 1
        source = ((i, frames) for i in range(end)) if held else _redecode(path, end, start)
        result_path = entry / RESULT_JSON
        outs = []
        try:
            with atomic.atomic_dir(entry) as tmp:
                outs = write_tubes(tmp, tubes, source, params, fps, write=mode != MEMORY,
                                    keep=mode != FILES) if tubes else []
                res["tubes"] = [tube_json(o.t, o.files) for o in outs]
                res["seconds"] = round(time.time() - t0, 3)
                res["timings"] = {
                    "decode": round(t1 - t0 - clock.seconds, 3),  # decoding and resizing, first pass
                    "detect": round(clock.seconds, 3),
                    "write": round(time.time() - t1, 3),  # crop + encode (+ the second decode)
                }
                atomic.write_json(tmp / RESULT_JSON, res)
        except OSError as exc:
            if result_path.is_file():  # another process finished the same entry first: fine
                pass
            elif mode == FILES:
                raise
            else:
                # A full or read-only cache: the scan goes on without storing this video (its tubes
                # are cropped again, in memory only), and says so.
                source = ((i, frames) for i in range(end)) if held else _redecode(path, end, start)
                outs = write_tubes(None, tubes, source, params, fps, write=False, keep=True,
                                   save_track=False) if tubes else []
                res["tubes"] = [tube_json(o.t, o.files) for o in outs]
                rebuilt = "; ".join(x for x in (rebuilt, f"{NOT_CACHED} ({exc.filename or entry}: "
                                                          f"{exc.strerror or exc})") if x)
        res.update(entry=str(entry), cached=False, seconds=time.time() - t0)
        if rebuilt:  # said in this run's result (the stored entry, if any, is a clean one)
            res["reason"] = "; ".join(x for x in (res.get("reason"), rebuilt) if x)
        if mode != FILES:
            res["pixels"] = {o.t.tube_id: o.pixels for o in outs}
        return res
    finally:
        frames.release()


REBUILT = "damaged cache entry rebuilt"
NOT_CACHED = "not stored in the cache"


class DamagedEntry(Exception):
    """A stored entry's file cannot be read (the entry is rebuilt)."""


def window_start(path, params: ExtractParams) -> int:
    """The source frame an extraction starts at: 0, or its span window's start (which needs the
    video's frame count)."""
    if params.span_window[1] == 1:
        return 0

    return params.start_frame(video.frame_count(path))


def _crop_again(path: Path, res: dict, entry: Path, params: ExtractParams) -> dict:
    """The pixels of a stored entry's tubes (geometry and tracks from the entry), from one
    streamed decode of the video up to the last tube's last frame."""
    tubes = []
    for t in res["tubes"]:
        try:
            first, last = int(t["first_frame"]), int(t["last_frame"])
            track = Track.load(entry / t["track_file"])
            box = [int(t[k]) for k in ("x1", "y1", "x2", "y2")]
        except Exception as exc:  # noqa: BLE001 - numpy/zipfile raise many kinds on a damaged file
            what = t.get("track_file", "result.json") if isinstance(t, dict) else "result.json"
            raise DamagedEntry(f"{entry / what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                               ) from None
        tubes.append(SimpleNamespace(tube_id=int(t["tube_id"]), box=box, first_frame=first, last_frame=last,
                                     n_frames=last - first + 1, track=track))
    end = max((t.last_frame for t in tubes), default=-1) + 1
    fps = float(res.get("fps") or 0) or 30.0
    outs = write_tubes(None, tubes, _redecode(path, end, int(res.get("start_frame") or 0)), params, fps,
                       write=False, keep=True, save_track=False)
    return {o.t.tube_id: o.pixels for o in outs}


class DetectClock:
    """A detect function that adds up the seconds spent in it."""

    def __init__(self, detect: DetectFn):
        self.detect = detect
        self.seconds = 0.0

    def __call__(self, images, settings: DetectSettings):
        t = time.time()
        try:
            return self.detect(images, settings)
        finally:
            self.seconds += time.time() - t


def safe_process(path: str, out_dir: str, params: ExtractParams, detect,
                 mode: str = FILES) -> tuple[Optional[dict], Optional[str]]:
    """process_video that never raises: (result, None) or (None, one-line reason)."""
    try:
        return process_video(path, out_dir, params, detect, mode), None
    except VideoError as exc:
        return None, str(exc)
    except MemoryError:
        return None, "out of memory"
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 -- one video's failure never stops the batch
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class LazyDetect:
    """A detect function that loads the detector on first use (a run of cache hits never loads it)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.fn: Optional[DetectFn] = None

    def __call__(self, images, settings: DetectSettings):
        if self.fn is None:
            self.fn = local_detector(self.device, batch_size=64 if self.device != "cpu" else 16)
        return self.fn(images, settings)
