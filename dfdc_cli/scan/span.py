"""Which frames of a video `deepfake scan` reads (``--span``), and how its windows become one verdict.

The seed read the first 100 frames of a DFDC clip (10 s, a swap from start to end). A video's
face may appear later, and a swap may cover one minute of an interview only, so:

- ``first``: the seed's rule, the first 100 frames; a video with no face there is NO FACE, with a
  note that only the first frames were read;
- ``whole``: up to ``--windows`` (8) windows of 100 frames spread evenly over the whole video
  (:func:`dfdc_cli.faces.extract.params.window_starts`: the first at frame 0, the last ending at the
  video's end, never overlapping), each extracted with the seed's inference settings;
- ``auto`` (default): ``first``, and for a video with no face there, ``whole`` before saying no
  face. A video with a face in its first 100 frames gets the seed's figures, unchanged.

Work stays bounded: at most ``windows`` x 100 frames are detected and scored, whatever the
length (the frames before a window are decoded and dropped, not detected).

The video's p(fake) over windows (:func:`combine_windows`): the HIGHEST window's p(fake), each
window's figure being the seed's (per member the mean over the window's faces, the weighted mean
over members). A video is fake when some part of it is swapped (DFDC's and a reviewer's
definition), and the mean over windows dilutes a one-window swap below any threshold (1 swapped
window of 8 at 0.9, seven real ones at 0.2: mean 0.29, max 0.9). The price: more windows, more
chances for a real video's noisiest window to cross the threshold; the table's member figures and
the note say which window decided.

A window's tubes keep their tube ids offset by ``window * TUBE_ID_STRIDE`` (window 0: the seed's
ids), so ids are unique within a video and stable across runs (the score cache keys them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from dfdc_cli.errors import UserError

SPANS = ("auto", "first", "whole")
DEFAULT_SPAN = "auto"
DEFAULT_WINDOWS = 8
TUBE_ID_STRIDE = 1000

SPAN_HELP = ("Frames read per video: 'first' = the first 100 (the seed's rule); 'whole' = up to --windows "
             "windows of 100 frames spread over the whole video, p(fake) = the highest window's; 'auto' = "
             "'first', and 'whole' for a video with no face in its first 100 frames.")


def check_span(span: str, windows: int) -> str:
    s = str(span).strip().lower()
    if s not in SPANS:
        raise UserError(f"--span: expected one of {', '.join(SPANS)}, got {span!r}")
    if int(windows) < 1:
        raise UserError("--windows must be >= 1")
    return s


def window_of(tube_id: int) -> int:
    return int(tube_id) // TUBE_ID_STRIDE


@dataclass
class Window:
    """One window of a video as read: where it starts, how many frames were decoded, and what the
    extraction found there."""

    window: int  # k: 0 = the video's first frames
    start_frame: int
    n_frames: int  # frames read (decoded) in this window
    status: str  # ok | no_face | error
    reason: str = ""
    tube_ids: list[int] = field(default_factory=list)

    @property
    def last_frame(self) -> int:
        return self.start_frame + max(self.n_frames, 1) - 1


def frames_read_text(windows: Sequence[Window], total: int = 0) -> str:
    """``frames 0-99 of 1200`` / ``frames 0-99, 157-256, ... of 1200 (8 windows of 100)``."""
    read = [w for w in windows if w.n_frames > 0]
    if not read:
        return "no frames read"
    if len(read) > 3:  # (the JSON's frames_read lists them all; a table note stays short)
        return (f"{len(read)} windows of {read[0].n_frames} frames spread over frames {read[0].start_frame}-"
                f"{read[-1].last_frame}" + (f" of {total}" if total else ""))
    spans = ", ".join(f"{w.start_frame}-{w.last_frame}" for w in read)
    text = f"frames {spans}" + (f" of {total}" if total else "")
    if len(read) > 1:
        text += f" ({len(read)} windows)"
    return text


def combine_windows(window_p: Mapping[int, Optional[float]]) -> tuple[Optional[float], Optional[int]]:
    """(the video's p(fake), the window that gave it) from each window's p(fake) (None: the window
    had no face or no score): the highest one; (None, None) when no window has one. Ties go to the
    earliest window."""
    best: tuple[Optional[float], Optional[int]] = (None, None)
    for k in sorted(window_p):
        p = window_p[k]
        if p is None:
            continue
        if best[0] is None or p > best[0]:
            best = (float(p), k)
    return best
