"""Video I/O: the only module that talks to the codec library (PyAV, FFmpeg's libraries).

Tube I/O (:func:`write_video`, :func:`read_video`) and the extractor's decoder:

- :func:`probe`: displayed size, fps, declared frame count, display rotation (one frame decoded);
- :func:`decode`: the whole video (or its first N frames), ONCE and in order (no seeking), into
  :class:`Frames`: I420 buffers in displayed orientation (the display rotation is applied), half
  the memory of RGB; RGB only for what is asked (:meth:`Frames.rgb_resized` for the detector,
  :meth:`Frames.crop_rgb` for the tube crops), BT.601 like PyAV's ``rgb24``;
- every failure is a :class:`~dfdc_cli.errors.VideoError` with a one-line reason (missing, empty,
  not a video, truncated, no video stream, undecodable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

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
    with VideoWriter(path, frames.shape[2], frames.shape[1], fps, crf=crf) as writer:
        for img in frames:
            writer.write(img)


class VideoWriter:
    """H.264 MP4 written one RGB frame at a time (what :func:`write_video` does for a whole
    array, byte for byte): the extractor feeds each tube as the frames go by, so no tube is ever
    held whole."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float, crf: int = TUBE_CRF):
        rate = Fraction(fps).limit_denominator(100000) if fps and fps > 0 else Fraction(30)
        self.container = av.open(str(path), mode="w", format="mp4")
        try:
            stream = self.container.add_stream("libx264", rate=rate)
            stream.width = int(width)
            stream.height = int(height)
            stream.pix_fmt = "yuv420p"
            # One thread: tubes are small and the extractor already runs one process per core.
            stream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
        except BaseException:
            self.container.close()
            raise
        self.stream = stream
        self.n = 0

    def write(self, img: np.ndarray) -> None:
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            self.container.mux(packet)
        self.n += 1

    def close(self) -> None:
        if self.container is None:
            return
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None

    def abort(self) -> None:
        """Close without flushing (the file is discarded by the caller)."""
        if self.container is not None:
            self.container.close()
            self.container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


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


# --------------------------------------------------------------------------------------------
# The extractor's sequential decoder
# --------------------------------------------------------------------------------------------

from dataclasses import dataclass  # noqa: E402

import cv2  # noqa: E402

from dfdc_cli.errors import VideoError  # noqa: E402


from fractions import Fraction
@dataclass
class VideoInfo:
    """What :func:`probe` learns about a video; sizes are DISPLAYED sizes (after rotation)."""

    path: str
    width: int
    height: int
    fps: float
    n_frames: int  # as declared by the container (0 if unknown); the decoder counts the real number
    rotation: int  # display rotation in degrees, counter-clockwise (0, 90, 180, 270)
    codec: str
    pix_fmt: str
    has_audio: bool


def _rotation_k(rotation: float) -> int:
    """Display rotation (degrees CCW, PyAV's ``frame.rotation``) -> np.rot90 ``k``."""
    return int(round((rotation or 0) / 90.0)) % 4


