"""The face-tube extractor (docs/method.md §1): videos -> face tubes (MP4 + track) + index tables.

Per video: decode once, sequentially (:func:`dfdc_cli.video.decode`); MTCNN
(:class:`dfdc_cli.detect.FaceDetector`) on every n-th frame, resized for detection; the 3D mask /
connected-components rule (:mod:`dfdc_cli.tubes`); when no tube is found and fallbacks are on, the
seed's fallbacks (detection at 2x resolution, then thresholds 0.5/0.5/0.5 keeping one face);
every frame of each tube's span cropped to its union box, zero-padded bottom/right to a square,
resized to 256x256 (bilinear) and written as H.264 MP4, with the per-frame track (``.npz``) and,
with ``with_2d``, the 2D pathway's crops (``_2d.mp4``).

Store layout (``out_dir``)::

    videos.csv, tubes.csv              the index (dfdc_cli.index), merged over runs, kept up to
                                       date while a run goes (IndexWriter)
    store/<sha[:2]>/<sha256>-<pkey>/   one entry per (video content, output-affecting parameters)
        result.json                    status, reason, video size/fps/frames, tube geometry
        tube0.mp4 tube0.npz [tube0_2d.mp4] ...

An entry is written atomically (it exists whole or not at all), so a second run with the same
parameters is a cache hit without decoding, and an interrupted run resumes where it stopped.
Errors are not cached (they are cheap to retry and may be transient).

Parallelism: with ``workers > 1`` each worker process runs the whole per-video pipeline on CPU
(one torch thread each). With ``device="cuda"`` the workers decode, resize and crop, and send the
frames to be detected to the main process, which batches them across videos on the GPU.

:func:`iter_extract` runs a batch and hands over each video as soon as it is done (what `deepfake
scan` uses to score the first videos while the others are extracted); :func:`extract` is that run,
collected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from .errors import UserError, VideoError
from .runtime import resolve_device
from .index import (
    STATUS_ERROR,
    STATUS_NO_FACE,
    STATUS_OK,
    TUBE_COLUMNS,
    VIDEO_COLUMNS,
    VIDEOS_CSV,
    TubeRecord,
    VideoRecord,
    table_paths,
    write_table,
)
from .inputs import missing_reason
from .lifecycle import Interrupted

# Bump when the extractor's output changes for the same parameters (invalidates cache entries).
EXTRACTOR_VERSION = 2  # 2: the 3D square-and-resize truncates as the seed did

STORE = "store"
RESULT_JSON = "result.json"
TUBE_SIZE = 256
FALLBACK_THRESHOLDS = (0.5, 0.5, 0.5)
N_2D = 32
INDEX_EVERY_S = 2.0  # the index is brought up to date at most this often during a run


@dataclass(frozen=True)
class ExtractParams:
    """Everything that decides what the extractor writes. Defaults: the CLI's (the seed's
    training-time numbers, tubes capped at 100 frames, at most 5 faces; the seed's fallbacks are
    an inference-time device, on in the scan preset: on footage without faces they turn
    short-lived false detections into tubes)."""

    every: int = 10  # detect on every n-th frame
    scale: float = 0.5  # detection frames = source x scale (ignored when long_side is set)
    long_side: Optional[int] = None  # detection frames resized so that their long side is this
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN P/R/O-Net
    factor: float = 0.709  # MTCNN pyramid factor
    min_face_size: int = 20  # MTCNN minimum face size, in detection-frame pixels
    mask_downscale: int = 4  # the 3D mask is at 1/mask_downscale of the source resolution
    min_frames: int = 30  # shorter tubes are dropped
    max_frames: int = 100  # tubes are cut to their first max_frames frames (0: no cap)
    windows: bool = False  # instead: a longer face gives consecutive max_frames windows, one tube each
    max_faces: int = 5  # tubes kept per video, by mean detection probability (0: all)
    first_frames: Optional[int] = None  # decode only the first N frames (None: all)
    fallbacks: bool = False  # no tube: retry at 2x resolution, then thresholds 0.5 keeping 1 face
    with_2d: bool = False  # also write the 2D pathway's crops (<stem>_2d.mp4)
    frames_2d: int = N_2D  # 2D crops of the first N frames of each tube (scan: 32; training a frame model: more)
    size: int = TUBE_SIZE  # tube side
    crf: int = 23  # H.264 quality of the tube MP4s

    def __post_init__(self):
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        errors = []
        if self.every < 1:
            errors.append("every must be >= 1")
        if self.long_side is None and not self.scale > 0:
            errors.append("scale must be > 0")
        if self.long_side is not None and self.long_side < 12:
            errors.append("long_side must be >= 12")
        if len(self.thresholds) != 3 or not all(0 <= t <= 1 for t in self.thresholds):
            errors.append("thresholds must be three numbers in [0, 1]")
        if not 0 < self.factor < 1:
            errors.append("factor must be in (0, 1)")
        if self.min_face_size < 1:
            errors.append("min_face_size must be >= 1")
        if self.mask_downscale < 1:
            errors.append("mask_downscale must be >= 1")
        if self.min_frames < 1:
            errors.append("min_frames must be >= 1")
        if self.max_frames < 0 or self.max_faces < 0:
            errors.append("max_frames and max_faces must be >= 0 (0: no limit)")
        if self.max_frames and self.max_frames < self.min_frames:
            errors.append("max_frames must be >= min_frames")
        if self.first_frames is not None and self.first_frames < 1:
            errors.append("first_frames must be >= 1")
        if self.frames_2d < 1:
            errors.append("frames_2d must be >= 1")
        if self.size < 16 or self.size % 2:
            errors.append("size must be an even number >= 16")
        if errors:
            raise UserError("bad extraction parameters: " + "; ".join(errors))

    def replace(self, **changes) -> "ExtractParams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = list(self.thresholds)
        return d

    def key(self) -> str:
        """Short hash of the output-affecting parameters (and the extractor version)."""
        d = self.to_dict()
        if not d["windows"]:
            del d["windows"]  # added later: the store keys of the seed's rule stay what they were
        if d["frames_2d"] == N_2D:  # (the default is left out, so caches made before the option stay valid)
            del d["frames_2d"]
        blob = json.dumps({"v": EXTRACTOR_VERSION, **d}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def detect_size(self, width: int, height: int, mult: float = 1.0) -> tuple[int, int]:
        """Detection-frame size for a source of ``width`` x ``height``."""
        s = (self.long_side / max(width, height)) if self.long_side else self.scale
        s *= mult
        return max(1, int(round(width * s))), max(1, int(round(height * s)))


PRESETS: dict[str, ExtractParams] = {
    # The seed's training-time extraction.
    "train": ExtractParams(max_frames=300, max_faces=0, fallbacks=False),
    # The seed's inference-time extraction (what `deepfake scan` uses).
    "scan": ExtractParams(
        first_frames=100,
        long_side=480,
        thresholds=(0.8, 0.8, 0.9),
        factor=0.71,
        max_frames=100,
        max_faces=5,
        fallbacks=True,
        with_2d=True,
    ),
}
DEFAULT_PARAMS = ExtractParams()


# ----------------------------------------------------------------------------------------------
# Inputs


@dataclass
class VideoInput:
    path: str  # absolute
    label: str = ""
    original: str = ""
    part: str = ""
    error: str = ""  # known before reading it (a folder that cannot be read)

    @property
    def name(self) -> str:
        return Path(self.path).name


def _load_metadata(folder: Path, cache: dict) -> dict:
    if folder not in cache:
        meta = {}
        mp = folder / "metadata.json"
        if mp.is_file():
            try:
                raw = json.loads(mp.read_text())
                if isinstance(raw, dict):
                    meta = {k: v for k, v in raw.items() if isinstance(v, dict)}
            except (OSError, ValueError):
                meta = {}
        cache[folder] = meta
    return cache[folder]


def collect_inputs(paths: Iterable[str | Path], exclude: Optional[Path] = None,
                   default_label: str = "", on_note: Optional[Callable[[str], None]] = None) -> list[VideoInput]:
    """Video files from files and folders (:func:`dfdc_cli.inputs.walk`: recursive, the shared
    video extensions, hidden files skipped, duplicates dropped), in the given order. A DFDC
    ``metadata.json`` beside a video gives its label and original; ``part`` is the video's folder
    name. Paths that do not exist and folders that cannot be read are kept (they get an error
    status). ``default_label`` labels the videos that no metadata.json labels (e.g. a folder of
    real videos for self-blended training)."""
    from .inputs import walk

    metas: dict = {}
    out = []
    for f in walk(paths, exclude=exclude, on_note=on_note):
        qp = f.path
        meta = _load_metadata(qp.parent, metas).get(qp.name, {}) if not f.error and qp.parent.is_dir() else {}
        label = str(meta.get("label") or default_label).upper()
        out.append(VideoInput(str(qp), label, str(meta.get("original") or ""), qp.parent.name, f.error))
    return out


# ----------------------------------------------------------------------------------------------
# The per-video pipeline


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def entry_dir(out_dir: str | Path, sha: str, params: ExtractParams) -> Path:
    return Path(out_dir) / STORE / sha[:2] / f"{sha}-{params.key()}"


DetectFn = Callable[[list, tuple, float, float], list]  # (images, thresholds, factor, min_face) -> FrameFaces


def local_detector(device: str = "cpu", batch_size: int = 16) -> DetectFn:
    """A detect function backed by an in-process :class:`~dfdc_cli.detect.FaceDetector`."""
    from .detect import FaceDetector

    det = FaceDetector(device=device, batch_size=batch_size)

    def detect(images, thresholds, factor, min_face_size):
        return det.detect(images, thresholds=thresholds, factor=factor, min_face_size=min_face_size)

    return detect


def _to_source(found, width: int, height: int, w: int, h: int) -> list:
    """Detections on w x h detection frames -> :class:`~dfdc_cli.tubes.Faces` in source pixels."""
    from .tubes import Faces

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
    found = detect(images, tuple(thresholds), params.factor, float(params.min_face_size))
    return _to_source(found, frames.width, frames.height, w, h)


def _find(faces: list, frames, params: ExtractParams, max_faces: int) -> list:
    from .tubes import find_tubes

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


def _fallback_attempts(params: ExtractParams):
    """The seed's fallbacks, in order: (stage, detection size multiplier, thresholds, max_faces)."""
    return (("2x", 2.0, params.thresholds, params.max_faces), ("low_thresholds", 1.0, FALLBACK_THRESHOLDS, 1))


