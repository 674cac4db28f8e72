"""Crops: a tube's frames as the members see them, and the writer that makes a tube as its frames go by.

3D pathway (:func:`square_face`): every frame of the tube's span cropped to its union box,
zero-padded bottom/right to a square, resized to ``TUBE_SIZE`` (bilinear, truncated as the seed
did). 2D pathway (:func:`face_2d`): the first ``frames_2d`` frames, square crops of 1.2 x the
track's box size (:func:`dfdc_cli.faces.tubes.box_2d_crops`), resized bicubic. :class:`TubeOut` writes
a tube's MP4s and track and/or keeps its pixels in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from dfdc_cli.faces.extract.params import ExtractParams
from dfdc_cli.faces.index import TUBE_SIZE
from dfdc_cli.faces.tubes import box_2d_crops


def square_face(crop: np.ndarray, size: int = TUBE_SIZE, sq: Optional[np.ndarray] = None) -> np.ndarray:
    """A face crop (h, w, 3) as the 3D members see it: zero-padded bottom/right to a square and
    resized to size x size, uint8.

    As the seed's ``resize_and_square_face``: the padded square is resized in float64 (bilinear,
    OpenCV INTER_LINEAR) and truncated to uint8, not rounded; a 1e-4 effect on p(fake), but
    measurable against the seed's outputs. ``sq``: a float64 square of side max(h, w) to pad into
    (reused between the frames of one tube, whose crops all have one shape)."""
    h, w = crop.shape[:2]
    side = max(h, w)
    if sq is None or sq.shape[:2] != (side, side):
        sq = np.zeros((side, side, crop.shape[2]), np.float64)
    sq[:h, :w] = crop
    if side == size:
        return sq.astype(np.uint8)
    return cv2.resize(sq, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.uint8)


def square_tube_frame(frames, i: int, box, size: int, sq: np.ndarray) -> np.ndarray:
    """Frame ``i`` cropped to ``box`` and squared (:func:`square_face`) into ``sq``."""
    x1, y1, x2, y2 = box
    return square_face(frames.crop_rgb(i, x1, y1, x2, y2), size, sq)


def tube_square(box) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in box)
    side = max(x2 - x1, y2 - y1)
    return np.zeros((side, side, 3), np.float64)


def face_2d(crop: np.ndarray, size: int = TUBE_SIZE) -> np.ndarray:
    """A 2D crop as the 2D member sees it: resized to size x size (bicubic, uint8; the aspect
    changes if the crop is not square), as the seed's Resize(256, 256, INTER_CUBIC)."""
    if crop.shape[:2] == (size, size):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)


def frame_2d(frames, i: int, box2d, size: int) -> np.ndarray:
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
    sq = tube_square(box)
    for k, i in enumerate(range(first, last + 1)):
        out[k] = square_tube_frame(frames, i, box, size, sq)
    return out


class TubeOut:
    """One tube's output, made as its frames go by: its files (encoders open only over the tube's
    span) and, with ``keep``, its pixels in memory (:attr:`pixels`: 3D frames, 2D crops or None).

    ``write``: the tube MP4s; ``save_track``: its track (an in-memory scan keeps the track, the
    tube's geometry, without the MP4s; cropping a stored entry again writes nothing)."""

    def __init__(self, t, folder: Optional[Path], params: ExtractParams, fps: float, write: bool = True,
                 keep: bool = False, save_track: bool = True):
        self.t = t
        self.folder = folder
        self.params = params
        self.fps = fps
        self.write = write
        self.save_track = save_track
        stem = f"tube{t.tube_id}"
        self.files = {"tube_file": f"{stem}.mp4" if write else "", "track_file": f"{stem}.npz", "tube2d_file": ""}
        self.box = tuple(int(v) for v in t.box)
        self.sq = tube_square(self.box)
        self.boxes_2d, self.n_2d = None, 0
        if params.with_2d:
            self.files["tube2d_file"] = f"{stem}_2d.mp4" if write else ""
            self.boxes_2d = box_2d_crops(t.track, n=params.frames_2d)
            self.n_2d = min(params.frames_2d, t.n_frames, len(self.boxes_2d))
        self.writers: dict = {}  # file key ("tube_file", "tube2d_file") -> its open VideoWriter
        size = params.size
        self.frames = np.empty((t.last_frame - t.first_frame + 1, size, size, 3), np.uint8) if keep else None
        self.frames_2d = (np.empty((self.n_2d, size, size, 3), np.uint8)
                          if keep and params.with_2d else None)

    @property
    def pixels(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        return self.frames, self.frames_2d

    def _put(self, kind: str, kept: Optional[np.ndarray], k: int, frame: np.ndarray) -> None:
        """Frame ``k`` of one output (``kind``: its file key): kept in memory and/or encoded."""
        if kept is not None:
            kept[k] = frame
        if self.write:
            if kind not in self.writers:
                from dfdc_cli.faces.video import VideoWriter

                size = self.params.size
                self.writers[kind] = VideoWriter(self.folder / self.files[kind], size, size, self.fps,
                                                 crf=self.params.crf)
            self.writers[kind].write(frame)

    def feed(self, frames, i: int) -> None:
        t, size = self.t, self.params.size
        if not t.first_frame <= i <= t.last_frame:
            return
        k = i - t.first_frame
        self._put("tube_file", self.frames, k, square_tube_frame(frames, i, self.box, size, self.sq))
        if k < self.n_2d:
            self._put("tube2d_file", self.frames_2d, k, frame_2d(frames, i, self.boxes_2d[k], size))
            if k == self.n_2d - 1 and "tube2d_file" in self.writers:
                self.writers["tube2d_file"].close()
        if i == t.last_frame:
            if "tube_file" in self.writers:
                self.writers["tube_file"].close()
            if self.save_track:
                t.track.size = size
                t.track.save(self.folder / self.files["track_file"])

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


def write_tubes(folder: Optional[Path], tubes: list, source, params: ExtractParams, fps: float,
                 **how) -> list[TubeOut]:
    """Make every tube (MP4, track, 2D crops; in memory: see :class:`TubeOut`'s ``how``) from
    ``source``: (frame index, frames) in order, up to the last tube's last frame."""
    outs = [TubeOut(t, folder, params, fps, **how) for t in tubes]
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
