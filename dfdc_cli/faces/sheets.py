"""Contact sheets: a tube's frames in a grid, with its track drawn on (what `deepfake tubes show`
and `tubes blend --sheet` write).

Geometry (so scripts can rely on it): the sampled frames are 0, N, 2N, ...; each gets a square
cell of ``thumb`` pixels (non-square frames are letter-boxed); ``cols = min(cols, samples)``,
``rows = ceil(samples / cols)``; the PNG is ``rows*thumb`` high and ``cols*thumb`` wide
(:func:`render_blend_sheet` stacks three such rows per band: real, fake, mask). Boxes are green on
detected frames, yellow on interpolated ones; landmarks red.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from dfdc_cli.atomic import atomic_path
from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import Track
from dfdc_cli.faces.tubes import track_2d_geometry, track_tube_geometry

# Colours (RGB) of the overlay: detected frames green, interpolated frames yellow, landmarks red.
_DETECTED = (40, 220, 40)
_INTERPOLATED = (240, 200, 0)
_LANDMARK = (255, 40, 40)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def load_tube_frames(path: Path):
    """Decode a tube MP4 (RGB uint8 (T, H, W, 3)); a missing or unreadable file is a UserError."""
    from dfdc_cli.faces.video import read_video

    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        return read_video(path)
    except Exception as exc:  # PyAV raises many kinds; all mean "not a readable video"
        raise UserError(f"{path}: cannot read the video ({one_line(exc)})") from None


def load_track_geometry(track_path: Path, frame_size: tuple[int, int], crops_2d: bool = False):
    """(landmarks (n,5,2), boxes (n,4), detected (n,)) of a track, in the decoded frames' pixels.

    ``crops_2d``: the frames are the 2D pathway's crops (``<stem>_2d.mp4``), not the tube."""
    try:
        track = Track.load(track_path)
        if crops_2d:
            lm, bx = track_2d_geometry(track, size=int(track.size))
        else:
            lm, bx = track_tube_geometry(track)
        detected = np.asarray(track.detected, bool)[: len(bx)]
    except Exception as exc:
        raise UserError(f"{track_path}: cannot read the track ({one_line(exc)})") from None
    h, w = frame_size
    sx, sy = w / float(track.size), h / float(track.size)
    return lm * np.array([sx, sy], np.float32), bx * np.array([sx, sy, sx, sy], np.float32), detected


def _cell(img, thumb: int):
    """Letter-box one RGB frame into a thumb x thumb cell; returns (cell, scale, (ox, oy))."""
    h, w = img.shape[:2]
    f = thumb / float(max(h, w))
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    small = cv2.resize(img, (nw, nh), interpolation=interp)
    cell = np.zeros((thumb, thumb, 3), np.uint8)
    ox, oy = (thumb - nw) // 2, (thumb - nh) // 2
    cell[oy:oy + nh, ox:ox + nw] = small
    return cell, f, (ox, oy)


def _label(cell, text: str) -> None:
    scale = max(0.3, cell.shape[0] / 300.0)
    org = (3, int(14 * scale / 0.45))
    cv2.putText(cell, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(cell, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def sample_indices(n_frames: int, every: int) -> list[int]:
    """The frames a sheet shows: 0, every, 2*every, ..."""
    if every < 1:
        raise UserError("--every must be >= 1")
    return list(range(0, n_frames, every))


def render_sheet(frames, every: int = 10, cols: int = 8, thumb: int = 128, geometry=None,
                 labels: bool = True, names: Optional[list[str]] = None):
    """A contact sheet (RGB uint8) of frames 0, every, 2*every...; see the module doc for its size.

    ``geometry`` = (landmarks, boxes, detected) in frame pixels draws the track on each cell.
    """
    if cols < 1 or thumb < 16:
        raise UserError("--cols must be >= 1 and --thumb >= 16")
    idx = sample_indices(len(frames), every)
    ncol = min(cols, len(idx))
    nrow = math.ceil(len(idx) / ncol)
    sheet = np.zeros((nrow * thumb, ncol * thumb, 3), np.uint8)
    for k, i in enumerate(idx):
        cell, f, (ox, oy) = _cell(frames[i], thumb)
        if geometry is not None and i < len(geometry[1]):
            lm, bx, det = geometry
            colour = _DETECTED if (i < len(det) and det[i]) else _INTERPOLATED
            x1, y1, x2, y2 = bx[i] * f + np.array([ox, oy, ox, oy])
            if np.all(np.isfinite([x1, y1, x2, y2])):
                cv2.rectangle(cell, (round(x1), round(y1)), (round(x2), round(y2)), colour, 1, cv2.LINE_AA)
            for x, y in lm[i] * f + np.array([ox, oy]):
                if np.isfinite(x) and np.isfinite(y):
                    cv2.circle(cell, (round(x), round(y)), max(1, thumb // 64), _LANDMARK, -1, cv2.LINE_AA)
        if labels:
            _label(cell, names[i] if names is not None else str(i))
        r, c = divmod(k, ncol)
        sheet[r * thumb:(r + 1) * thumb, c * thumb:(c + 1) * thumb] = cell
        if c:  # a thin dark grid line between cells
            sheet[r * thumb:(r + 1) * thumb, c * thumb] = 32
        if r:
            sheet[r * thumb, c * thumb:(c + 1) * thumb] = 32
    return sheet


def render_blend_sheet(real, fake, mask, every: int = 10, cols: int = 8, thumb: int = 128):
    """Bands of three rows per ``cols`` samples: real (labelled with frame numbers), fake, mask."""
    idx = sample_indices(len(real), every)
    ncol = min(cols, len(idx))
    bands = []
    for start in range(0, len(idx), ncol):
        chunk = idx[start:start + ncol]
        m = (np.clip(mask[chunk], 0, 1) * 255).astype(np.uint8)
        rows = [render_sheet(real[chunk], 1, ncol, thumb, names=[str(i) for i in chunk]),
                render_sheet(fake[chunk], 1, ncol, thumb, labels=False),
                render_sheet(np.repeat(m[..., None], 3, axis=-1), 1, ncol, thumb, labels=False)]
        band = np.concatenate(rows, axis=0)
        if band.shape[1] < ncol * thumb:
            band = np.pad(band, ((0, 0), (0, ncol * thumb - band.shape[1]), (0, 0)))
        bands.append(band)
    return np.concatenate(bands, axis=0)


def write_png(path: Path, rgb) -> None:
    """Write an RGB image as PNG, atomically."""
    ok, buf = cv2.imencode(".png", rgb[..., ::-1])
    if not ok:
        raise UserError(f"{path}: could not encode the PNG")
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.tobytes())
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({one_line(exc)})") from None


def default_track(tube: Path) -> Optional[Path]:
    """The track beside a tube MP4 (a 2D crops MP4 shares its tube's), if there is one."""
    p = tube.with_suffix(".npz")
    if p.exists():
        return p
    if tube.stem.endswith("_2d"):  # the 2D pathway's crops share the tube's track
        p = tube.with_name(tube.stem[:-3] + ".npz")
        return p if p.exists() else None
    return None


def is_2d(tube: Path, track_path: Path) -> bool:
    """Whether ``tube`` is the 2D crops MP4 of ``track_path``'s tube."""
    return tube.stem.endswith("_2d") and track_path.stem == tube.stem[:-3]
