"""Self-blended face tubes: fakes made from real faces only.

After Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images" (CVPR 2022): a face is
blended with a slightly transformed copy of itself (colour, sharpness, a small scale and shift)
through a soft mask around the face. The result carries the artefacts common to face swaps (a
blending boundary, colour/statistics and resampling inconsistencies between the inner face and its
surroundings) without the fingerprint of any one manipulation method.

This module brings the idea to face *tubes*, temporally consistent:

- every random choice (mask shape and deformation, blur, blend ratio, colour/sharpness/geometry
  transform) is drawn ONCE per tube, so the whole tube gets the same "manipulation";
- the mask follows the face: for each frame, a canonical face outline is mapped into the frame by the
  similarity transform that fits that frame's five MTCNN landmarks (eyes, nose, mouth corners) to a
  canonical 5-point face, its scale kept consistent with the frame's box (the box alone is used where
  the landmarks are missing);
- optional small per-frame jitter (temporally smoothed) of the shift and the blend ratio imitates the
  frame-to-frame instability of real swaps.

The transformed copy is only ever used INSIDE the mask: ``fake = frame + mask * (source - frame)``,
so a pixel where the mask is 0 is exactly the original pixel.

Public API (the trainer's dataset and ``deepfake extract --self-blend`` call these):

- :class:`SelfBlendParams` (``SelfBlendParams.from_dict(recipe_section)``)
- :func:`blend_clip` (frames, landmarks, boxes in tube pixels) -> (fake, mask)
- :func:`track_tube_geometry` (Track -> landmarks, boxes in tube pixels)
- :func:`self_blend_tube` (tube MP4 + track -> self-blended MP4 + track copy + stats)
"""

from __future__ import annotations

import json
import math
import shutil
import tomllib
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

import av
import cv2
import numpy as np

from dfdc_cli.atomic import atomic_path
from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import Track, TubeRecord
from dfdc_cli.faces.tubes import track_tube_geometry

# The canonical five points (left eye, right eye, nose, left and right mouth corner) in a unit face
# frame whose x and y run 0..1 over a tight face crop (the widely used 112-px alignment template / 112).
_TEMPLATE = np.array(
    [[0.3419, 0.4616], [0.6565, 0.4598], [0.5002, 0.6405], [0.3710, 0.8247], [0.6319, 0.8232]],
    dtype=np.float64,
)
# The MTCNN box in template units (measured on MTCNN detections of frontal faces): it spans about
# x 0.135..0.865 and y 0.0..0.9 (hairline to chin).
_BOX_WIDTH_UNITS = 0.73
_BOX_CENTRE_UNITS = complex(0.5, 0.45)

# Mask outlines in the unit face frame: (centre x, centre y, half width, top reach, bottom reach).
# "face": brows to chin; "forehead": up to the hairline; "inner": eyes, nose and mouth only.
_SHAPES: dict[str, tuple[float, float, float, float, float]] = {
    "face": (0.50, 0.56, 0.36, 0.26, 0.42),
    "forehead": (0.50, 0.56, 0.37, 0.48, 0.42),
    "inner": (0.50, 0.63, 0.30, 0.29, 0.27),
}
_N_VERTICES = 72
_QUALITY_OPS = ("none", "blur", "sharpen", "downscale")


def _pair(v: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in v)
    except (TypeError, ValueError):
        raise UserError(f"self-blend parameter {name}: expected [low, high], got {v!r}") from None
    if lo > hi:
        raise UserError(f"self-blend parameter {name}: low {lo} > high {hi}")
    return (lo, hi)


