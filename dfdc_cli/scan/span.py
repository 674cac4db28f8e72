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

SPANS = ("auto", "first", "whole")
DEFAULT_SPAN = "auto"
DEFAULT_WINDOWS = 8
TUBE_ID_STRIDE = 1000

SPAN_HELP = ("Frames read per video: 'first' = the first 100 (the seed's rule); 'whole' = up to --windows "
             "windows of 100 frames spread over the whole video, p(fake) = the highest window's; 'auto' = "
             "'first', and 'whole' for a video with no face in its first 100 frames.")


def check_span(span: str, windows: int) -> str:
    from dfdc_cli.errors import UserError

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


def merge_windows(parts: Sequence[tuple[int, int, object]], total: int, span: str):
    """One :class:`~dfdc_cli.scan.inputs.Extracted` of a video from its windows' extractions
    ``(k, start frame, Extracted)`` (window order): tube ids offset by window, frame numbers made
    absolute, pixels re-keyed, the windows recorded, and the note saying which frames were read."""
    from dfdc_cli.faces.index import STATUS_ERROR, STATUS_NO_FACE, STATUS_OK
    from dfdc_cli.scan.inputs import Extracted, video_key

    from dfdc_cli.faces.extract.params import LOW_THRESHOLDS

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
