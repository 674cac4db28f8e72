"""Training augmentation: per-clip pixel augmentation, 3D CutMix, and the 2D member's mixup/cutmix.

Clip augmentation (docs/method.md §3) draws ONE set of random parameters per clip and applies it to
every frame, so a clip stays a consistent video: a flipped clip is flipped in every frame, a crop is
the same window in every frame, brightness changes by the same amount everywhere. It is split in two
steps, :func:`sample_clip_params` (all the randomness) and :func:`apply_clip_params` (a pure function
of the frames and the parameters), which makes "same parameters on every frame" true by construction
and testable.

3D CutMix (:func:`cutmix3d`) and 2D mixup/cutmix (:func:`mix2d`) work on a batch (in the training
step, on the device), and return the partner labels and the per-sample mixing weight ``lam``; the
loss is then ``lam * L(y) + (1 - lam) * L(y_partner)`` (:func:`mixed_loss`).

All randomness comes from a ``numpy.random.Generator`` the caller passes in, so a run is reproducible
and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dfdc_models.member import resize_frames

# Defaults: the seed's values (docs/method.md §3). Recipes override any of them under [augment].
CLIP_DEFAULTS: dict[str, Any] = {
    "brightness_contrast_p": 0.25,
    "brightness": 0.2,  # additive, as a fraction of 255: beta ~ U(-0.2, 0.2)
    "contrast": 0.2,  # multiplicative around the clip mean: alpha ~ U(0.8, 1.2)
    "blur_p": 0.1,
    "blur_sigma": [0.1, 1.5],  # Gaussian sigma in output pixels (kernel = 2 * ceil(3 sigma) + 1)
    "noise_p": 0.0,  # additive Gaussian noise, same std on every frame (off in the seed's recipe)
    "noise_std": 2.0,  # in 0..255 units
    "hflip_p": 0.5,
    "vflip_p": 0.0,  # 2D member only
    "channel_shuffle_p": 0.0,  # 2D member only: random RGB channel order
    "crop_scale": [0.5, 1.0],  # RandomResizedCrop area fraction; (0.33, 1) for R(2+1)D
    "crop_ratio": [0.9, 1.1],  # RandomResizedCrop aspect ratio range
    "val_crop": 224,  # validation: centre crop of this side out of the 256 tube, then resize to res
    "jpeg_p": 0.0,  # training: re-compress the frames (after any self-blend) as JPEG, reals and fakes alike
    "jpeg_quality": [60, 95],  # JPEG quality range
}


def clip_config(cfg: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    out = dict(CLIP_DEFAULTS)
    if cfg:
        out.update({k: v for k, v in cfg.items() if k in CLIP_DEFAULTS})
    return out


# ----------------------------------------------------------------------------------------------
# Per-clip augmentation


def random_resized_crop_box(
    rng: np.random.Generator, height: int, width: int, scale=(0.5, 1.0), ratio=(0.9, 1.1)
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop window (torchvision's sampling rule, 10 tries, then
    the largest centred window with an aspect ratio inside ``ratio``)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def centre_crop_box(height: int, width: int, side: int) -> tuple[int, int, int, int]:
    h = min(side, height)
    w = min(side, width)
    return (height - h) // 2, (width - w) // 2, h, w


def sample_clip_params(
    rng: np.random.Generator, height: int, width: int, cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """Draw one clip's augmentation parameters (applied identically to all of its frames)."""
    cfg = clip_config(cfg)
    p: dict[str, Any] = {}
    p["crop"] = random_resized_crop_box(rng, height, width, tuple(cfg["crop_scale"]), tuple(cfg["crop_ratio"]))
    p["hflip"] = bool(rng.random() < cfg["hflip_p"])
    p["vflip"] = bool(rng.random() < cfg["vflip_p"])
    if rng.random() < cfg["brightness_contrast_p"]:
        p["alpha"] = float(1.0 + rng.uniform(-cfg["contrast"], cfg["contrast"]))
        p["beta"] = float(rng.uniform(-cfg["brightness"], cfg["brightness"]))
    else:
        p["alpha"], p["beta"] = 1.0, 0.0
    p["blur_sigma"] = float(rng.uniform(*cfg["blur_sigma"])) if rng.random() < cfg["blur_p"] else 0.0
    if rng.random() < cfg["noise_p"]:
        p["noise_std"] = float(cfg["noise_std"])
        p["noise_seed"] = int(rng.integers(0, 2**31 - 1))
    else:
        p["noise_std"], p["noise_seed"] = 0.0, 0
    p["channels"] = [int(c) for c in rng.permutation(3)] if rng.random() < cfg["channel_shuffle_p"] else [0, 1, 2]
    return p


