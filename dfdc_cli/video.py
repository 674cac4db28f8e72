"""Video I/O: the only module that talks to the codec library (PyAV, FFmpeg's libraries).

Basic tube I/O is here; the extractor's sequential decoder lives here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import av
import numpy as np

TUBE_CRF = 23


def write_video(path: str | Path, frames: np.ndarray, fps: float, crf: int = TUBE_CRF) -> None:
    """Encode RGB uint8 frames (T, H, W, 3) as H.264 MP4 (yuv420p, so every player shows it).

    H and W must be even (yuv420p); tubes are 256x256.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    from fractions import Fraction

    rate = Fraction(fps).limit_denominator(100000) if fps and fps > 0 else Fraction(30)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # One thread: tubes are small and the extractor already runs one process per core.
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: str | Path, start: int = 0, count: Optional[int] = None) -> np.ndarray:
    """Decode frames ``[start, start + count)`` of a (small) video as RGB uint8 (T, H, W, 3).

    Decodes sequentially from the start (tubes are short, so seeking would cost more than it saves).
    """
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i < start:
                continue
            if count is not None and len(out) >= count:
                break
            out.append(frame.to_ndarray(format="rgb24"))
    if not out:
        raise ValueError(f"{path}: no frames in [{start}, {start + (count or 0)})")
    return np.stack(out)