def find_video_tubes(frames, params: ExtractParams, detect: DetectFn) -> tuple[list, str]:
    """Tubes of decoded (held) frames, with the seed's fallbacks; returns (tubes, stage) where
    stage is "" (first try), "2x" or "low_thresholds"."""
    tubes = _find(_detect_sampled(frames, params, detect, 1.0, params.thresholds), frames, params, params.max_faces)
    if tubes or not params.fallbacks:
        return tubes, ""
    for stage, mult, thresholds, max_faces in _fallback_attempts(params):
        tubes = _find(_detect_sampled(frames, params, detect, mult, thresholds), frames, params, max_faces)
        if tubes:
            return tubes, stage
    return [], ""


# ----------------------------------------------------------------------------------------------
# Memory: what one video's extraction holds
#
# A video whose decoded frames fit in the hold budget is decoded once and its tubes are cropped
# from memory (as ever). A longer one is decoded twice: the first decode detects while decoding,
# holding only a chunk of detector-sized sampled frames; the second crops the tubes' spans as the
# frames go by, stopping after the last tube. Either way the tubes are the same (tests prove it).

# Decoded frames held per video (I420: 3.1 MB a 1080p frame, so 512 MB hold 5.5 s of 1080p at
# 30 fps, 12 s of 720p): what keeps a 1080p worker under 2 GB with the detector's batch beside it.
HOLD_MB_DEFAULT = 512
# Detector-sized frames per detection call while decoding: whole detector batches (16 frames on
# CPU, 64 on a GPU), so the faces equal those of one call over all the sampled frames.
DETECT_CHUNK = 64
_DETECT_CHUNK_BYTES = 128 << 20
# The worker process itself (torch, MTCNN, codecs), measured at ~0.75 GB; rounded up.
_BASE_BYTES = 800 << 20
# The detector's working memory per detection-frame pixel of one batch (P-Net on the pyramid's
# first levels dominates), measured on CPU at 960x540 (~0.4 GB for 16 frames); rounded up.
_DETECT_BYTES_PER_PIXEL = 64
_DETECT_BATCH = 16


def hold_bytes() -> int:
    """The per-video budget of held frames (``DEEPFAKE_EXTRACT_HOLD_MB``, default 512)."""
    try:
        mb = int(os.environ.get("DEEPFAKE_EXTRACT_HOLD_MB", HOLD_MB_DEFAULT))
    except ValueError:
        mb = HOLD_MB_DEFAULT
    return max(0, mb) << 20