def val_clip_params(height: int, width: int, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validation: centre crop (``val_crop`` of the tube), no randomness."""
    cfg = clip_config(cfg)
    side = int(round(cfg["val_crop"] * min(height, width) / 256.0))
    return {
        "crop": centre_crop_box(height, width, side),
        "hflip": False,
        "vflip": False,
        "alpha": 1.0,
        "beta": 0.0,
        "blur_sigma": 0.0,
        "noise_std": 0.0,
        "noise_seed": 0,
        "channels": [0, 1, 2],
    }


def _gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) float frames, reflect padding."""
    k = _gaussian_kernel1d(sigma).to(x.device, x.dtype)
    r = k.numel() // 2
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def apply_clip_params(frames: np.ndarray, params: Mapping[str, Any], res: int,
                      quantise: bool = True, mode: str = "bilinear") -> torch.Tensor:
    """Apply one parameter set to every frame: uint8 (T, H, W, 3) -> tensor (3, T, res, res).

    Order: crop + resize (:func:`resize_frames`), flips, brightness/contrast, blur, noise, channel
    order. Pixel operations run after the resize, on the (smaller) output. ``quantise``: round the
    result to uint8 (training: the seed's augmentations worked on uint8 images, and uint8 clips
    cost a quarter of the memory in the loaders); without it, a clip that was resized comes back in
    float32 unrounded, exactly as scan hands it to the member (validation), and any other in uint8.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # T, 3, H, W
    top, left, h, w = params["crop"]
    x = x[:, :, top : top + h, left : left + w]
    resized = (h, w) != (res, res)
    x = resize_frames(x, res, mode)
    if params["hflip"]:
        x = x.flip(-1)
    if params["vflip"]:
        x = x.flip(-2)
    if params["alpha"] != 1.0 or params["beta"] != 0.0:
        mean = x.mean()
        x = (x - mean) * params["alpha"] + mean + params["beta"] * 255.0
    if params["blur_sigma"] > 0:
        x = gaussian_blur(x, params["blur_sigma"])
    if params["noise_std"] > 0:
        g = torch.Generator().manual_seed(params["noise_seed"])
        x = x + torch.randn(x.shape, generator=g) * params["noise_std"]
    if list(params["channels"]) != [0, 1, 2]:
        x = x[:, list(params["channels"])]
    x = x.clamp_(0, 255)
    if quantise or not resized:
        x = x.round_().to(torch.uint8)
    return x.permute(1, 0, 2, 3).contiguous()  # 3, T, res, res


def sample_jpeg_quality(rng: np.random.Generator, cfg: Mapping[str, Any]) -> int:
    """The JPEG quality a training sample is re-compressed at, or 0 for none. Drawn before the
    self-blend, so that a real frame and its own self-blend (paired batches, one sample seed) get the
    same compression: a self-blend made after the video was compressed keeps a sharp, uncompressed
    blend boundary, which real face swaps (compressed after the swap) do not have."""
    if float(cfg["jpeg_p"]) <= 0:  # (no draw: recipes without it keep their random streams)
        return 0
    draw, q = rng.random(), rng.uniform(*cfg["jpeg_quality"])
    return int(round(q)) if draw < float(cfg["jpeg_p"]) else 0


def jpeg_roundtrip(frames: np.ndarray, quality: int) -> np.ndarray:
    """uint8 RGB frames (T, H, W, 3) encoded and decoded as JPEG at ``quality``."""
    out = []
    for fr in frames:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(fr[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return np.ascontiguousarray(np.stack(out))


# ----------------------------------------------------------------------------------------------
# 3D CutMix


def cutmix3d_boxes(
    rng: np.random.Generator, batch: int, t: int, h: int, w: int, alpha: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: lam ~ Beta(alpha, alpha), lam = max(lam, 1 - lam); a box with side fractions
    (1 - lam)^(1/3) of T, H and W, centred uniformly, clipped at the borders.

    Returns boxes (batch, 6) int64 ``t1, t2, y1, y2, x1, x2`` (ends exclusive) and the recomputed
    lam = 1 - box volume / clip volume, (batch,) float64.
    """
    boxes = np.zeros((batch, 6), np.int64)
    lam = np.ones(batch, np.float64)
    for i in range(batch):
        l0 = float(rng.beta(alpha, alpha))
        l0 = max(l0, 1.0 - l0)
        frac = (1.0 - l0) ** (1.0 / 3.0)
        box = []
        for size in (t, h, w):
            cut = int(round(size * frac))
            centre = int(rng.integers(0, size))
            a = int(np.clip(centre - cut // 2, 0, size))
            b = int(np.clip(centre - cut // 2 + cut, 0, size))
            box += [a, b]
        boxes[i] = box
        vol = (box[1] - box[0]) * (box[3] - box[2]) * (box[5] - box[4])
        lam[i] = 1.0 - vol / float(t * h * w)
    return boxes, lam


def cutmix3d(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """3D CutMix of a batch of clips (B, C, T, H, W), as docs/method.md §3.

    Each sample i gets a box copied from its partner ``perm[i]`` (a random permutation of the
    batch; the partner's pixels are taken from the UNmixed batch). Returns ``(x_mixed, y_partner,
    lam, perm, boxes)`` with ``lam`` a float tensor (B,) on ``y``'s device: the fraction of the clip
    that is still the sample's own.
    """
    b, _, t, h, w = x.shape
    perm = rng.permutation(b)
    boxes, lam = cutmix3d_boxes(rng, b, t, h, w, alpha)
    src = x.clone()
    out = x.clone()
    for i in range(b):
        t1, t2, y1, y2, x1, x2 = (int(v) for v in boxes[i])
        if t2 > t1 and y2 > y1 and x2 > x1:
            out[i, :, t1:t2, y1:y2, x1:x2] = src[int(perm[i]), :, t1:t2, y1:y2, x1:x2]
    perm_t = torch.as_tensor(perm, device=y.device)
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=y.device)
    return out, y[perm_t], lam_t, perm, boxes


def mixed_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    y: torch.Tensor,
    y_partner: torch.Tensor,
    lam: torch.Tensor,
) -> torch.Tensor:
    """Mean over the batch of ``lam * L(logit, y) + (1 - lam) * L(logit, y_partner)``.

    ``loss_fn`` returns the per-sample loss (reduction 'none'). For binary cross-entropy this equals
    BCE against the soft target ``lam * y + (1 - lam) * y_partner``.
    """
    lam = lam.to(logits.dtype)
    return (lam * loss_fn(logits, y) + (1.0 - lam) * loss_fn(logits, y_partner)).mean()


def bce_per_sample(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")


# ----------------------------------------------------------------------------------------------
# 2D member: mixup / cutmix per batch

MIX2D_DEFAULTS: dict[str, Any] = {
    "mix_p": 1.0,  # probability that a batch is mixed at all
    "mixup_alpha": 0.4,
    "cutmix_alpha": 1.0,
    "cutmix_share": 0.5,  # of mixed batches, the share that use cutmix (the rest: mixup)
}


def mix2d(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, cfg: Optional[Mapping[str, Any]] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Per batch, either mixup (lam ~ Beta(0.4, 0.4)) or cutmix (lam ~ Beta(1, 1), a 2D box of side
    fractions sqrt(1 - lam), lam recomputed from the clipped box) with a random partner permutation.

    ``x`` (B, C, H, W) float. Returns ``(x_mixed, y_partner, lam (B,), kind)``; kind is
    "none" | "mixup" | "cutmix".
    """
    c = dict(MIX2D_DEFAULTS)
    if cfg:
        c.update({k: v for k, v in cfg.items() if k in MIX2D_DEFAULTS})
    b, _, h, w = x.shape
    ones = torch.ones(b, dtype=torch.float32, device=y.device)
    if b < 2 or rng.random() >= c["mix_p"]:
        return x, y, ones, "none"
    perm = torch.as_tensor(rng.permutation(b), device=x.device)
    if rng.random() < c["cutmix_share"]:
        lam0 = float(rng.beta(c["cutmix_alpha"], c["cutmix_alpha"]))
        frac = math.sqrt(1.0 - lam0)
        ch, cw = int(round(h * frac)), int(round(w * frac))
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, y2 = int(np.clip(cy - ch // 2, 0, h)), int(np.clip(cy - ch // 2 + ch, 0, h))
        x1, x2 = int(np.clip(cx - cw // 2, 0, w)), int(np.clip(cx - cw // 2 + cw, 0, w))
        out = x.clone()
        out[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
        lam = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)
        return out, y[perm.to(y.device)], ones * lam, "cutmix"
    lam = float(rng.beta(c["mixup_alpha"], c["mixup_alpha"]))
    out = x * lam + x[perm] * (1.0 - lam)
    return out, y[perm.to(y.device)], ones * lam, "mixup"
