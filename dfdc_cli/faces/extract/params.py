"""What the extractor does: its parameters, the seed's presets, its fallbacks.

Open this module to change a threshold: the MTCNN P/R/O-Net thresholds, pyramid factor and minimum
face size (:class:`ExtractParams`, defaults = the seed's training-time numbers), the two presets
`--preset train|scan` (:data:`PRESETS`), the fallbacks of a video without a tube
(:func:`fallback_attempts`). Why these numbers: docs/method.md §1.

Every field of :class:`ExtractParams` is part of the store key (:meth:`ExtractParams.key`): a
change gives a new store entry, never a stale one. Bump :data:`EXTRACTOR_VERSION` when the
extractor's output changes for the same parameters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Optional

from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import FRAMES_2D, TUBE_SIZE

# Bump when the extractor's output changes for the same parameters (invalidates cache entries).
EXTRACTOR_VERSION = 2  # 2: the 3D square-and-resize truncates as the seed did
# The seed's last fallback: lower MTCNN thresholds, keeping the one most confident face.
FALLBACK_THRESHOLDS = (0.5, 0.5, 0.5)


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
    # (k, K): instead of the first frames, the k-th of the windows of first_frames frames spread
    # over the whole video (:func:`window_starts`); (0, 1): the start, the seed's rule
    span_window: tuple[int, int] = (0, 1)
    fallbacks: bool = False  # no tube: retry at 2x resolution, then thresholds 0.5 keeping 1 face
    with_2d: bool = False  # also write the 2D pathway's crops (<stem>_2d.mp4)
    frames_2d: int = FRAMES_2D  # 2D crops of the first N frames of each tube (scan: 32; training a frame model: more)
    size: int = TUBE_SIZE  # tube side
    crf: int = 23  # H.264 quality of the tube MP4s

    def __post_init__(self):
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "span_window", tuple(int(v) for v in self.span_window))
        errors = []
        k, n = self.span_window
        if not 0 <= k < n:
            errors.append("span_window must be (k, K) with 0 <= k < K")
        if n > 1 and not self.first_frames:
            errors.append("span_window needs first_frames (the window length)")
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
        if self.span_window == (0, 1):
            del d["span_window"]  # (the seed's rule: left out, so the store keys stay what they were)
        else:
            d["span_window"] = list(self.span_window)
        return d

    def start_frame(self, n_frames: int) -> int:
        """Where this extraction starts reading in a video of ``n_frames`` frames (0 but for a
        span window); a window past the video's windows is a VideoError."""
        k, n = self.span_window
        if n == 1:
            return 0
        starts = window_starts(n_frames, int(self.first_frames or 0), n)
        if k >= len(starts):
            from dfdc_cli.errors import VideoError

            raise VideoError(f"window {k + 1} of {n}: the video has only {len(starts)} windows of "
                             f"{self.first_frames} frames ({n_frames} frames)")
        return starts[k]

    def key(self) -> str:
        """Short hash of the output-affecting parameters (and the extractor version)."""
        d = self.to_dict()
        if not d["windows"]:
            del d["windows"]  # added later: the store keys of the seed's rule stay what they were
        if d["frames_2d"] == FRAMES_2D:  # (the default is left out, so caches made before the option stay valid)
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


def window_starts(n_frames: int, length: int, most: int) -> list[int]:
    """First frames of at most ``most`` windows of ``length`` frames spread evenly over a video of
    ``n_frames`` frames: the first at 0, the last ending at the video's end, never overlapping
    (fewer windows when the video is short: a 300-frame video gives 0, 100, 200 for 3 or more)."""
    if length <= 0 or n_frames <= length or most <= 1:
        return [0]
    m = max(1, min(most, n_frames // length))
    if m == 1:
        return [0]
    return [int(round(i * (n_frames - length) / (m - 1))) for i in range(m)]


def params_for(preset: Optional[str] = None, **changes) -> ExtractParams:
    """A preset's parameters (None: :data:`DEFAULT_PARAMS`) with ``changes`` (those None left
    out). An explicit ``scale`` wins over the preset's ``long_side``; ``long_side=0`` clears it."""
    if preset is None:
        params = DEFAULT_PARAMS
    else:
        key = preset.strip().lower()
        if key not in PRESETS:
            raise UserError(f"--preset: unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
        params = PRESETS[key]
    changes = {k: v for k, v in changes.items() if v is not None}
    if "long_side" in changes:
        changes["long_side"] = changes["long_side"] if changes["long_side"] > 0 else None
    elif "scale" in changes:
        changes["long_side"] = None
    return params.replace(**changes)


# The last fallback's stage: its "faces" may be none (it finds some in noise and cartoons), so scan
# gives such a video no plain verdict (dfdc_cli.scan.ensemble, weak).
LOW_THRESHOLDS = "low_thresholds"


def fallback_attempts(params: ExtractParams):
    """The seed's fallbacks, in order: (stage, detection size multiplier, thresholds, max_faces)."""
    return (("2x", 2.0, params.thresholds, params.max_faces), (LOW_THRESHOLDS, 1.0, FALLBACK_THRESHOLDS, 1))


def fallback_note(stage: str) -> str:
    """The note a video found by a fallback carries in its reason (result.json, videos.csv)."""
    return f"found by fallback ({stage})"


def fallback_stage(reason: str) -> str:
    """The fallback stage a reason names ("" when none): the index keeps it only in the reason."""
    m = re.search(r"found by fallback \((\w+)\)", reason or "")
    return m.group(1) if m else ""