def available_memory() -> Optional[int]:
    """Memory this process can still take (MemAvailable, or the cgroup's limit left if lower);
    None when unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def _frame_bytes(width: int, height: int) -> int:
    return (width + (width & 1)) * (height + (height & 1)) * 3 // 2


def _detect_chunk(w: int, h: int) -> int:
    """Sampled frames per detection call: whole detector batches while they fit the chunk budget."""
    img = w * h * 3
    for k in (DETECT_CHUNK, _DETECT_BATCH):
        if k * img <= _DETECT_CHUNK_BYTES:
            return k
    return max(1, _DETECT_CHUNK_BYTES // max(img, 1))


def stream_bytes(width: int, height: int, params: ExtractParams) -> int:
    """Memory one video of this size needs on top of the worker when no frame is held: a few
    decoded frames (the decoder's threads hold some), a chunk of detection frames, the
    detector's batch at its largest (the 2x fallback's size when fallbacks are on)."""
    mult = 2.0 if params.fallbacks else 1.0
    dw, dh = params.detect_size(width, height, mult)
    chunk = _detect_chunk(dw, dh)
    return (
        _frame_bytes(width, height) * ((os.cpu_count() or 1) + 4)
        + chunk * dw * dh * 3
        + min(chunk, _DETECT_BATCH) * dw * dh * _DETECT_BYTES_PER_PIXEL
    )


def estimate_peak(width: int, height: int, params: ExtractParams, n_frames: int = 0) -> int:
    """Estimated peak resident memory of a worker extracting a video of this size (``n_frames``:
    its frame count if known; unknown counts as long): the process, the frames held (at most the
    hold budget) and :func:`stream_bytes`."""
    if params.first_frames:
        n_frames = min(n_frames, params.first_frames) if n_frames else params.first_frames
    held = _frame_bytes(width, height) * n_frames if n_frames else hold_bytes()
    if held > hold_bytes():
        held = 0  # streamed: decoded twice, never held
    return _BASE_BYTES + held + stream_bytes(width, height, params)


def _check_memory(frames, params: ExtractParams) -> int:
    """Raise VideoError when even a streamed extraction of this video cannot fit in the memory
    available now; otherwise return how many bytes of frames may be held."""
    need = stream_bytes(frames.width, frames.height, params)
    avail = available_memory()
    if avail is None:
        return hold_bytes()
    if need > avail:
        raise VideoError(
            f"too large for the memory available: {frames.width}x{frames.height} frames need "
            f"~{need / 2**30:.1f} GB to extract, {avail / 2**30:.1f} GB is available (detect at a "
            f"smaller size with --long-side, or run fewer --workers)"
        )
    # Hold frames only while what is left stays clear of the streamed need.
    return max(0, min(hold_bytes(), avail - 2 * need))


def plan_workers(paths: Sequence[str], params: ExtractParams, cap: int, sample: int = 16) -> tuple[int, str]:
    """The default number of workers: at most ``cap``, and no more than the memory available
    allows (available memory / :func:`estimate_peak` of the largest of the first ``sample``
    videos). Returns (workers, a note saying why when memory limits them, else "")."""
    from . import video

    avail = available_memory()
    if avail is None or cap <= 1:
        return cap, ""
    peak, size = 0, ""
    for p in paths[:sample]:
        try:
            info = video.probe(p)
        except VideoError:
            continue  # its own worker reports it
        est = estimate_peak(info.width, info.height, params, info.n_frames)
        if est > peak:
            peak, size = est, f"{info.width}x{info.height}"
    if not peak:
        return cap, ""
    n = int(max(1, min(cap, avail // peak)))
    if n >= cap:
        return cap, ""
    return n, (
        f"workers: {n} instead of {cap}, as memory allows ({avail / 2**30:.1f} GB available, "
        f"~{peak / 2**30:.1f} GB per worker for {size} videos; --workers overrides)"
    )


def _detect_pass(path, params: ExtractParams, detect: DetectFn, mult: float, thresholds, hold: bool):
    """One sequential decode of ``path``, detecting while decoding: returns (frames, faces in
    source pixels of every n-th frame, held). With ``hold``, the decoded frames are kept while they
    fit the budget (``held`` says whether all of them were); otherwise only the current one."""
    from . import video

    thresholds = tuple(thresholds)
    faces: list = []
    batch: list = []
    frames = None
    size = (0, 0)
    chunk = 1
    budget = 0

    def flush() -> None:
        found = detect(batch, thresholds, params.factor, float(params.min_face_size))
        faces.extend(_to_source(found, frames.width, frames.height, *size))
        batch.clear()

    for frames in video.decode_iter(path, max_frames=params.first_frames):
        i = len(frames) - 1
        if i == 0:
            size = params.detect_size(frames.width, frames.height, mult)
            chunk = _detect_chunk(*size)
            budget = _check_memory(frames, params) if hold else 0
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


def _redecode(path, n: int):
    """The first ``n`` frames again, one at a time, as (index, frames) with only that frame held."""
    from . import video

    frames = None
    for frames in video.decode_iter(path, max_frames=n):
        i = len(frames) - 1
        yield i, frames
        frames.drop_before(i + 1)
    if frames is None or len(frames) < n:
        raise VideoError(f"the second decode ended after {0 if frames is None else len(frames)} of {n} frames")


def square_face(crop: np.ndarray, size: int = TUBE_SIZE, sq: Optional[np.ndarray] = None) -> np.ndarray:
    """A face crop (h, w, 3) as the 3D members see it: zero-padded bottom/right to a square and
    resized to size x size, uint8.

    As the seed's ``resize_and_square_face``: the padded square is resized in float64 (bilinear,
    OpenCV INTER_LINEAR) and truncated to uint8, not rounded; a 1e-4 effect on p(fake), but
    measurable against the seed's outputs. ``sq``: a float64 square of side max(h, w) to pad into
    (reused between the frames of one tube, whose crops all have one shape)."""
    import cv2

    h, w = crop.shape[:2]
    side = max(h, w)
    if sq is None or sq.shape[:2] != (side, side):
        sq = np.zeros((side, side, crop.shape[2]), np.float64)
    sq[:h, :w] = crop
    if side == size:
        return sq.astype(np.uint8)
    return cv2.resize(sq, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.uint8)


def _square_tube_frame(frames, i: int, box, size: int, sq: np.ndarray) -> np.ndarray:
    """Frame ``i`` cropped to ``box`` and squared (:func:`square_face`) into ``sq``."""
    x1, y1, x2, y2 = box
    return square_face(frames.crop_rgb(i, x1, y1, x2, y2), size, sq)


def _tube_square(box) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box)
    side = max(x2 - x1, y2 - y1)
    return np.zeros((side, side, 3), np.float64)


def face_2d(crop: np.ndarray, size: int = TUBE_SIZE) -> np.ndarray:
    """A 2D crop as the 2D member sees it: resized to size x size (bicubic, uint8; the aspect
    changes if the crop is not square), as the seed's Resize(256, 256, INTER_CUBIC)."""
    import cv2

    if crop.shape[:2] == (size, size):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)


def _frame_2d(frames, i: int, box2d, size: int) -> np.ndarray:
    """The 2D pathway's crop of frame ``i``: the square ``box2d`` (zero outside the frame),
    resized to size x size (:func:`face_2d`)."""
    bx1, by1, bx2, by2 = box2d
    side = max(2, int(round(bx2 - bx1)))
    x1, y1 = int(round(bx1)), int(round(by1))
    return face_2d(frames.crop_rgb(i, x1, y1, x1 + side, y1 + side), size)


def tube_frames(frames, box, first: int, last: int, size: int = TUBE_SIZE) -> np.ndarray:
    """Every frame first..last cropped to ``box`` and squared (:func:`square_face`): uint8
    (n, size, size, 3)."""
    box = tuple(int(v) for v in box)
    out = np.empty((last - first + 1, size, size, 3), np.uint8)
    sq = _tube_square(box)
    for k, i in enumerate(range(first, last + 1)):
        out[k] = _square_tube_frame(frames, i, box, size, sq)
    return out


def tube_2d_frames(frames, track, first: int, last: int, size: int = TUBE_SIZE, n: int = N_2D) -> np.ndarray:
    """The 2D pathway's input: the first ``n`` frames of the span, square crops of side
    1.2 x the 90th percentile of the track's box size centred on the interpolated box centre
    (zero outside the frame), resized to size x size (:func:`face_2d`)."""
    from .tubes import box_2d_crops

    boxes = box_2d_crops(track, n=n)
    count = min(n, last - first + 1, len(boxes))
    out = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        out[k] = _frame_2d(frames, first + k, boxes[k], size)
    return out


