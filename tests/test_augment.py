"""Clip augmentation, 3D CutMix and 2D mixup/cutmix (CPU, no model, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfdc_cli.train import augment


def _batch(b=6, c=3, t=8, h=16, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, t, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix3d_region_is_partner_and_lam_is_volume(seed):
    x = _batch(seed=seed)
    y = torch.tensor([0, 1, 0, 1, 1, 0], dtype=torch.float32)
    rng = np.random.default_rng(seed)
    out, y2, lam, perm, boxes = augment.cutmix3d(x, y, rng, alpha=1.0)
    b, _, t, h, w = x.shape
    assert out.shape == x.shape and out.dtype == x.dtype
    assert sorted(perm.tolist()) == list(range(b))
    assert torch.equal(y2, y[torch.as_tensor(perm)])
    for i in range(b):
        t1, t2, y1, yy2, x1, x2 = boxes[i]
        inside = torch.zeros(t, h, w, dtype=torch.bool)
        inside[t1:t2, y1:yy2, x1:x2] = True
        # Mixed region: the partner's (unmixed) pixels; elsewhere: the sample's own.
        assert torch.equal(out[i][:, inside], x[perm[i]][:, inside])
        assert torch.equal(out[i][:, ~inside], x[i][:, ~inside])
        vol = (t2 - t1) * (yy2 - y1) * (x2 - x1)
        assert lam[i].item() == pytest.approx(1.0 - vol / (t * h * w), abs=1e-6)
        assert 0 <= t1 <= t2 <= t and 0 <= y1 <= yy2 <= h and 0 <= x1 <= x2 <= w
    # lam = max(lam, 1 - lam) before clipping: the box never covers (much) more than half the clip.
    assert (lam >= 0.45).all() and (lam <= 1.0).all()


def test_cutmix3d_box_sides_follow_cube_root():
    # Unclipped boxes (centre far from borders is not guaranteed, so look at the sides' upper bound).
    rng = np.random.default_rng(1)
    t, h, w = 32, 112, 112
    boxes, lam = augment.cutmix3d_boxes(rng, 400, t, h, w)
    sides = boxes[:, 1::2] - boxes[:, 0::2]
    assert (sides[:, 0] <= math.ceil(t * 0.5 ** (1 / 3)) + 1).all()
    # Some boxes are clipped at a border, so lam is often above the drawn value, never below ~0.5.
    assert lam.min() > 0.45 and lam.max() <= 1.0
    assert np.allclose(lam, 1 - np.prod(sides, axis=1) / (t * h * w))


def test_mixed_loss_matches_hand_computation():
    logits = torch.tensor([0.3, -1.2, 2.0])
    y = torch.tensor([1.0, 0.0, 1.0])
    y2 = torch.tensor([0.0, 0.0, 1.0])
    lam = torch.tensor([0.7, 0.4, 0.55])

    def bce(z, target):
        p = 1 / (1 + math.exp(-z))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    hand = np.mean([
        lam[i].item() * bce(logits[i].item(), y[i].item()) + (1 - lam[i].item()) * bce(logits[i].item(), y2[i].item())
        for i in range(3)
    ])
    got = augment.mixed_loss(augment.bce_per_sample, logits, y, y2, lam).item()
    assert got == pytest.approx(hand, rel=1e-6)
    # With BCE the mixed loss is BCE against the soft target lam*y + (1-lam)*y2.
    soft = F.binary_cross_entropy_with_logits(logits, lam * y + (1 - lam) * y2).item()
    assert got == pytest.approx(soft, rel=1e-6)


def test_random_resized_crop_box_in_range():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = augment.random_resized_crop_box(rng, 256, 256, (0.33, 1.0), (0.9, 1.1))
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 256
        assert 0.30 <= h * w / 256**2 <= 1.0
        assert 0.85 <= w / h <= 1.15


def test_same_parameters_on_every_frame():
    """Identical input frames stay identical after augmentation (one parameter set per clip)."""
    base = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    clip = np.repeat(base[None], 6, axis=0)
    cfg = dict(augment.CLIP_DEFAULTS, brightness_contrast_p=1.0, blur_p=1.0, hflip_p=0.5,
               noise_p=0.0, channel_shuffle_p=1.0, crop_scale=[0.33, 1.0])
    for seed in range(8):
        rng = np.random.default_rng(seed)
        p = augment.sample_clip_params(rng, 64, 64, cfg)
        out = augment.apply_clip_params(clip, p, 32)
        assert out.shape == (3, 6, 32, 32) and out.dtype == torch.uint8
        for f in range(1, 6):
            assert torch.equal(out[:, f], out[:, 0])


def test_flip_and_centre_crop():
    clip = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    p = augment.val_clip_params(64, 64, augment.CLIP_DEFAULTS)
    assert p["crop"] == (4, 4, 56, 56)  # 224/256 of 64
    a = augment.apply_clip_params(clip, p, 56)
    assert torch.equal(a, torch.from_numpy(clip[:, 4:60, 4:60]).permute(3, 0, 1, 2))
    b = augment.apply_clip_params(clip, dict(p, hflip=True), 56)
    assert torch.equal(b, a.flip(-1))


def test_mix2d_cutmix_and_mixup():
    x = torch.rand(4, 3, 16, 16) * 255
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    seen = set()
    for seed in range(20):
        out, y2, lam, kind = augment.mix2d(x, y, np.random.default_rng(seed), {"mix_p": 1.0})
        seen.add(kind)
        assert lam.shape == (4,) and ((lam >= 0) & (lam <= 1)).all()
        if kind == "mixup":
            # out = lam*x + (1-lam)*x[perm]; the partner labels say which perm.
            assert torch.all(out <= torch.maximum(x, x.max()) + 1e-4)
        if kind == "cutmix":
            changed = (out != x).any(dim=1)  # (B, H, W)
            frac = changed.float().mean(dim=(1, 2))
            for i in range(4):
                if y2[i] != y[i]:  # a partner with another label must have supplied a box
                    assert frac[i] <= 1 - lam[i] + 1e-6
    assert {"mixup", "cutmix"} <= seen
    same, _, lam, kind = augment.mix2d(x, y, np.random.default_rng(0), {"mix_p": 0.0})
    assert kind == "none" and torch.equal(same, x) and (lam == 1).all()


def test_jpeg_recompression_is_drawn_only_when_enabled_and_changes_pixels():
    from dfdc_cli.train.augment import clip_config, jpeg_roundtrip, sample_jpeg_quality

    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert sample_jpeg_quality(rng, clip_config({})) == 0
    assert rng.bit_generator.state == state  # recipes without it keep their random streams
    qs = [sample_jpeg_quality(np.random.default_rng(s), clip_config({"jpeg_p": 1.0, "jpeg_quality": [60, 70]}))
          for s in range(20)]
    assert all(60 <= q <= 70 for q in qs)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    out = jpeg_roundtrip(frames, 60)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert 2 < np.abs(out.astype(int) - frames).mean() < 80  # lossy, but the same picture
