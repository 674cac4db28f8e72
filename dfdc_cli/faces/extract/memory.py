"""Memory: what one video's extraction holds, and how many workers fit.

A video whose decoded frames fit in the hold budget (:func:`hold_bytes`) is decoded once and its
tubes are cropped from memory. A longer one is decoded twice: the first decode detects while
decoding, holding only a chunk of detector-sized sampled frames; the second crops the tubes' spans
as the frames go by, stopping after the last tube. Either way the tubes are the same (tests prove
it). :func:`plan_workers` sizes the default pool by :func:`estimate_peak`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from dfdc_cli.errors import VideoError
from dfdc_cli.faces import video
from dfdc_cli.faces.extract.params import ExtractParams

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
    except (OSError, ValueError):  # no cgroup v2 memory limit on this machine: the system figure stands
        pass
    return avail


def _frame_bytes(width: int, height: int) -> int:
    return (width + (width & 1)) * (height + (height & 1)) * 3 // 2


def detect_chunk(w: int, h: int) -> int:
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
    chunk = detect_chunk(dw, dh)
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


def check_memory(frames, params: ExtractParams) -> int:
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