class _TubeOut:
    """One tube's output, made as its frames go by: its files (encoders open only over the tube's
    span) and, with ``keep``, its pixels in memory (:attr:`pixels`: 3D frames, 2D crops or None).

    ``write``: the tube MP4s; ``save_track``: its track (an in-memory scan keeps the track, the
    tube's geometry, without the MP4s; cropping a stored entry again writes nothing)."""

    def __init__(self, t, folder: Optional[Path], params: ExtractParams, fps: float, write: bool = True,
                 keep: bool = False, save_track: bool = True):
        from .tubes import box_2d_crops

        self.t = t
        self.folder = folder
        self.params = params
        self.fps = fps
        self.write = write
        self.save_track = save_track
        stem = f"tube{t.tube_id}"
        self.files = {"tube_file": f"{stem}.mp4" if write else "", "track_file": f"{stem}.npz", "tube2d_file": ""}
        self.box = tuple(int(v) for v in t.box)
        self.sq = _tube_square(self.box)
        self.boxes_2d, self.n_2d = None, 0
        if params.with_2d:
            self.files["tube2d_file"] = f"{stem}_2d.mp4" if write else ""
            self.boxes_2d = box_2d_crops(t.track, n=params.frames_2d)
            self.n_2d = min(params.frames_2d, t.n_frames, len(self.boxes_2d))
        self.writer = self.writer_2d = None
        size = params.size
        self.frames = np.empty((t.last_frame - t.first_frame + 1, size, size, 3), np.uint8) if keep else None
        self.frames_2d = (np.empty((self.n_2d, size, size, 3), np.uint8)
                          if keep and params.with_2d else None)

    @property
    def pixels(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        return self.frames, self.frames_2d

    def _open(self, name: str):
        from .video import VideoWriter

        size = self.params.size
        return VideoWriter(self.folder / name, size, size, self.fps, crf=self.params.crf)

    def feed(self, frames, i: int) -> None:
        t, size = self.t, self.params.size
        if not t.first_frame <= i <= t.last_frame:
            return
        k = i - t.first_frame
        f3 = _square_tube_frame(frames, i, self.box, size, self.sq)
        if self.frames is not None:
            self.frames[k] = f3
        if self.write:
            if self.writer is None:
                self.writer = self._open(self.files["tube_file"])
            self.writer.write(f3)
        if k < self.n_2d:
            f2 = _frame_2d(frames, i, self.boxes_2d[k], size)
            if self.frames_2d is not None:
                self.frames_2d[k] = f2
            if self.write:
                if self.writer_2d is None:
                    self.writer_2d = self._open(self.files["tube2d_file"])
                self.writer_2d.write(f2)
                if k == self.n_2d - 1:
                    self.writer_2d.close()
        if i == t.last_frame:
            if self.writer is not None:
                self.writer.close()
            if self.save_track:
                t.track.size = size
                t.track.save(self.folder / self.files["track_file"])

    def abort(self) -> None:
        for w in (self.writer, self.writer_2d):
            if w is not None:
                w.abort()


def _write_tubes(folder: Optional[Path], tubes: list, source, params: ExtractParams, fps: float,
                 **how) -> list[_TubeOut]:
    """Make every tube (MP4, track, 2D crops; in memory: see :class:`_TubeOut`'s ``how``) from
    ``source``: (frame index, frames) in order, up to the last tube's last frame."""
    outs = [_TubeOut(t, folder, params, fps, **how) for t in tubes]
    end = max((t.last_frame for t in tubes), default=-1)
    try:
        for i, frames in source:
            for o in outs:
                o.feed(frames, i)
            if i >= end:
                break
    except BaseException:
        for o in outs:
            o.abort()
        raise
    return outs


def _tube_json(t, files: dict) -> dict:
    return {
        "tube_id": t.tube_id,
        "first_frame": t.first_frame,
        "last_frame": t.last_frame,
        "n_frames": t.n_frames,
        "x1": t.box[0],
        "y1": t.box[1],
        "x2": t.box[2],
        "y2": t.box[3],
        "mean_prob": round(float(t.mean_prob), 6),
        "max_prob": round(float(t.max_prob), 6),
        "n_detections": t.n_detections,
        **files,
    }


def lookup(path: str | Path, out_dir: str | Path, params: ExtractParams,
           need_files: bool = True) -> tuple[str, Path, Optional[dict]]:
    """(content sha256, entry folder, the entry's result if it is complete) of a video; raises
    VideoError for a missing, empty or unreadable file. Reads the file, never decodes it.

    ``need_files``: the entry must hold the tube MP4s; without, its result and tracks suffice (the
    tube geometry, what an in-memory scan needs to crop the tubes again without detecting)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(missing_reason(path))
    if path.is_dir():
        raise VideoError("is a folder, not a video file")
    try:
        if path.stat().st_size == 0:
            raise VideoError("empty file (0 bytes)")
        sha = file_sha256(path)
    except OSError as exc:
        raise VideoError(f"cannot read: {exc.strerror or exc}") from None
    entry = entry_dir(out_dir, sha, params).resolve()
    result_path = entry / RESULT_JSON
    if result_path.is_file():
        try:
            res = json.loads(result_path.read_text())
            kinds = ("tube_file", "track_file", "tube2d_file") if need_files else ("track_file",)
            files = [t[k] for t in res["tubes"] for k in kinds if t.get(k)]
            complete = not need_files or all(t.get("tube_file") for t in res["tubes"])
            if complete and all((entry / f).is_file() for f in files):
                res.update(entry=str(entry), cached=True)  # "seconds": the original extraction's
                return sha, entry, res
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged entry is redone
    return sha, entry, None


FILES, MEMORY, MEMORY_AND_FILES = "files", "memory", "memory+files"  # where the tube pixels go
MODES = (FILES, MEMORY, MEMORY_AND_FILES)


def process_video(path: str | Path, out_dir: str | Path, params: ExtractParams, detect: Optional[DetectFn],
                  mode: str = FILES) -> dict:
    """Extract one video into its store entry (or reuse the entry). Returns the entry's result
    dict plus ``entry`` (absolute folder), ``cached`` and ``seconds``; raises VideoError.

    ``mode``: ``files`` writes the tube MP4s (``deepfake extract``); ``memory`` writes only the
    entry's result and tracks (the tubes' geometry) and hands the tubes' pixels over in
    ``result["pixels"]`` (tube id -> (3D frames, 2D crops or None)); ``memory+files`` does both.
    In the memory modes a stored entry is decoded and cropped again (no detection).

    Memory stays bounded whatever the video's length: frames are held only while they fit the
    hold budget (:func:`hold_bytes`, less when memory is short); a longer video is decoded a
    second time to crop its tubes."""
    from . import atomic

    t0 = time.time()
    path = Path(path)
    sha, entry, cached = lookup(path, out_dir, params, need_files=mode != MEMORY)
    if cached is not None:
        if mode != FILES and cached.get("status") == STATUS_OK:
            cached["pixels"] = _crop_again(path, cached, entry, params)
            cached["seconds"] = time.time() - t0
        return cached
    if detect is None:
        detect = _LazyDetect()
    clock = _DetectClock(detect)
    frames, faces, held = _detect_pass(path, params, clock, 1.0, params.thresholds, hold=True)
    try:
        tubes = _find(faces, frames, params, params.max_faces)
        stage = ""
        if not tubes and params.fallbacks:
            for stage, mult, thresholds, max_faces in _fallback_attempts(params):
                if held:
                    faces = _detect_sampled(frames, params, clock, mult, thresholds)
                else:
                    faces = _detect_pass(path, params, clock, mult, thresholds, hold=False)[1]
                tubes = _find(faces, frames, params, max_faces)
                if tubes:
                    break
            else:
                stage = ""
        t1 = time.time()
        res = _result(frames, sha, params, tubes, stage)
        res["passes"] = 1 if held or not tubes else 2
        fps = frames.fps if frames.fps > 0 else 30.0
        end = max((t.last_frame for t in tubes), default=-1) + 1
        source = ((i, frames) for i in range(end)) if held else _redecode(path, end)
        result_path = entry / RESULT_JSON
        outs = []
        try:
            with atomic.atomic_dir(entry) as tmp:
                outs = _write_tubes(tmp, tubes, source, params, fps, write=mode != MEMORY,
                                    keep=mode != FILES) if tubes else []
                res["tubes"] = [_tube_json(o.t, o.files) for o in outs]
                res["seconds"] = round(time.time() - t0, 3)
                res["timings"] = {
                    "decode": round(t1 - t0 - clock.seconds, 3),  # decoding and resizing, first pass
                    "detect": round(clock.seconds, 3),
                    "write": round(time.time() - t1, 3),  # crop + encode (+ the second decode)
                }
                atomic.write_json(tmp / RESULT_JSON, res)
        except OSError:
            if not result_path.is_file():  # another process finished the same entry first: fine
                raise
        res.update(entry=str(entry), cached=False, seconds=time.time() - t0)
        if mode != FILES:
            res["pixels"] = {o.t.tube_id: o.pixels for o in outs}
        return res
    finally:
        frames.release()


def _crop_again(path: Path, res: dict, entry: Path, params: ExtractParams) -> dict:
    """The pixels of a stored entry's tubes (geometry and tracks from the entry), from one
    streamed decode of the video up to the last tube's last frame."""
    from types import SimpleNamespace

    from .index import Track

    tubes = []
    for t in res["tubes"]:
        first, last = int(t["first_frame"]), int(t["last_frame"])
        tubes.append(SimpleNamespace(
            tube_id=int(t["tube_id"]), box=[int(t[k]) for k in ("x1", "y1", "x2", "y2")], first_frame=first,
            last_frame=last, n_frames=last - first + 1, track=Track.load(entry / t["track_file"])))
    end = max((t.last_frame for t in tubes), default=-1) + 1
    fps = float(res.get("fps") or 0) or 30.0
    outs = _write_tubes(None, tubes, _redecode(path, end), params, fps, write=False, keep=True, save_track=False)
    return {o.t.tube_id: o.pixels for o in outs}


