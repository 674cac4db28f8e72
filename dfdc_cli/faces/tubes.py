"""Face tubes from per-frame detections: the seed's 3D mask / connected-components rule.

Pure numpy/scipy, no I/O. Input: the faces found on every n-th frame (sampled frame ``s`` is source
frame ``s * every``), in SOURCE pixels (displayed orientation). Steps (docs/method.md §1):

1. paint every detected box (clipped to the frame) into a boolean mask (sampled frame, y, x) at
   1/``mask_downscale`` resolution: cells ``floor(x1 / d) .. ceil(x2 / d)`` (end exclusive);
2. an empty sampled frame between two non-empty ones becomes AND(previous, next);
3. label the 3D connected components, full 26-connectivity; one component = one face over time;
4. span of a component = first sampled x n .. (last sampled + 1) x n - 1, clipped to the decoded
   frames; kept if at least ``min_frames`` long, then cut to its first ``max_frames`` frames;
5. union box = bounding box of the component's cells within the kept span, times ``d``, clipped
   to the frame (no margin);
6. tubes ranked by mean detection probability (best detection of the component per sampled frame),
   the best ``max_faces`` kept (0: all).

The faces of a sampled frame are a :class:`~dfdc_cli.faces.index.Faces`. Each tube also gets its
per-frame :class:`~dfdc_cli.faces.index.Track`: the component's best detection
per sampled frame, boxes and landmarks interpolated linearly in between (held before the first
and after the last detection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from dfdc_cli.faces.index import FRAMES_2D, TUBE_SIZE, Track


@dataclass
class Tube:
    tube_id: int
    first_frame: int  # inclusive
    last_frame: int  # inclusive
    box: tuple[int, int, int, int]  # union box x1, y1, x2, y2 (x2/y2 exclusive), source pixels
    mean_prob: float
    max_prob: float
    n_detections: int
    track: Track

    @property
    def n_frames(self) -> int:
        return self.last_frame - self.first_frame + 1


def _cells(box, width: int, height: int, d: int) -> Optional[tuple[int, int, int, int]]:
    """Mask cells (mx1, my1, mx2, my2; end exclusive) covered by a box clipped to the frame."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    x1, x2 = max(x1, 0.0), min(x2, float(width))
    y1, y2 = max(y1, 0.0), min(y2, float(height))
    if x2 <= x1 or y2 <= y1:
        return None
    mw, mh = -(-width // d), -(-height // d)
    mx1, my1 = int(math.floor(x1 / d)), int(math.floor(y1 / d))
    mx2, my2 = min(int(math.ceil(x2 / d)), mw), min(int(math.ceil(y2 / d)), mh)
    if mx2 <= mx1 or my2 <= my1:
        return None
    return mx1, my1, mx2, my2


def build_mask(faces: Sequence, width: int, height: int, mask_downscale: int = 4) -> np.ndarray:
    """Boolean mask (sampled frames, ceil(H / d), ceil(W / d)) with every detected box painted."""
    d = int(mask_downscale)
    mask = np.zeros((len(faces), -(-height // d), -(-width // d)), bool)
    for s, ff in enumerate(faces):
        for box in np.asarray(ff.boxes).reshape(-1, 4):
            c = _cells(box, width, height, d)
            if c is not None:
                mx1, my1, mx2, my2 = c
                mask[s, my1:my2, mx1:mx2] = True
    return mask


def fill_gaps(mask: np.ndarray) -> np.ndarray:
    """A copy where every empty sampled frame between two non-empty ones is AND(prev, next)."""
    out = mask.copy()
    nonempty = mask.reshape(mask.shape[0], -1).any(1)
    for s in range(1, mask.shape[0] - 1):
        if not nonempty[s] and nonempty[s - 1] and nonempty[s + 1]:
            out[s] = mask[s - 1] & mask[s + 1]
    return out


def find_tubes(
    faces: Sequence,
    every: int,
    n_frames: int,
    width: int,
    height: int,
    mask_downscale: int = 4,
    min_frames: int = 30,
    max_frames: int = 100,
    max_faces: int = 5,
    windows: bool = False,
) -> list[Tube]:
    """Face tubes of one video. ``faces[s]`` are the detections (boxes, probs, landmarks in source
    pixels) of source frame ``s * every``; ``n_frames`` is the number of decoded frames.

    ``windows``: a component longer than ``max_frames`` gives consecutive windows of
    ``max_frames`` frames (the last one kept if at least ``min_frames`` long), each a tube with
    its own union box and track, instead of its first window only. Faces are ranked (and
    ``max_faces`` counts them) by their first window, so the first window of each face is the
    tube the seed's rule gives; a face's windows follow each other in the tube ids."""
    every, d = int(every), int(mask_downscale)
    if every < 1 or d < 1:
        raise ValueError("every and mask_downscale must be >= 1")
    if len(faces) == 0 or n_frames <= 0:
        return []
    mask = fill_gaps(build_mask(faces, width, height, d))
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []

    # Which component each detection belongs to, and the best detection per (component, sample).
    best: dict[int, dict[int, tuple[float, np.ndarray, np.ndarray]]] = {}
    for s, ff in enumerate(faces):
        boxes = np.asarray(ff.boxes, np.float32).reshape(-1, 4)
        probs = np.asarray(ff.probs, np.float32).reshape(-1)
        marks = np.asarray(ff.landmarks, np.float32).reshape(-1, 5, 2) if len(boxes) else np.zeros((0, 5, 2))
        for j in range(len(boxes)):
            c = _cells(boxes[j], width, height, d)
            if c is None:
                continue
            mx1, my1, mx2, my2 = c
            lab = int(labels[s, my1:my2, mx1:mx2].max())
            p = float(probs[j]) if j < len(probs) else float("nan")
            cur = best.setdefault(lab, {}).get(s)
            if cur is None or p > cur[0]:
                best[lab][s] = (p, boxes[j], marks[j])

    faces_out: list[list[Tube]] = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        s0, s1 = sl[0].start, sl[0].stop  # sampled frames [s0, s1)
        first = s0 * every
        end = min(s1 * every - 1, n_frames - 1)  # the component's whole span, inclusive
        if end - first + 1 < min_frames:
            continue
        cap = int(max_frames) if max_frames and max_frames > 0 else 0
        starts = range(first, end + 1, cap) if (windows and cap) else [first]
        wins = []
        for k, w0 in enumerate(starts):
            w1 = min(end, w0 + cap - 1) if cap else end
            if k and w1 - w0 + 1 < min_frames:
                break
            t = _window_tube(labels, lab, best.get(lab, {}), every, w0, w1, s1, width, height, d)
            if t is None:
                if not k:
                    break  # the seed's rule: a face without detections in its span is no tube
                continue
            wins.append(t)
        if wins:
            faces_out.append(wins)
    faces_out.sort(key=lambda ws: (-ws[0].mean_prob, ws[0].first_frame, ws[0].box))
    if max_faces and max_faces > 0:
        faces_out = faces_out[: int(max_faces)]
    tubes = [t for ws in faces_out for t in ws]
    for i, t in enumerate(tubes):
        t.tube_id = i
    return tubes


def _window_tube(labels, lab: int, best: dict, every: int, first: int, last: int, s1: int, width: int, height: int, d: int) -> Optional[Tube]:
    """The tube of component ``lab`` over frames first..last: union box of its cells on the
    sampled frames inside the window, track and probabilities of its detections there."""
    s_first = -(-first // every)  # first sampled frame inside the window
    s_end = min(s1 - 1, last // every)  # last sampled frame inside the window
    if s_end < s_first:
        return None
    comp = labels[s_first : s_end + 1] == lab
    ys = np.nonzero(comp.any(axis=(0, 2)))[0]
    xs = np.nonzero(comp.any(axis=(0, 1)))[0]
    if not len(ys):
        return None
    box = (
        int(min(xs[0] * d, width)),
        int(min(ys[0] * d, height)),
        int(min((xs[-1] + 1) * d, width)),
        int(min((ys[-1] + 1) * d, height)),
    )
    dets = {s: v for s, v in best.items() if s_first <= s <= s_end}
    if not dets:
        return None
    probs = np.array([v[0] for v in dets.values()], np.float64)
    return Tube(
        tube_id=-1,
        first_frame=first,
        last_frame=last,
        box=box,
        mean_prob=float(np.nanmean(probs)) if np.isfinite(probs).any() else 0.0,
        max_prob=float(np.nanmax(probs)) if np.isfinite(probs).any() else 0.0,
        n_detections=len(dets),
        track=_track(dets, every, first, last, box),
    )


def _track(dets: dict, every: int, first: int, last: int, box) -> Track:
    frames = np.arange(first, last + 1, dtype=np.int64)
    ss = sorted(dets)
    at = np.array([s * every for s in ss], np.float64)
    bx = np.stack([dets[s][1] for s in ss]).astype(np.float64)  # (m, 4)
    lm = np.stack([dets[s][2] for s in ss]).astype(np.float64).reshape(len(ss), 10)
    boxes = np.stack([np.interp(frames, at, bx[:, k]) for k in range(4)], 1).astype(np.float32)
    marks = np.stack([np.interp(frames, at, lm[:, k]) for k in range(10)], 1).astype(np.float32).reshape(-1, 5, 2)
    probs = np.full(len(frames), np.nan, np.float32)
    detected = np.zeros(len(frames), bool)
    for s in ss:
        i = s * every - first
        if 0 <= i < len(frames):
            probs[i] = dets[s][0]
            detected[i] = True
    return Track(
        frames=frames,
        boxes=boxes,
        landmarks=marks,
        probs=probs,
        detected=detected,
        crop_box=np.asarray(box, np.int64),
        size=TUBE_SIZE,
    )


def box_2d_crops(track: Track, n: int = FRAMES_2D, scale: float = 1.2, q: float = 90.0) -> np.ndarray:
    """The 2D pathway's square crop boxes (n', 4) float for the first ``n`` frames of a track:
    side = ``scale`` x the ``q``-th percentile of the track's box size (max of width and height,
    over its detected frames), centred on the (interpolated) box centre."""
    boxes = np.asarray(track.boxes, np.float64)[:n]
    det = np.asarray(track.detected, bool)
    ref = np.asarray(track.boxes, np.float64)[det] if det.any() else np.asarray(track.boxes, np.float64)
    sizes = np.maximum(ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1])
    side = float(scale * np.percentile(sizes, q))
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


# ----------------------------------------------------------------------------- tube helpers
def track_tube_geometry(track) -> tuple[np.ndarray, np.ndarray]:
    """A :class:`dfdc_cli.faces.index.Track`'s landmarks (n, 5, 2) and boxes (n, 4) in tube pixels."""
    lm = track.to_tube_coords(np.asarray(track.landmarks, np.float32).reshape(-1, 5, 2))
    bx = track.to_tube_coords(np.asarray(track.boxes, np.float32).reshape(-1, 2, 2)).reshape(-1, 4)
    return lm.astype(np.float32), bx.astype(np.float32)


def track_2d_geometry(track, n: int = FRAMES_2D, size: int = TUBE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (n', 5, 2) and boxes (n', 4) in the pixels of the 2D pathway's crops
    (``<stem>_2d.mp4``: the first ``n`` frames, square crops of ``tubes.box_2d_crops``, ``size`` px)."""
    crops = box_2d_crops(track, n)
    k = len(crops)
    side = (crops[:, 2] - crops[:, 0]).astype(np.float64)
    f = (size / np.maximum(side, 1e-6))[:, None, None]
    org = crops[:, None, :2]
    lm = (np.asarray(track.landmarks, np.float64)[:k].reshape(k, 5, 2) - org) * f
    bx = (np.asarray(track.boxes, np.float64)[:k].reshape(k, 2, 2) - org) * f
    return lm.astype(np.float32), bx.reshape(k, 4).astype(np.float32)