@dataclass
class SelfBlendParams:
    """Random ranges of the self-blend generator; each ``(low, high)`` is drawn uniformly per tube.

    Sizes are fractions of the face size (the median box side over the tube) unless said otherwise,
    so the same parameters work at any tube resolution.
    """

    # Blend: mask peak value. With probability full_blend_prob the ratio is 1 (hard swap), else
    # uniform in blend_ratio.
    blend_ratio: tuple[float, float] = (0.25, 1.0)
    full_blend_prob: float = 0.5
    # Mask: outline shape probabilities (face = brows..chin, forehead = hairline..chin, inner =
    # eyes..mouth), growth (+ dilation / - erosion, fraction of the outline's radius), random
    # low-frequency deformation of the outline (amplitude, fraction of radius), Gaussian blur sigma.
    shape_probs: dict[str, float] = field(
        default_factory=lambda: {"face": 0.5, "forehead": 0.25, "inner": 0.25}
    )
    mask_grow: tuple[float, float] = (-0.1, 0.1)
    mask_deform: float = 0.08
    mask_blur: tuple[float, float] = (0.015, 0.06)
    # Colour of the transformed copy: each op applied with probability colour_prob.
    colour_prob: float = 0.5
    rgb_shift: float = 12.0  # max per-channel shift, 0..255 units
    hue_shift: float = 6.0  # max hue rotation, degrees
    saturation: float = 0.15  # max relative saturation change
    brightness: float = 0.06  # max brightness shift, fraction of 255
    contrast: float = 0.12  # max relative contrast change
    # Sharpness of the transformed copy: one of none / Gaussian blur / unsharp mask / down-up scaling.
    quality_probs: dict[str, float] = field(
        default_factory=lambda: {"none": 0.25, "blur": 0.25, "sharpen": 0.25, "downscale": 0.25}
    )
    blur_sigma: tuple[float, float] = (0.4, 1.2)  # pixels of a 256-px tube frame
    sharpen_amount: tuple[float, float] = (0.3, 1.0)
    downscale: tuple[float, float] = (0.5, 0.85)
    # Geometry of the transformed copy, about the face centre.
    scale: tuple[float, float] = (0.95, 1.05)
    shift: float = 0.025  # max shift, fraction of the face size
    # Per-frame jitter (std of temporally smoothed noise): shift (fraction of face size), ratio.
    shift_jitter: float = 0.004
    ratio_jitter: float = 0.02
    jitter_smooth: float = 2.0  # Gaussian smoothing of the jitter over time, frames

    # ------------------------------------------------------------------ construction / checks
    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("shape_probs", "quality_probs"):
                allowed = set(_SHAPES) if f.name == "shape_probs" else set(_QUALITY_OPS)
                if not isinstance(v, dict) or not v:
                    raise UserError(f"self-blend parameter {f.name}: expected a table, got {v!r}")
                bad = set(v) - allowed
                if bad:
                    raise UserError(
                        f"self-blend parameter {f.name}: unknown {sorted(bad)}; known: {sorted(allowed)}"
                    )
                probs = {k: float(p) for k, p in v.items()}
                if any(p < 0 for p in probs.values()) or sum(probs.values()) <= 0:
                    raise UserError(f"self-blend parameter {f.name}: probabilities must be >= 0, sum > 0")
                setattr(self, f.name, probs)
            elif isinstance(f.default, tuple):
                setattr(self, f.name, _pair(v, f.name))
            else:
                try:
                    setattr(self, f.name, float(v))
                except (TypeError, ValueError):
                    raise UserError(f"self-blend parameter {f.name}: expected a number, got {v!r}") from None
        lo, hi = self.blend_ratio
        if not (0.0 < lo <= hi <= 1.0):
            raise UserError(f"self-blend parameter blend_ratio must lie in (0, 1], got {self.blend_ratio}")
        for name in ("full_blend_prob", "colour_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"self-blend parameter {name} must lie in [0, 1]")
        if self.mask_grow[0] <= -0.8:
            raise UserError("self-blend parameter mask_grow: erosion below -0.8 leaves no mask")
        if self.mask_blur[0] < 0 or self.scale[0] <= 0 or self.downscale[0] <= 0 or self.downscale[1] > 1:
            raise UserError("self-blend parameters: mask_blur >= 0, scale > 0, downscale in (0, 1]")
        for name in ("mask_deform", "rgb_shift", "hue_shift", "saturation", "brightness", "contrast",
                     "shift", "shift_jitter", "ratio_jitter", "jitter_smooth"):
            if getattr(self, name) < 0:
                raise UserError(f"self-blend parameter {name} must be >= 0")

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "SelfBlendParams":
        """Build from a recipe table; unknown keys are an error (a typo must not pass silently)."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(
                f"unknown self-blend parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain types (lists for ranges), e.g. for saving a resolved recipe as TOML/JSON."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------- the plan
@dataclass
class BlendPlan:
    """The random choices for one tube (drawn once), plus the per-frame jitter."""

    shape: str
    radial: np.ndarray  # (_N_VERTICES,) multiplicative radius of the outline (growth + deformation)
    blur: float  # mask blur sigma, fraction of face size
    ratio: float
    rgb: Optional[np.ndarray]  # (3,) shift or None
    hue: Optional[float]
    sat: Optional[float]
    bright: Optional[float]
    contrast: Optional[float]
    quality: str
    quality_value: float
    scale: float
    shift: np.ndarray  # (2,) fraction of face size
    shift_jitter: np.ndarray  # (T, 2)
    ratio_jitter: np.ndarray  # (T,)

    def summary(self) -> dict:
        return {
            "shape": self.shape, "blur": round(self.blur, 4), "ratio": round(self.ratio, 4),
            "rgb_shift": None if self.rgb is None else [round(float(v), 2) for v in self.rgb],
            "hue": self.hue, "saturation": self.sat, "brightness": self.bright, "contrast": self.contrast,
            "quality": self.quality, "quality_value": round(self.quality_value, 4),
            "scale": round(self.scale, 4), "shift": [round(float(v), 4) for v in self.shift],
        }


def _choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = sorted(probs)
    p = np.array([probs[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _smooth_noise(rng: np.random.Generator, t: int, dims: int, std: float, sigma: float) -> np.ndarray:
    noise = rng.standard_normal((t, dims))
    if std <= 0:
        return np.zeros((t, dims))
    if sigma > 0 and t > 1:
        from scipy.ndimage import gaussian_filter1d

        noise = gaussian_filter1d(noise, sigma, axis=0, mode="nearest")
        sd = noise.std(axis=0, keepdims=True) if t > 2 else 1.0
        noise = noise / np.maximum(sd, 1e-6)
    return noise * std


def sample_plan(params: SelfBlendParams, rng: np.random.Generator, n_frames: int) -> BlendPlan:
    """Draw one tube's random choices. The draw order is fixed, so a seed fixes the tube."""
    p = params
    u = rng.uniform
    shape = _choice(rng, p.shape_probs)
    theta = np.linspace(0, 2 * np.pi, _N_VERTICES, endpoint=False)
    wobble = np.zeros_like(theta)
    for k in range(2, 6):  # low-frequency outline deformation
        a, b = rng.standard_normal(2) / k
        wobble += a * np.cos(k * theta) + b * np.sin(k * theta)
    wobble /= max(np.abs(wobble).max(), 1e-6)
    radial = 1.0 + u(*p.mask_grow) + p.mask_deform * wobble
    blur = u(*p.mask_blur)
    ratio = 1.0 if rng.random() < p.full_blend_prob else u(*p.blend_ratio)

    def maybe(draw):
        return draw() if rng.random() < p.colour_prob else None

    rgb = maybe(lambda: u(-p.rgb_shift, p.rgb_shift, 3))
    hue = maybe(lambda: float(u(-p.hue_shift, p.hue_shift)))
    sat = maybe(lambda: float(u(-p.saturation, p.saturation)))
    bright = maybe(lambda: float(u(-p.brightness, p.brightness)))
    contrast = maybe(lambda: float(u(-p.contrast, p.contrast)))
    quality = _choice(rng, p.quality_probs)
    qrange = {"none": (0.0, 0.0), "blur": p.blur_sigma, "sharpen": p.sharpen_amount,
              "downscale": p.downscale}[quality]
    quality_value = float(u(*qrange))
    scale = float(u(*p.scale))
    shift = u(-p.shift, p.shift, 2)
    if all(v is None for v in (rgb, hue, sat, bright, contrast)) and quality == "none":
        # Never a no-op: without any transform the "fake" would equal the real frame.
        rgb = u(-p.rgb_shift, p.rgb_shift, 3) if p.rgb_shift > 0 else None
        if rgb is None:
            bright = float(u(-p.brightness, p.brightness)) if p.brightness > 0 else None
    shift_j = _smooth_noise(rng, n_frames, 2, p.shift_jitter, p.jitter_smooth)
    ratio_j = _smooth_noise(rng, n_frames, 1, p.ratio_jitter, p.jitter_smooth)[:, 0]
    return BlendPlan(shape, radial, float(blur), float(ratio), rgb, hue, sat, bright, contrast, quality,
                     quality_value, scale, shift, shift_j, ratio_j)


# ------------------------------------------------------------------------------- geometry
def _face_frames(landmarks: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame similarity (unit face frame -> pixels) as complex numbers: z = a * w + b."""
    t = len(boxes)
    tpl = _TEMPLATE[:, 0] + 1j * _TEMPLATE[:, 1]
    tpl_c = tpl - tpl.mean()
    a = np.empty(t, np.complex128)
    b = np.empty(t, np.complex128)
    for i in range(t):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        box_ok = bool(np.all(np.isfinite(boxes[i])))
        s_box = max(x2 - x1, 1.0) / _BOX_WIDTH_UNITS if box_ok else math.nan
        lm = landmarks[i] if landmarks is not None else None
        if lm is not None and np.all(np.isfinite(lm)):
            z = lm[:, 0].astype(np.float64) + 1j * lm[:, 1].astype(np.float64)
            zc = z - z.mean()
            ai = np.sum(np.conj(tpl_c) * zc) / np.sum(np.abs(tpl_c) ** 2)
            s = abs(ai)
            if not np.isfinite(s) or s < 1e-6:
                ai = complex(s_box)
            elif box_ok:  # keep the landmark scale within reason of the box (profile faces squash the fit)
                ai = ai / s * float(np.clip(s, 0.75 * s_box, 1.35 * s_box))
            b[i] = z.mean() - ai * tpl.mean()
        else:
            ai = complex(s_box)
            b[i] = complex((x1 + x2) / 2, (y1 + y2) / 2) - ai * _BOX_CENTRE_UNITS
        a[i] = ai
    return a, b


def _outline(shape: str, radial: np.ndarray) -> np.ndarray:
    """Outline vertices (complex) in the unit face frame, radially scaled by ``radial``."""
    cx, cy, hw, top, bottom = _SHAPES[shape]
    theta = np.linspace(0, 2 * np.pi, len(radial), endpoint=False)
    dx = hw * np.cos(theta)
    dy = np.where(np.sin(theta) > 0, bottom, top) * np.sin(theta)  # image y grows downwards
    return complex(cx, cy) + radial * (dx + 1j * dy)


def _rasterise(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    shift_bits = 4
    pts = np.stack([poly.real, poly.imag], axis=1) * (1 << shift_bits)
    pts = np.clip(np.round(pts), -(1 << 28), 1 << 28).astype(np.int32)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [pts], 255, lineType=cv2.LINE_AA, shift=shift_bits)
    return m.astype(np.float32) / 255.0


def _gauss(img: np.ndarray, sigma: float, border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    if sigma < 0.15:
        return img
    k = int(math.ceil(3.0 * sigma)) * 2 + 1  # finite support: the mask stays compact
    return cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=border)


# ------------------------------------------------------------------------------ transforms
def _colour(img: np.ndarray, plan: BlendPlan) -> np.ndarray:
    """img float32 RGB 0..255 -> colour-transformed copy (same op for every frame of the tube)."""
    out = img
    if plan.rgb is not None:
        out = out + plan.rgb.astype(np.float32)
    if plan.hue is not None or plan.sat is not None:
        hsv = cv2.cvtColor(np.clip(out, 0, 255) / 255.0, cv2.COLOR_RGB2HSV)
        if plan.hue is not None:
            hsv[..., 0] = np.mod(hsv[..., 0] + plan.hue, 360.0)
        if plan.sat is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * (1.0 + plan.sat), 0.0, 1.0)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    if plan.contrast is not None:
        out = (out - 128.0) * (1.0 + plan.contrast) + 128.0
    if plan.bright is not None:
        out = out + 255.0 * plan.bright
    return out


def _quality(img: np.ndarray, plan: BlendPlan, px_scale: float) -> np.ndarray:
    q, v = plan.quality, plan.quality_value
    if q == "blur":
        return _gauss(img, v * px_scale)
    if q == "sharpen":
        return img + v * (img - _gauss(img, 1.0 * px_scale))
    if q == "downscale":
        h, w = img.shape[:2]
        small = cv2.resize(img, (max(2, round(w * v)), max(2, round(h * v))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return img


# -------------------------------------------------------------------------------- blend_clip
def blend_clip(
    frames: np.ndarray,
    landmarks: Optional[np.ndarray],
    boxes: np.ndarray,
    params: Optional[SelfBlendParams],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Self-blend a clip of one face.

    frames uint8 (T, H, W, 3) RGB; landmarks float (T, 5, 2) and boxes float (T, 4) x1 y1 x2 y2, both in
    the frames' pixels (NaN landmarks: the box alone places the mask). Returns the fake, uint8
    (T, H, W, 3), and the blend mask, float32 (T, H, W) in [0, 1]; ``fake == frames`` wherever the
    mask is 0. All random choices come from ``rng`` and are drawn once for the clip.
    """
    params = params or SelfBlendParams()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    t, h, w = frames.shape[:3]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != t:
        raise ValueError(f"{t} frames but {len(boxes)} boxes")
    if landmarks is not None:
        landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
        if len(landmarks) != t:
            raise ValueError(f"{t} frames but {len(landmarks)} landmark sets")

    plan = sample_plan(params, rng, t)
    a, b = _face_frames(landmarks, boxes)
    face_px = np.abs(a) * _BOX_WIDTH_UNITS  # face size (box width) in pixels, per frame
    ok = np.isfinite(face_px)
    face_ref = float(np.median(face_px[ok])) if ok.any() else 1.0
    px_scale = max(h, w) / 256.0  # pixel-sized parameters are given for a 256-px tube
    outline = _outline(plan.shape, plan.radial)
    centre_unit = complex(0.5, 0.6)  # between the eyes and the mouth

    fake = frames.copy()
    masks = np.zeros((t, h, w), np.float32)
    mask_sigma = plan.blur * face_ref
    mask_pad = int(math.ceil(3.0 * mask_sigma)) + 2  # the blurred mask's reach beyond the outline
    src_pad = int(math.ceil(8.0 * px_scale)) + 2  # context for the source's blur/sharpen/resampling
    for i in range(t):
        # Work in the region of interest: the outline's bounding box plus the blur's reach.
        if not ok[i]:
            continue  # neither landmarks nor a box for this frame: nothing to place a mask by
        poly = a[i] * outline + b[i]
        x0 = max(0, int(math.floor(poly.real.min())) - mask_pad)
        y0 = max(0, int(math.floor(poly.imag.min())) - mask_pad)
        x1 = min(w, int(math.ceil(poly.real.max())) + mask_pad + 1)
        y1 = min(h, int(math.ceil(poly.imag.max())) + mask_pad + 1)
        if x1 <= x0 or y1 <= y0:
            continue  # the face left the frame: nothing to blend
        # The mask: this frame's outline, blurred, scaled by the blend ratio.
        mask = _rasterise(poly - complex(x0, y0), y1 - y0, x1 - x0)
        mask = _gauss(mask, mask_sigma, cv2.BORDER_CONSTANT)
        mask *= float(np.clip(plan.ratio + plan.ratio_jitter[i], 0.05, 1.0))
        masks[i, y0:y1, x0:x1] = mask
        nz = mask > 0
        if not nz.any():
            continue
        # The source: the frame scaled/shifted about the face centre, colour- and sharpness-changed
        # (computed on the region plus some context only).
        sx0, sy0 = max(0, x0 - src_pad), max(0, y0 - src_pad)
        sx1, sy1 = min(w, x1 + src_pad), min(h, y1 + src_pad)
        c = a[i] * centre_unit + b[i]
        d = (plan.shift + plan.shift_jitter[i]) * face_px[i]
        sc = plan.scale
        m = np.array([[sc, 0.0, (1 - sc) * c.real + d[0] - sx0],
                      [0.0, sc, (1 - sc) * c.imag + d[1] - sy0]], np.float64)
        src = cv2.warpAffine(frames[i], m, (sx1 - sx0, sy1 - sy0), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        src = _quality(_colour(src, plan), plan, px_scale)
        src = np.clip(src[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0], 0, 255)
        img = frames[i, y0:y1, x0:x1].astype(np.float32)
        out = img + mask[..., None] * (src - img)
        fake[i, y0:y1, x0:x1][nz] = np.rint(out[nz]).astype(np.uint8)
    return fake, masks


def _video_fps(path: Path) -> float:
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 30.0


def self_blend_tube(
    tube_path: str | Path,
    track_path: str | Path,
    out_path: str | Path,
    params: Optional[SelfBlendParams] = None,
    seed: int = 0,
) -> dict:
    """Write a self-blended copy of a tube: ``out_path`` (MP4, same fps) and a copy of the track
    beside it (``out_path`` with suffix ``.npz``), both atomically.

    Returns stats: frames, seed, the plan (shape, ratio, transforms), the mean mask value and the
    mean fraction of the frame where the mask is > 0.5 x ratio ("area").
    """
    from dfdc_cli.faces.video import read_video, write_video

    tube_path, track_path, out_path = Path(tube_path), Path(track_path), Path(out_path)
    frames = read_video(tube_path)
    track = Track.load(track_path)
    lm, bx = track_tube_geometry(track)
    # Map the track into the decoded frames' pixels (tracks are made for `track.size` px tubes).
    h, w = frames.shape[1:3]
    sx, sy = w / float(track.size), h / float(track.size)
    lm = lm * np.array([sx, sy], np.float32)
    bx = bx * np.array([sx, sy, sx, sy], np.float32)
    n = min(len(frames), len(bx))
    if n == 0:
        raise ValueError(f"{tube_path}: empty tube or track")
    frames, lm, bx = frames[:n], lm[:n], bx[:n]
    params = params or SelfBlendParams()
    rng = np.random.default_rng(seed)
    plan_rng = np.random.default_rng(seed)  # same stream: the summary is the plan blend_clip used
    plan = sample_plan(params, plan_rng, n)
    fake, mask = blend_clip(frames, lm, bx, params, rng)
    fps = _video_fps(tube_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        write_video(tmp, fake, fps)
    track_out = out_path.with_suffix(".npz")
    if track_out.resolve() != track_path.resolve():
        with atomic_path(track_out) as tmp:
            shutil.copyfile(track_path, tmp)
    peak = max(plan.ratio, 1e-6)
    return {
        "tube_path": str(out_path),
        "track_path": str(track_out),
        "source": str(tube_path),
        "seed": int(seed),
        "n_frames": int(n),
        "mask_mean": float(mask.mean()),
        "mask_area": float((mask > 0.5 * peak).mean()),
        "mask_max": float(mask.max()),
        **plan.summary(),
    }


def tube_seed(seed: int, tube_path: str | Path) -> int:
    """A per-tube seed derived from a global seed and the tube's file name (stable across runs)."""
    p = Path(tube_path)
    tag = zlib.crc32(f"{p.parent.name}/{p.name}".encode())
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, tag]).generate_state(1)[0])


def self_blend_records(
    tubes: list,
    out_dir: str | Path,
    params: Optional[SelfBlendParams] = None,
    seed: int = 0,
    only_real: bool = True,
    on_done=None,
) -> list:
    """Self-blended fakes of an index's REAL tubes, written under ``out_dir``, as new index rows.

    ``tubes``: :class:`~dfdc_cli.faces.index.TubeRecord` rows (or dicts with the same keys). For each real
    tube with a track: ``out_dir/<entry>_<stem>_sbi<seed>.mp4`` (+ ``.npz``), made with
    :func:`tube_seed` (seed, tube), skipped when both files already exist (resumable). The new row is
    a copy of the real one with ``label = FAKE``, ``original = <real name>`` (so the trainer's split
    keeps a fake with its original), ``name = <real stem>_sbi<seed>.mp4`` and the new paths (no 2D
    crops). ``on_done(record, stats_or_None)`` is called per tube (stats None when skipped).
    """
    params = params or SelfBlendParams()
    out_dir = Path(out_dir)
    out: list = []
    for rec in tubes:
        if isinstance(rec, dict):
            rec = TubeRecord(**{k: rec[k] for k in (f.name for f in fields(TubeRecord)) if k in rec})
        if only_real and str(rec.label).upper() != "REAL":
            continue
        if not rec.track_path or not Path(rec.track_path).exists() or not Path(rec.tube_path).exists():
            continue
        src = Path(rec.tube_path)
        dst = out_dir / f"{src.parent.name}_{src.stem}_sbi{seed}.mp4"
        stats = None
        if not (dst.exists() and dst.with_suffix(".npz").exists()):
            stats = self_blend_tube(src, rec.track_path, dst, params, tube_seed(seed, src))
        stem = Path(rec.name).stem if rec.name else src.stem
        new = replace(rec, label="FAKE", original=rec.name, name=f"{stem}_sbi{seed}.mp4",
                      tube_path=str(dst.resolve()), track_path=str(dst.with_suffix(".npz").resolve()),
                      tube2d_path="")
        out.append(new)
        if on_done is not None:
            on_done(new, stats)
    return out


def params_from_file(path: str | Path) -> SelfBlendParams:
    """Generator parameters from TOML (a ``[selfblend]`` table or top-level keys) or JSON."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        text = path.read_text()
        d = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"{path}: cannot parse ({' '.join(str(exc).split())})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a table of parameters")
    for key in ("selfblend", "self_blend", "self-blend"):
        if isinstance(d.get(key), dict):
            d = d[key]
            break
    return SelfBlendParams.from_dict(d)