def _open(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise VideoError("file not found")
    if path.is_dir():
        raise VideoError("is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.error.InvalidDataError:
        with open(path, "rb") as fh:
            head = fh.read(64)
        if head[4:8] == b"ftyp" or head[:4] in (b"\x1a\x45\xdf\xa3", b"RIFF"):
            raise VideoError("truncated or corrupt video file (its container cannot be read)") from None
        raise VideoError("not a video (unrecognised file format)") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"cannot open: {_ffmpeg_msg(exc)}") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise VideoError("no video stream" + (f" (only {', '.join(kinds)})" if kinds else ""))
    return container


def _ffmpeg_msg(exc: BaseException) -> str:
    msg = getattr(exc, "strerror", None) or str(exc)
    return str(msg).strip() or type(exc).__name__


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        try:
            if rate and float(rate) > 0:
                return float(rate)
        except (ZeroDivisionError, TypeError):
            continue
    return 0.0


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, frame count and display rotation of a video (decodes one frame).

    Raises :class:`VideoError` with a one-line reason for anything that is not a decodable video.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        frame = None
        try:
            for frame in container.decode(stream):
                break
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoError(f"undecodable video stream: {_ffmpeg_msg(exc)}") from None
        if frame is None:
            raise VideoError("video stream has no decodable frames")
        k = _rotation_k(frame.rotation)
        w, h = (frame.width, frame.height) if k % 2 == 0 else (frame.height, frame.width)
        return VideoInfo(
            path=str(path),
            width=w,
            height=h,
            fps=_stream_fps(stream),
            n_frames=int(stream.frames or 0),
            rotation=k * 90,
            codec=stream.codec_context.name,
            pix_fmt=frame.format.name,
            has_audio=bool(container.streams.audio),
        )
    finally:
        container.close()


# Frame buffers are recycled between the videos a process decodes: the first touch of fresh
# memory (page faults) costs more than decoding itself on a busy machine.
_POOL: dict[int, list[np.ndarray]] = {}
_POOL_MAX_BYTES = int(os.environ.get("DEEPFAKE_FRAME_POOL_MB", "1024")) * (1 << 20)


def _pack_i420(flat: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray, H2: int, W2: int) -> None:
    """Write planes into ``flat``, the I420 buffer of an even ``H2`` x ``W2`` frame: Y (h, w) with its
    last row and column repeated up to the even size, then U and V (``H2/2`` x ``W2/2`` each)."""
    Y = flat[: H2 * W2].reshape(H2, W2)
    h, w = y.shape
    Y[:h, :w] = y
    if h < H2:
        Y[h:, :w] = y[-1:, :]
    if w < W2:
        Y[:, w:] = Y[:, w - 1 : w]
    q = H2 * W2 // 4
    flat[H2 * W2 : H2 * W2 + q].reshape(H2 // 2, W2 // 2)[:] = u
    flat[H2 * W2 + q :].reshape(H2 // 2, W2 // 2)[:] = v


def _take_buffer(n: int) -> np.ndarray:
    free = _POOL.get(n)
    return free.pop() if free else np.empty(n, np.uint8)


def _give_buffers(bufs: list[np.ndarray]) -> None:
    if not bufs:
        return
    n = bufs[0].size
    for other in [k for k in _POOL if k != n]:  # keep one size only: videos come in few sizes
        del _POOL[other]
    free = _POOL.setdefault(n, [])
    room = max(0, _POOL_MAX_BYTES // max(n, 1) - len(free))
    free.extend(bufs[:room])


def free_pool() -> None:
    """Hand the recycled frame buffers back to the OS (before a long video is streamed: its
    frames are not held, so the pool would only add to the peak)."""
    _POOL.clear()


class Frames:
    """Decoded frames of one video, held as I420 (yuv420p) buffers in displayed orientation.

    Half the memory of RGB and no full-frame colour conversion: only the frames the detector sees
    and the tube crops are converted to RGB (BT.601 limited range, as PyAV/FFmpeg's default
    ``rgb24`` conversion of untagged and BT.601 sources; within ~3 levels of it).

    The frames are numbered from 0 in decoding order; :meth:`drop_before` lets a sequential
    consumer hold only the frames it still needs (``len()`` stays the number decoded so far).

    Each frame is a flat buffer of ``H2 * W2 * 3 / 2`` bytes where ``H2, W2`` are the displayed
    height and width rounded up to even (the extra row/column repeats the edge), so that any
    even-aligned crop is itself a valid I420 image for OpenCV.
    """

    def __init__(self, width: int, height: int, fps: float, info: Optional[VideoInfo] = None):
        self.width = int(width)
        self.height = int(height)
        self.fps = float(fps)
        self.info = info
        self.W2 = self.width + (self.width & 1)
        self.H2 = self.height + (self.height & 1)
        self._bufs: list[np.ndarray] = []
        self._base = 0  # number of the first frame still held
        self.declared = 0  # frame count the container declares (0: unknown)
        self.decode_error: Optional[str] = None  # set when the stream broke off early

    # -- filling -------------------------------------------------------------------------------
    def append_planes(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Add one frame from (already rotated) planes: Y (H, W), U/V (ceil(H/2), ceil(W/2))."""
        buf = _take_buffer(self.H2 * self.W2 * 3 // 2)
        _pack_i420(buf, y, u, v, self.H2, self.W2)
        self._bufs.append(buf)

    def __len__(self) -> int:
        return self._base + len(self._bufs)

    def release(self) -> None:
        """Drop the frames, recycling their memory for the next video decoded in this process."""
        self.drop_before(len(self))

    def drop_before(self, i: int) -> None:
        """Drop (recycle) the frames before frame ``i``; they can no longer be read."""
        n = min(max(0, int(i) - self._base), len(self._bufs))
        if n:
            bufs, self._bufs = self._bufs[:n], self._bufs[n:]
            self._base += n
            _give_buffers(bufs)

    @property
    def nbytes(self) -> int:
        """Bytes of the frames held."""
        return sum(b.nbytes for b in self._bufs)

    @property
    def frame_bytes(self) -> int:
        return self.H2 * self.W2 * 3 // 2

    def _buf(self, i: int) -> np.ndarray:
        j = i - self._base
        if j < 0:
            raise IndexError(f"frame {i} was dropped (frames from {self._base} are held)")
        return self._bufs[j]

    # -- plane views ---------------------------------------------------------------------------
    def planes(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        buf = self._buf(i)
        H2, W2 = self.H2, self.W2
        q = H2 * W2 // 4
        return (
            buf[: H2 * W2].reshape(H2, W2),
            buf[H2 * W2 : H2 * W2 + q].reshape(H2 // 2, W2 // 2),
            buf[H2 * W2 + q :].reshape(H2 // 2, W2 // 2),
        )

    # -- RGB -------------------------------------------------------------------------------------
    def rgb(self, i: int) -> np.ndarray:
        """Full frame ``i`` as RGB uint8 (H, W, 3)."""
        img = cv2.cvtColor(self._buf(i).reshape(self.H2 * 3 // 2, self.W2), cv2.COLOR_YUV2RGB_I420)
        return img[: self.height, : self.width]

    def rgb_resized(self, i: int, width: int, height: int) -> np.ndarray:
        """Frame ``i`` resized (bilinear) to ``width`` x ``height`` RGB; the planes are resized
        before the colour conversion, which is cheaper and equivalent up to rounding."""
        if (width, height) == (self.width, self.height):
            return self.rgb(i)
        w2, h2 = width + (width & 1), height + (height & 1)
        Y, U, V = self.planes(i)
        # The displayed area of each plane maps onto the new size (chroma onto the even-padded one).
        ys = cv2.resize(Y[: self.height, : self.width], (width, height), interpolation=cv2.INTER_LINEAR)
        ch, cw = (self.height + 1) // 2, (self.width + 1) // 2
        us = cv2.resize(U[:ch, :cw], (w2 // 2, h2 // 2), interpolation=cv2.INTER_LINEAR)
        vs = cv2.resize(V[:ch, :cw], (w2 // 2, h2 // 2), interpolation=cv2.INTER_LINEAR)
        buf = np.empty((h2 * 3 // 2, w2), np.uint8)
        _pack_i420(buf.reshape(-1), ys, us, vs, h2, w2)
        return cv2.cvtColor(buf, cv2.COLOR_YUV2RGB_I420)[:height, :width]

    def crop_rgb(self, i: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
        """RGB of the box [x1, x2) x [y1, y2) of frame ``i``; parts outside the frame are black."""
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        out = np.zeros((max(y2 - y1, 0), max(x2 - x1, 0), 3), np.uint8)
        cx1, cy1 = max(x1, 0), max(y1, 0)
        cx2, cy2 = min(x2, self.width), min(y2, self.height)
        if cx2 <= cx1 or cy2 <= cy1:
            return out
        ax1, ay1 = cx1 & ~1, cy1 & ~1
        ax2, ay2 = cx2 + (cx2 & 1), cy2 + (cy2 & 1)
        Y, U, V = self.planes(i)
        h, w = ay2 - ay1, ax2 - ax1
        buf = np.empty((h * 3 // 2, w), np.uint8)
        flat = buf.reshape(-1)
        flat[: h * w].reshape(h, w)[:] = Y[ay1:ay2, ax1:ax2]
        q = h * w // 4
        flat[h * w : h * w + q].reshape(h // 2, w // 2)[:] = U[ay1 // 2 : ay2 // 2, ax1 // 2 : ax2 // 2]
        flat[h * w + q :].reshape(h // 2, w // 2)[:] = V[ay1 // 2 : ay2 // 2, ax1 // 2 : ax2 // 2]
        rgb = cv2.cvtColor(buf, cv2.COLOR_YUV2RGB_I420)
        out[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1] = rgb[cy1 - ay1 : cy2 - ay1, cx1 - ax1 : cx2 - ax1]
        return out


def _frame_planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U, V planes (views, line padding removed) of a frame converted to yuv420p if needed."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    out = []
    for p in frame.planes[:3]:
        a = np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        out.append(a)
    return out[0], out[1], out[2]


def decode(path: str | Path, max_frames: Optional[int] = None, threads: int = 0) -> Frames:
    """Decode a video ONCE, sequentially, into :class:`Frames` (displayed orientation).

    ``max_frames`` stops after the first N frames (the scan preset reads 100). ``threads`` is the
    decoder's thread count (0: FFmpeg's choice). A stream that breaks after some frames were
    decoded, or ends well before the frame count its container declares (a truncated file),
    keeps the frames decoded so far if there are at least 10 of them (``frames.decode_error``
    says what happened), otherwise raises :class:`VideoError`; so does a file that is not a
    decodable video.
    """
    frames = None
    for frames in decode_iter(path, max_frames=max_frames, threads=threads):
        pass
    assert frames is not None  # decode_iter raises rather than yield nothing
    return frames


def decode_iter(path: str | Path, max_frames: Optional[int] = None, threads: int = 0,
                start: int = 0) -> Iterator[Frames]:
    """:func:`decode`, one frame at a time: yields the same :class:`Frames` after each frame is
    appended (frame ``len(frames) - 1`` is the new one), so the consumer decides what to hold
    (:meth:`Frames.drop_before`). ``frames.info`` and ``frames.decode_error`` are set, and the
    checks of :func:`decode` made, when the iteration ends; ``frames.declared`` is known from the
    first frame on.

    ``start``: the frames before it are decoded and dropped (frame 0 of ``frames`` is the source's
    frame ``start``). Decoding rather than seeking: a seek lands on a key frame and the frame index
    of what follows is only known from timestamps, which variable-rate files do not honour."""
    container = _open(path)
    frames: Optional[Frames] = None
    error: Optional[str] = None
    try:
        stream = container.streams.video[0]
        if threads != 1:
            stream.thread_type = "AUTO"
            if threads > 1:
                stream.thread_count = threads
        fps = _stream_fps(stream)
        declared = int(stream.frames or 0)
        k = 0
        skipped = 0
        try:
            for frame in container.decode(stream):
                if skipped < start:
                    skipped += 1
                    del frame
                    continue
                if frames is None:
                    k = _rotation_k(frame.rotation)
                    w, h = (frame.width, frame.height) if k % 2 == 0 else (frame.height, frame.width)
                    if w < 2 or h < 2:
                        raise VideoError(f"frame size {w}x{h} is too small")
                    frames = Frames(w, h, fps)
                    frames.declared = declared
                y, u, v = _frame_planes(frame)
                if k:
                    y, u, v = np.rot90(y, k), np.rot90(u, k), np.rot90(v, k)
                if y.shape != (frames.height, frames.width):
                    raise VideoError(
                        f"frame size changes mid-stream ({frames.width}x{frames.height} -> "
                        f"{y.shape[1]}x{y.shape[0]})"
                    )
                frames.append_planes(y, u, v)
                del frame, y, u, v  # the decoder may reuse the frame's memory
                yield frames
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except (av.error.FFmpegError, OSError) as exc:
            error = _ffmpeg_msg(exc)
        if frames is None or len(frames) == 0:
            if start and skipped >= start and not error:
                raise VideoError(f"the video ends before frame {start}")
            raise VideoError("undecodable video stream" + (f": {error}" if error else " (no frames)"))
        wanted = max(0, declared - start) if max_frames is None else min(max(0, declared - start), max_frames)
        if not error and declared and len(frames) < wanted - 2:
            error = f"only {len(frames)} of {declared} frames (truncated file?)"
        if error and len(frames) < 10:
            raise VideoError(f"video stream breaks after {len(frames)} frames: {error}")
        frames.info = VideoInfo(
            path=str(path),
            width=frames.width,
            height=frames.height,
            fps=fps,
            n_frames=declared,
            rotation=k * 90,
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt or "",
            has_audio=bool(container.streams.audio),
        )
        frames.decode_error = error
    finally:
        container.close()


def frame_count(path: str | Path) -> int:
    """The number of frames of a video: as its container declares it, else counted by decoding."""
    n = probe(path).n_frames
    return n if n > 0 else decode_count(path)


def loop_video(src: str | Path, dst: str | Path, times: int) -> None:
    """Write ``src``'s video stream ``times`` times in a row to ``dst`` (MP4) without re-encoding:
    its packets again with shifted timestamps. A cheap long video for benchmarks and tests (the
    source should start with a key frame, as encoded files do)."""
    if times < 1:
        raise ValueError("times must be >= 1")
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        packets = [p for p in inp.demux(stream) if p.dts is not None]
        if not packets:
            raise ValueError(f"{src}: no video packets")
        start = min(p.pts for p in packets if p.pts is not None)
        span = max(p.pts + (p.duration or 0) for p in packets if p.pts is not None) - start
        with av.open(str(dst), mode="w", format="mp4") as out:
            ostream = out.add_stream_from_template(stream)
            for k in range(times):
                for p in packets:
                    p.stream = ostream
                    if p.pts is not None:
                        p.pts += span if k else 0
                    p.dts += span if k else 0
                    out.mux(p)


def decode_count(path: str | Path, max_frames: Optional[int] = None, threads: int = 0) -> int:
    """Decode-only throughput helper: decode (and convert to yuv420p planes) without keeping frames."""
    container = _open(path)
    n = 0
    try:
        stream = container.streams.video[0]
        if threads != 1:
            stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            _frame_planes(frame)
            n += 1
            if max_frames is not None and n >= max_frames:
                break
    finally:
        container.close()
    return n