class _DetectClock:
    """A detect function that adds up the seconds spent in it."""

    def __init__(self, detect: DetectFn):
        self.detect = detect
        self.seconds = 0.0

    def __call__(self, images, thresholds, factor, min_face_size):
        t = time.time()
        try:
            return self.detect(images, thresholds, factor, min_face_size)
        finally:
            self.seconds += time.time() - t


def _result(frames, sha: str, params: ExtractParams, tubes: list, stage: str) -> dict:
    info = frames.info
    notes = []
    if not tubes:
        notes.append(f"no face tube of >= {params.min_frames} frames")
    if stage:
        notes.append(f"found by fallback ({stage})")
    if getattr(frames, "decode_error", None):
        notes.append(f"incomplete video: {frames.decode_error}")
    return {
        "version": EXTRACTOR_VERSION,
        "sha256": sha,
        "params": params.to_dict(),
        "status": STATUS_OK if tubes else STATUS_NO_FACE,
        "reason": "; ".join(notes),
        "n_frames": len(frames),
        "width": frames.width,
        "height": frames.height,
        "fps": round(float(frames.fps), 6),
        "rotation": info.rotation if info else 0,
        "fallback": stage,
        "tubes": [],
    }


def records_for(inp: VideoInput, res: Optional[dict], error: Optional[str], params: ExtractParams) -> tuple[VideoRecord, list[TubeRecord]]:
    """Index rows of one video from its result (or its error)."""
    if res is None:
        return (
            VideoRecord(
                video=inp.path, name=inp.name, status=STATUS_ERROR, reason=error or "unknown error",
                label=inp.label, original=inp.original, part=inp.part,
            ),
            [],
        )
    entry = Path(res["entry"])
    key = entry.name
    vrec = VideoRecord(
        video=inp.path,
        name=inp.name,
        status=res["status"],
        reason=res.get("reason", ""),
        n_tubes=len(res["tubes"]),
        n_frames=int(res["n_frames"]),
        width=int(res["width"]),
        height=int(res["height"]),
        fps=float(res["fps"]),
        label=inp.label,
        original=inp.original,
        part=inp.part,
        key=key,
        seconds=round(float(res.get("seconds", 0.0)), 3),
    )
    trecs = []
    for t in res["tubes"]:
        trecs.append(
            TubeRecord(
                video=inp.path,
                name=inp.name,
                tube_id=int(t["tube_id"]),
                first_frame=int(t["first_frame"]),
                last_frame=int(t["last_frame"]),
                n_frames=int(t["n_frames"]),
                x1=int(t["x1"]),
                y1=int(t["y1"]),
                x2=int(t["x2"]),
                y2=int(t["y2"]),
                mean_prob=float(t["mean_prob"]),
                max_prob=float(t["max_prob"]),
                n_detections=int(t["n_detections"]),
                label=inp.label,
                original=inp.original,
                part=inp.part,
                tube_path=str(entry / t["tube_file"]) if t.get("tube_file") else "",
                track_path=str(entry / t["track_file"]),
                tube2d_path=str(entry / t["tube2d_file"]) if t.get("tube2d_file") else "",
                key=key,
            )
        )
    return vrec, trecs


def _safe_process(path: str, out_dir: str, params: ExtractParams, detect,
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


# ----------------------------------------------------------------------------------------------
# Worker processes


def _worker_main(wid: int, tasks, results, out_dir: str, params: ExtractParams, remote: bool,
                 mode: str = FILES) -> None:
    """Worker loop: ("job", job_id, path) -> ("done", wid, job_id, result, error).

    remote=True: detection requests go to the main process as ("det", wid, req_id, images, kw)
    and the answer comes back on this worker's task queue as ("dets", req_id, faces)."""
    import signal

    import torch

    from .lifecycle import watch_parent

    watch_parent()  # never outlive the main process, however it dies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # noqa: BLE001
        pass
    counter = [0]

    def remote_detect(images, thresholds, factor, min_face_size):
        counter[0] += 1
        req = counter[0]
        results.put(("det", wid, req, images, (tuple(thresholds), factor, min_face_size)))
        while True:
            msg = tasks.get()
            if msg[0] == "dets" and msg[1] == req:
                if isinstance(msg[2], str):
                    raise RuntimeError(f"detection failed in the main process: {msg[2]}")
                return msg[2]

    detect = remote_detect if remote else _LazyDetect("cpu")
    results.put(("ready", wid))
    while True:
        msg = tasks.get()
        if msg is None:
            return
        if msg[0] != "job":
            continue
        _, job_id, path = msg
        res, err = _safe_process(path, out_dir, params, detect, mode)
        results.put(("done", wid, job_id, res, err))  # (in the memory modes the pixels travel pickled)


def _mp_context():
    """Worker processes start from a fork server that has imported torch and the extractor once
    (per main process): starting a worker then takes milliseconds instead of seconds, and no
    worker is forked from a process whose torch/OpenMP threads are running (which can hang)."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    from .lifecycle import forkserver_preload

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(forkserver_preload(["torch", "cv2", "av", "scipy.ndimage", "dfdc_cli.extract", "dfdc_cli.detect"]))
    return ctx


class _Pool:
    """Worker processes with their own task queues (so detection answers reach the right one)."""

    def __init__(self, n: int, out_dir: str, params: ExtractParams, remote: bool, mode: str = FILES):
        self.ctx = _mp_context()
        self.results = self.ctx.Queue()
        self.args = (out_dir, params, remote, mode)
        self.procs: dict[int, object] = {}
        self.tasks: dict[int, object] = {}
        self.busy: dict[int, Optional[int]] = {}
        self.next_wid = 0
        for _ in range(n):
            self.spawn()

    def spawn(self) -> int:
        wid = self.next_wid
        self.next_wid += 1
        q = self.ctx.Queue()
        p = self.ctx.Process(target=_worker_main, args=(wid, q, self.results, *self.args), daemon=True)
        p.start()
        self.procs[wid], self.tasks[wid], self.busy[wid] = p, q, None
        return wid

    def idle(self) -> list[int]:
        return [w for w, j in self.busy.items() if j is None]

    def submit(self, wid: int, job_id: int, path: str) -> None:
        self.busy[wid] = job_id
        self.tasks[wid].put(("job", job_id, path))

    def dead(self) -> list[tuple[int, Optional[int], Optional[int]]]:
        """Workers that died: (wid, job it held, exit code); they are replaced."""
        out = []
        for wid, p in list(self.procs.items()):
            if not p.is_alive():
                out.append((wid, self.busy.get(wid), p.exitcode))
                del self.procs[wid], self.tasks[wid], self.busy[wid]
                if threading.main_thread().is_alive():  # (at exit, multiprocessing ends them: let it)
                    self.spawn()
        return out

    def close(self, abort: bool = False) -> None:
        """Stop the workers: after their current job, or (``abort``: the run was interrupted or
        given up) at once, SIGTERM letting them remove half-written entries; SIGKILL for any
        worker still there after that."""
        from .lifecycle import GRACE_S

        if abort:
            for p in self.procs.values():
                if p.is_alive():
                    p.terminate()
        else:
            for wid, q in self.tasks.items():
                try:
                    q.put(None)
                except (OSError, ValueError):
                    pass  # that worker's queue is gone with it; the join below settles it
        deadline = time.time() + (GRACE_S + 1 if abort else 5)
        for p in self.procs.values():
            p.join(timeout=max(0.1, deadline - time.time()))
        for p in self.procs.values():
            if p.is_alive() and not abort:
                p.terminate()
                p.join(timeout=GRACE_S)
            if p.is_alive():
                p.kill()
                p.join(timeout=1)


def detect_batched(detector, requests: Sequence[tuple[list, tuple]]) -> list:
    """Detections for several videos' frames at once. ``requests``: (images, (thresholds, factor,
    min_face_size)); those of equal frame size and settings go through the detector as one batch.
    Per request: its FrameFaces, or the error message when its batch failed. (The local GPU path's
    main process and the Ray detector actors.)"""
    answers: list = [None] * len(requests)
    groups: dict = {}
    for i, (images, kw) in enumerate(requests):
        size = images[0].shape if images else None
        groups.setdefault((size, kw), []).append(i)
    for (size, kw), idx in groups.items():
        thresholds, factor, min_face = kw
        allimgs = [im for i in idx for im in requests[i][0]]
        try:
            faces = detector.detect(allimgs, thresholds=thresholds, factor=factor, min_face_size=min_face) if allimgs else []
            err = None
        except Exception as exc:  # noqa: BLE001 -- reported to each video of the batch
            faces, err = None, f"{type(exc).__name__}: {exc}"
        pos = 0
        for i in idx:
            n = len(requests[i][0])
            answers[i] = err if err is not None else faces[pos : pos + n]
            pos += n
    return answers


def _serve_detections(pool: _Pool, requests: list, detector) -> None:
    """Answer the workers' pending detection requests, batched across videos by frame size."""
    answers = detect_batched(detector, [(r[3], r[4]) for r in requests])
    for r, answer in zip(requests, answers):
        if r[1] in pool.tasks:
            pool.tasks[r[1]].put(("dets", r[2], answer))


def _run_pool(
    jobs: list[VideoInput], out_dir: str, params: ExtractParams, device: str, workers: int, remote: bool,
    mode: str = FILES,
) -> Iterator[tuple[int, Optional[dict], Optional[str]]]:
    """Yields (job index, result, error) per job, in completion order."""
    detector = None
    if remote:
        from .detect import FaceDetector

        detector = FaceDetector(device=device, batch_size=64)
    pool = _Pool(max(1, workers), out_dir, params, remote, mode)
    pending = list(range(len(jobs)))[::-1]
    crashes: dict[int, int] = {}
    running = 0

    def fill() -> None:
        nonlocal running
        for wid in pool.idle():
            if not pending:
                break
            j = pending.pop()
            pool.submit(wid, j, jobs[j].path)
            running += 1

    completed = False
    try:
        while pending or running:
            if not threading.main_thread().is_alive():
                # The program is exiting (Ctrl-C while this runs in a side thread, as in scan);
                # a worker started now would keep multiprocessing's exit waiting for it forever.
                return
            fill()
            det_reqs, finished = [], []
            try:
                msg = pool.results.get(timeout=0.2)
                while True:
                    if msg[0] == "det":
                        det_reqs.append(msg)
                    elif msg[0] == "done":
                        _, wid, j, res, err = msg
                        if wid in pool.busy:
                            pool.busy[wid] = None
                        running -= 1
                        finished.append((j, res, err))
                    msg = pool.results.get_nowait()
            except queue.Empty:
                pass
            # Workers blocked on detections and idle workers are served before the consumer
            # gets control: it may take a while with each result.
            if det_reqs:
                _serve_detections(pool, det_reqs, detector)
            for wid, j, code in pool.dead():
                if j is None:
                    continue
                running -= 1
                crashes[j] = crashes.get(j, 0) + 1
                if crashes[j] < 2:
                    pending.append(j)  # one retry in a fresh worker
                else:
                    why = " -9: killed, out of memory?" if code == -9 else f" {code}"
                    finished.append((j, None, f"worker process crashed (exit code{why})"))
            fill()
            yield from finished
        completed = True
    finally:
        pool.close(abort=not completed)


# ----------------------------------------------------------------------------------------------
# The batch


class VideoDone(NamedTuple):
    """One video's outcome, as :func:`iter_extract` hands it over."""

    index: int  # position among the run's inputs (files as given, folders expanded)
    video: VideoRecord
    tubes: list[TubeRecord]
    cached: bool  # reused from the store, not detected again
    pixels: Optional[dict] = None  # memory modes: tube id -> (3D frames, 2D crops or None)


@dataclass
class ExtractResult:
    videos: list[VideoRecord]
    tubes: list[TubeRecord]
    out_dir: Path
    cached: int = 0
    seconds: float = 0.0
    frames_decoded: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. why fewer workers ran
    shard: Optional[tuple[int, int]] = None  # (K, N): the rows went to the index's part K of N

    @property
    def n_errors(self) -> int:
        return sum(v.status == STATUS_ERROR for v in self.videos)


def write_index(out_dir: Path, videos: list[VideoRecord], tubes: list[TubeRecord], fresh: bool = False,
                shard: Optional[tuple[int, int]] = None) -> None:
    """Merge this run's rows into out_dir's tables (rows of the same videos replaced); a shard's
    rows go to its own part of the tables (:func:`dfdc_cli.index.table_paths`). Holds the
    folder's lock: runs and shards writing into one folder at once never lose each other's rows."""
    import pandas as pd

    from .index import index_lock, read_table

    videos_csv, tubes_csv = table_paths(out_dir, shard)
    new_v = pd.DataFrame([asdict(v) for v in videos], columns=VIDEO_COLUMNS)
    new_t = pd.DataFrame([asdict(t) for t in tubes], columns=TUBE_COLUMNS)
    done = set(new_v["video"].astype(str))
    with index_lock(out_dir):
        if not fresh:
            old_v, old_t = read_table(videos_csv, VIDEO_COLUMNS), read_table(tubes_csv, TUBE_COLUMNS)
            if len(old_v):
                old_v = old_v[~old_v["video"].astype(str).isin(done)]
                new_v = pd.concat([old_v.reindex(columns=VIDEO_COLUMNS), new_v], ignore_index=True)
            if len(old_t):
                old_t = old_t[~old_t["video"].astype(str).isin(done)]
                new_t = pd.concat([old_t.reindex(columns=TUBE_COLUMNS), new_t], ignore_index=True)
        # Tubes first: a video's row is never in the index before its tubes' rows.
        write_table(tubes_csv, new_t.to_dict("records"), TUBE_COLUMNS)
        write_table(videos_csv, new_v.to_dict("records"), VIDEO_COLUMNS)


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
        self.timer: Optional[object] = None
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
                self._merge()
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
                    self.error = exc  # reported by close(), which tries again

    def _merge(self) -> None:
        t0 = time.time()
        done = [self.rows[k] for k in sorted(self.rows)]
        write_index(self.out_dir, [v for v, _ in done], [t for _, ts in done for t in ts], fresh=self.fresh,
                    shard=self.shard)
        self.dirty = False
        self.last = time.time()
        self.cost = self.last - t0

    def close(self) -> None:
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.dirty or self.error is not None:
                self._merge()


def _out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir).expanduser().resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def iter_extract(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    params: ExtractParams = DEFAULT_PARAMS,
    *,
    device: str = "cpu",
    workers: Optional[int] = None,
    fresh: bool = False,
    progress: bool = True,
    quiet: bool = False,
    write: bool = True,
    detect_in_main: Optional[bool] = None,
    default_label: str = "",
    notes: Optional[list] = None,
    shard: Optional[tuple[int, int]] = None,
    executor: Optional[Callable] = None,
    mode: str = FILES,
    need_pixels: Optional[Callable[[int, dict], bool]] = None,
) -> Iterator[VideoDone]:
    """Extract face tubes from ``paths`` into ``out_dir``, handing over each video as it is done.

    ``mode`` (:func:`process_video`): ``memory`` / ``memory+files`` hand the tubes' pixels over in
    :attr:`VideoDone.pixels`. There, a video whose entry is stored is decoded and cropped again
    only when ``need_pixels(index, result)`` says so (default: always); otherwise it is handed over
    at once, without pixels (e.g. every member's scores of it are cached).

    Yields one :class:`VideoDone` per input video in completion order: cache hits and unreadable
    files first (settled without starting a worker), then the others as the workers finish them.
    Failed videos are yielded too (status error, with the reason); a bad video never raises.
    The rows handed over are merged into ``out_dir``'s index as the videos finish (at most every
    ``INDEX_EVERY_S`` seconds, :class:`IndexWriter`) and when the iteration ends or stops early
    (``close()``, Ctrl-C, an exception in the consumer), unless ``write=False``; close the iterator
    (``contextlib.closing``) to have that happen at once when stopping early. Stopped by
    :class:`~dfdc_cli.lifecycle.Interrupted` (the CLI's Ctrl-C / SIGTERM), it stops the workers at
    once and raises it again with a line saying what was done and how to resume.

    The bad folder or device is reported (UserError) by this call, before any iteration.
    ``workers``, ``device``, ``detect_in_main``, ``fresh``: as :func:`extract`. ``progress``:
    a progress bar; one line per failed video unless ``quiet`` (which also hides the bar).
    ``notes``: a list the run appends remarks to (why fewer workers ran than asked by default).
    ``shard`` (K, N): only the inputs of job-array task K of N (:mod:`dfdc_cli.shard`), whose rows
    go to the index's part K of N. ``executor``: runs the jobs elsewhere instead of the local
    cache lookup and workers (:mod:`dfdc_cli.cluster`): called with the jobs, it yields
    (job index, result, error) as each finishes; ``device`` is then the executor's business.
    """
    from .shard import select

    out_dir = _out_dir(out_dir)
    if executor is None:
        device = resolve_device(device)
    jobs = select(collect_inputs(paths, exclude=out_dir, default_label=default_label,
                                 on_note=(lambda _line: None) if quiet else None), shard, lambda j: j.name)
    auto = workers is None
    if workers is None:
        cores = os.cpu_count() or 1
        # GPU: the main process detects, the workers decode/crop/encode.
        workers = min(cores if device == "cpu" else max(1, cores - 1), max(1, len(jobs)))
    workers = max(1, int(workers))
    remote = (device != "cpu") if detect_in_main is None else bool(detect_in_main)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode != FILES and executor is not None:
        raise ValueError("an executor's jobs write files: mode must be 'files'")
    return _iter_jobs(
        jobs, out_dir, params, device, workers, remote, fresh, progress and not quiet, quiet, write,
        auto_workers=auto, notes=notes, shard=shard, executor=executor, mode=mode, need_pixels=need_pixels,
    )


def _iter_jobs(
    jobs: list[VideoInput], out_dir: Path, params: ExtractParams, device: str, workers: int, remote: bool,
    fresh: bool, progress: bool, quiet: bool, write: bool, auto_workers: bool = False,
    notes: Optional[list] = None, shard: Optional[tuple[int, int]] = None, executor: Optional[Callable] = None,
    mode: str = FILES, need_pixels: Optional[Callable[[int, dict], bool]] = None,
) -> Iterator[VideoDone]:
    from . import ui

    index = IndexWriter(out_dir, fresh=fresh, shard=shard) if write else None
    counts = {STATUS_OK: 0, STATUS_NO_FACE: 0, STATUS_ERROR: 0}
    n_cached = 0
    bar = ui.progress() if (progress and jobs) else None
    task = None

    def settle(j: int, res: Optional[dict], err: Optional[str]) -> VideoDone:
        nonlocal n_cached
        pixels = res.pop("pixels", None) if res is not None else None
        vrec, trecs = records_for(jobs[j], res, err, params)
        if index is not None:
            index.add(j, vrec, trecs)
        cached = bool(res is not None and res.get("cached"))
        counts[vrec.status] = counts.get(vrec.status, 0) + 1
        n_cached += cached
        if err is not None and not quiet:
            ui.fail_line(jobs[j].path, err)
        if bar is not None:
            bar.update(task, advance=1, status=_status_text(counts, n_cached))
        return VideoDone(j, vrec, trecs, cached, pixels)

    stop: Optional[Interrupted] = None
    try:
        if bar is not None:
            bar.start()
            task = bar.add_task("extract", total=len(jobs), status="")
        todo = []
        if executor is not None:
            with contextlib.closing(executor(jobs)) as run:
                for j, res, err in run:
                    yield settle(j, res, err)
        for j, inp in enumerate(jobs if executor is None else []):
            if inp.error:
                yield settle(j, None, inp.error)
                continue
            try:
                _, _, res = lookup(inp.path, out_dir, params, need_files=mode != MEMORY)
            except VideoError as exc:
                yield settle(j, None, str(exc))
                continue
            wants = (mode != FILES and res is not None and res.get("status") == STATUS_OK
                     and (need_pixels is None or need_pixels(j, res)))
            if res is not None and not wants:
                yield settle(j, res, None)
            else:
                todo.append(j)  # to extract, or (memory modes) to decode and crop again
        if auto_workers and workers > 1 and len(todo) > 1:
            workers, note = plan_workers([jobs[j].path for j in todo], params, min(workers, len(todo)))
            if note and notes is not None:
                notes.append(note)
        if workers <= 1 or len(todo) <= 1:
            detect = _LazyDetect(device)
            for j in todo:
                res, err = _safe_process(jobs[j].path, str(out_dir), params, detect, mode)
                yield settle(j, res, err)
        else:
            sub = [jobs[j] for j in todo]
            # closing(): the workers stop as soon as this run is closed, not when it is collected.
            with contextlib.closing(_run_pool(sub, str(out_dir), params, device, min(workers, len(todo)), remote,
                                              mode)) as pool:
                for k, res, err in pool:
                    yield settle(todo[k], res, err)
    except Interrupted as exc:
        stop = exc
        raise
    finally:
        if bar is not None:
            bar.stop()
        if index is not None:
            index.close()
        if stop is not None:
            # What was done and how to go on, for the one line the CLI prints.
            done = sum(counts.values())
            line = f"{done} of {len(jobs)} videos done"
            if done:
                line += (f" (ok {counts[STATUS_OK]}, no_face {counts[STATUS_NO_FACE]}, error {counts[STATUS_ERROR]}, "
                         f"cached {n_cached})" + (f", in {out_dir / VIDEOS_CSV}" if write else ""))
            line += ". Run the same command to resume" + (": finished videos are not processed again." if done else ".")
            raise Interrupted(line, stop.signum) from None


def extract(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    params: ExtractParams = DEFAULT_PARAMS,
    *,
    device: str = "cpu",
    workers: Optional[int] = None,
    fresh: bool = False,
    progress: bool = True,
    quiet: bool = False,
    summary: bool = True,
    write: bool = True,
    detect_in_main: Optional[bool] = None,
    default_label: str = "",
    shard: Optional[tuple[int, int]] = None,
    executor: Optional[Callable] = None,
) -> ExtractResult:
    """Extract face tubes from ``paths`` (files and folders) into ``out_dir``.

    Returns this run's index rows (in input order); also merges them into ``out_dir``'s
    ``videos.csv`` / ``tubes.csv`` (unless ``write=False``; ``fresh`` drops the rows already
    there). ``workers``: processes (default: min(CPU cores, videos); 1 runs in this process).
    ``device``: where MTCNN runs ("cpu", "cuda", "cuda:1"...); with several workers and a GPU,
    the workers decode and crop while the main process detects, batched across videos
    (``detect_in_main`` forces that split on or off). Never raises for a bad video:
    its row has status error and the reason. Terminal output: ``progress`` bar, one line per failed
    video, ``summary`` table; ``quiet`` silences all three. :func:`iter_extract` is the same run,
    handing over each video as it is done; ``shard`` and ``executor`` are explained there.
    """
    t0 = time.time()
    out_dir = _out_dir(out_dir)
    done: list[VideoDone] = []
    notes: list[str] = []
    run = iter_extract(
        paths, out_dir, params, device=device, workers=workers, fresh=fresh, progress=progress, quiet=quiet,
        write=write, detect_in_main=detect_in_main, default_label=default_label, notes=notes, shard=shard,
        executor=executor,
    )
    with contextlib.closing(run):
        done.extend(run)
    done.sort(key=lambda d: d.index)
    out = ExtractResult(
        videos=[d.video for d in done],
        tubes=[t for d in done for t in d.tubes],
        out_dir=out_dir,
        cached=sum(d.cached for d in done),
        seconds=time.time() - t0,
        frames_decoded=sum(d.video.n_frames for d in done if not d.cached),
        notes=notes,
        shard=shard,
    )
    if summary and not quiet:
        _summary(out)
    return out


class _LazyDetect:
    """A detect function that loads MTCNN on first use (a run of cache hits never loads it)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.fn: Optional[DetectFn] = None

    def __call__(self, images, thresholds, factor, min_face_size):
        if self.fn is None:
            self.fn = local_detector(self.device, batch_size=64 if self.device != "cpu" else 16)
        return self.fn(images, thresholds, factor, min_face_size)


def _status_text(counts: dict, cached: int) -> str:
    return f"ok {counts.get(STATUS_OK, 0)}  no_face {counts.get(STATUS_NO_FACE, 0)}  error {counts.get(STATUS_ERROR, 0)}  cached {cached}"


def _summary(res: ExtractResult) -> None:
    from rich.table import Table

    from .ui import console

    by = {s: [v for v in res.videos if v.status == s] for s in (STATUS_OK, STATUS_NO_FACE, STATUS_ERROR)}
    table = Table(title="deepfake extract", show_header=True, header_style="bold")
    table.add_column("status")
    table.add_column("videos", justify="right")
    table.add_column("tubes", justify="right")
    table.add_row("ok", str(len(by[STATUS_OK])), str(len(res.tubes)))
    table.add_row("no_face", str(len(by[STATUS_NO_FACE])), "0")
    table.add_row("[red]error[/red]" if by[STATUS_ERROR] else "error", str(len(by[STATUS_ERROR])), "0")
    table.add_row("total", str(len(res.videos)), str(len(res.tubes)), end_section=True)
    rate = len(res.videos) / res.seconds if res.seconds > 0 else 0.0
    videos_csv, tubes_csv = table_paths(res.out_dir, res.shard)
    console.print(table)
    for note in res.notes:
        console.print(note, highlight=False, soft_wrap=True)
    console.print(
        f"{res.cached} cached, {len(res.videos) - res.cached} processed in {res.seconds:.1f} s "
        f"({rate:.2f} videos/s)\nindex: {videos_csv}\n       {tubes_csv}",
        highlight=False,
        soft_wrap=True,
    )
