"""Self-blended tubes: the blend stays inside the mask, the mask follows the face, seeds reproduce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import Track
from dfdc_cli.train.selfblend import SelfBlendParams, blend_clip, sample_plan, self_blend_tube
from dfdc_cli.faces.tubes import track_tube_geometry

# Landmarks of a frontal face relative to its box (x, y as fractions of the box side): eyes, nose,
# mouth corners (close to what MTCNN gives).
_LM_REL = np.array([[0.31, 0.42], [0.69, 0.42], [0.50, 0.62], [0.34, 0.80], [0.66, 0.80]], np.float32)


def synthetic_face_tube(t: int = 16, size: int = 96, face: float = 40.0, path=(12.0, 40.0), seed: int = 0):
    """A textured background with a face-like blob moving left to right (and a little down).

    Returns frames uint8 (t, size, size, 3), landmarks (t, 5, 2), boxes (t, 4), in frame pixels.
    """
    import cv2

    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 200, (size, size, 3)).astype(np.uint8)
    bg = cv2.GaussianBlur(bg, (5, 5), 1.0)
    frames, lms, boxes = [], [], []
    for i in range(t):
        x0 = path[0] + (path[1] - path[0]) * i / max(t - 1, 1)
        y0 = 16.0 + 8.0 * i / max(t - 1, 1)
        box = np.array([x0, y0, x0 + face, y0 + face], np.float32)
        lm = box[:2] + _LM_REL * face
        img = bg.copy()
        cx, cy = x0 + face / 2, y0 + face / 2
        cv2.ellipse(img, (round(cx), round(cy)), (round(face * 0.42), round(face * 0.55)), 0, 0, 360,
                    (205, 160, 130), -1, cv2.LINE_AA)
        for (x, y) in lm[:2]:
            cv2.circle(img, (round(x), round(y)), 3, (40, 30, 30), -1)
        cv2.line(img, tuple(np.round(lm[3]).astype(int)), tuple(np.round(lm[4]).astype(int)), (120, 40, 40), 2)
        img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
        frames.append(img)
        lms.append(lm)
        boxes.append(box)
    return np.stack(frames), np.stack(lms).astype(np.float32), np.stack(boxes)


def test_blend_changes_only_pixels_inside_the_mask():
    frames, lm, bx = synthetic_face_tube()
    face = float(bx[0, 2] - bx[0, 0])
    for seed in range(6):
        fake, mask = blend_clip(frames, lm, bx, SelfBlendParams(), np.random.default_rng(seed))
        assert fake.shape == frames.shape and fake.dtype == np.uint8
        assert mask.shape == frames.shape[:3] and mask.dtype == np.float32
        assert 0.0 <= mask.min() and mask.max() <= 1.0 + 1e-6
        outside = mask == 0
        assert outside.any()
        # Exactly equal wherever the mask is 0 ...
        assert np.array_equal(fake[outside], frames[outside])
        # ... something changed inside ...
        changed = np.any(fake != frames, axis=-1)
        assert changed.any(), f"seed {seed}: the fake equals the real"
        assert not np.any(changed & outside)
        # ... and the (blurred, dilated) mask stays near the face: nothing beyond 0.6 face sizes of the box.
        yy, xx = np.mgrid[: frames.shape[1], : frames.shape[2]]
        for i in range(len(frames)):
            x1, y1, x2, y2 = bx[i]
            m = 0.6 * face
            far = (xx < x1 - m) | (xx > x2 + m) | (yy < y1 - m) | (yy > y2 + m)
            assert mask[i][far].max() == 0


def test_mask_follows_the_face():
    frames, lm, bx = synthetic_face_tube(t=20, path=(6.0, 50.0))
    params = SelfBlendParams(mask_deform=0.0, shift_jitter=0.0, ratio_jitter=0.0)
    for seed in range(4):
        _, mask = blend_clip(frames, lm, bx, params, np.random.default_rng(seed))
        yy, xx = np.mgrid[: frames.shape[1], : frames.shape[2]]
        w = mask.sum(axis=(1, 2))
        assert np.all(w > 0), "a frame lost its mask"
        cx = (mask * xx).sum(axis=(1, 2)) / w
        cy = (mask * yy).sum(axis=(1, 2)) / w
        lx, ly = lm[:, :, 0].mean(axis=1), lm[:, :, 1].mean(axis=1)
        face = float(bx[0, 2] - bx[0, 0])
        # Close to the face in every frame, and moving with it (the face travels 44 px).
        assert np.all(np.hypot(cx - lx, cy - ly) < 0.25 * face)
        assert np.corrcoef(cx, lx)[0, 1] > 0.99
        assert abs((cx[-1] - cx[0]) - (lx[-1] - lx[0])) < 3.0


def test_same_seed_same_tube_different_seed_different_tube():
    frames, lm, bx = synthetic_face_tube()
    a, ma = blend_clip(frames, lm, bx, None, np.random.default_rng(7))
    b, mb = blend_clip(frames, lm, bx, None, np.random.default_rng(7))
    c, mc = blend_clip(frames, lm, bx, None, np.random.default_rng(8))
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not (np.array_equal(a, c) and np.array_equal(ma, mc))


def test_same_transform_for_the_whole_tube():
    """One plan per tube: without jitter, a static tube gets the same mask and blend in every frame."""
    frames, lm, bx = synthetic_face_tube(t=1)
    frames, lm, bx = (np.repeat(v, 6, axis=0) for v in (frames, lm, bx))
    params = SelfBlendParams(shift_jitter=0.0, ratio_jitter=0.0)
    fake, mask = blend_clip(frames, lm, bx, params, np.random.default_rng(3))
    for i in range(1, 6):
        assert np.array_equal(mask[i], mask[0])
        assert np.array_equal(fake[i], fake[0])


def test_box_only_when_landmarks_are_missing():
    frames, lm, bx = synthetic_face_tube(t=6)
    lm[2:4] = np.nan
    fake, mask = blend_clip(frames, lm, bx, None, np.random.default_rng(0))
    assert np.all(mask.reshape(6, -1).max(axis=1) > 0)
    fake2, mask2 = blend_clip(frames, None, bx, None, np.random.default_rng(0))
    assert np.all(mask2.reshape(6, -1).max(axis=1) > 0)
    assert np.array_equal(fake2[mask2 == 0], frames[mask2 == 0])


def test_bad_inputs():
    frames, lm, bx = synthetic_face_tube(t=4)
    with pytest.raises(ValueError):
        blend_clip(frames.astype(np.float32), lm, bx, None, np.random.default_rng(0))
    with pytest.raises(ValueError):
        blend_clip(frames, lm[:3], bx, None, np.random.default_rng(0))


def test_params_from_dict():
    p = SelfBlendParams.from_dict({"blend_ratio": [0.5, 0.9], "mask_blur": [0.01, 0.02], "shift": 0.01})
    assert p.blend_ratio == (0.5, 0.9) and p.mask_blur == (0.01, 0.02) and p.shift == 0.01
    assert SelfBlendParams.from_dict({}) == SelfBlendParams()
    assert SelfBlendParams.from_dict(SelfBlendParams().to_dict()) == SelfBlendParams()
    with pytest.raises(UserError, match="blend_ratoi"):
        SelfBlendParams.from_dict({"blend_ratoi": [0.5, 1.0]})
    with pytest.raises(UserError):
        SelfBlendParams.from_dict({"blend_ratio": [0.9, 0.5]})
    with pytest.raises(UserError):
        SelfBlendParams.from_dict({"blend_ratio": [0.0, 1.5]})
    with pytest.raises(UserError):
        SelfBlendParams.from_dict({"shape_probs": {"face": 1.0, "whole_head": 1.0}})
    with pytest.raises(UserError):
        SelfBlendParams.from_dict({"scale": "big"})
    # Shape choice honours its probabilities.
    p = SelfBlendParams(shape_probs={"inner": 1.0})
    assert sample_plan(p, np.random.default_rng(0), 4).shape == "inner"


def test_never_a_no_op():
    """Even with every colour op and sharpness change drawn off, something changes."""
    p = SelfBlendParams(colour_prob=0.0, quality_probs={"none": 1.0}, scale=(1.0, 1.0), shift=0.0)
    frames, lm, bx = synthetic_face_tube(t=4)
    for seed in range(3):
        fake, _ = blend_clip(frames, lm, bx, p, np.random.default_rng(seed))
        assert np.any(fake != frames)


def test_self_blend_tube_writes_mp4_and_track(tmp_path):
    from dfdc_cli.faces.video import read_video, write_video

    frames, lm, bx = synthetic_face_tube(t=12, size=64, face=28.0, path=(8.0, 28.0))
    # Source coordinates = 2x tube coordinates (a 128-px crop shown as a 64-px tube).
    track = Track(frames=np.arange(12), boxes=bx * 2, landmarks=lm * 2, probs=np.full(12, 0.99, np.float32),
                  detected=np.ones(12, bool), crop_box=np.array([0, 0, 128, 128]), size=64)
    tube = tmp_path / "t.mp4"
    write_video(tube, frames, 25.0)
    track.save(tmp_path / "t.npz")
    lm2, bx2 = track_tube_geometry(Track.load(tmp_path / "t.npz"))
    assert np.allclose(lm2, lm, atol=1e-4) and np.allclose(bx2, bx, atol=1e-4)

    out = tmp_path / "fake" / "t_sbi.mp4"
    stats = self_blend_tube(tube, tmp_path / "t.npz", out, SelfBlendParams(), seed=3)
    assert out.exists() and (tmp_path / "fake" / "t_sbi.npz").exists()
    assert stats["n_frames"] == 12 and 0 < stats["mask_area"] < 1 and stats["seed"] == 3
    assert stats["tube_path"] == str(out)
    fake = read_video(out)
    assert fake.shape == frames.shape
    copy = Track.load(tmp_path / "fake" / "t_sbi.npz")
    assert np.array_equal(copy.boxes, track.boxes)
    again = self_blend_tube(tube, tmp_path / "t.npz", tmp_path / "again.mp4", SelfBlendParams(), seed=3)
    assert np.array_equal(read_video(tmp_path / "again.mp4"), fake)
    assert {k: v for k, v in again.items() if "path" not in k} == {
        k: v for k, v in stats.items() if "path" not in k
    }


def test_track_2d_geometry_centres_the_box():
    pytest.importorskip("dfdc_cli.faces.tubes")
    from dfdc_cli.faces.tubes import track_2d_geometry

    _, lm, bx = synthetic_face_tube(t=40)
    track = Track(frames=np.arange(40), boxes=bx * 3, landmarks=lm * 3, probs=np.full(40, 0.9, np.float32),
                  detected=np.arange(40) % 10 == 0, crop_box=np.array([0, 0, 300, 300]), size=256)
    lm2, bx2 = track_2d_geometry(track, n=32, size=256)
    assert lm2.shape == (32, 5, 2) and bx2.shape == (32, 4)
    centre = np.stack([(bx2[:, 0] + bx2[:, 2]) / 2, (bx2[:, 1] + bx2[:, 3]) / 2], 1)
    assert np.allclose(centre, 128.0, atol=1e-3)
    side = bx2[:, 2] - bx2[:, 0]
    assert np.allclose(side, 256 / 1.2, rtol=0.02)  # constant box size: side = 1.2 x box


# ------------------------------------------------------------------------------------------------
# End to end: a member trained on real tubes and their self-blends flags held-out self-blends.

_SWAP = [1, 0, 2, 4, 3]  # mirror: left/right eye and mouth corner swap places


def _write_window(folder, name, frames, lm, bx, flip: bool, part: str):
    from dfdc_cli.faces.index import TubeRecord
    from dfdc_cli.faces.video import write_video

    n, size = len(frames), frames.shape[2]
    if flip:
        frames = frames[:, :, ::-1]
        lm = lm[:, _SWAP].copy()
        lm[..., 0] = size - lm[..., 0]
        bx = np.stack([size - bx[:, 2], bx[:, 1], size - bx[:, 0], bx[:, 3]], 1)
    tube, track = folder / f"{name}.mp4", folder / f"{name}.npz"
    write_video(tube, np.ascontiguousarray(frames), 25.0)
    Track(frames=np.arange(n), boxes=bx.astype(np.float32), landmarks=lm.astype(np.float32),
          probs=np.full(n, 0.99, np.float32), detected=np.ones(n, bool), crop_box=np.array([0, 0, size, size]),
          size=size).save(track)
    return TubeRecord(video=f"/carphone/{name}.mp4", name=f"{name}.mp4", tube_id=0, first_frame=0,
                      last_frame=n - 1, n_frames=n, x1=0, y1=0, x2=size, y2=size, mean_prob=0.99, max_prob=0.99,
                      n_detections=n, label="REAL", part=part, tube_path=str(tube), track_path=str(track))


@pytest.mark.slow
def test_member_trained_on_self_blends_flags_held_out_self_blends(carphone, tmp_path):
    """~1-2 min on 2 CPU cores: extract carphone, train R3D-18 on its real windows + self-blends."""
    pytest.importorskip("dfdc_cli.faces.extract")
    pytest.importorskip("dfdc_cli.train.trainer")
    from dfdc_cli.faces.extract import ExtractParams, extract
    from dfdc_cli.faces.index import TUBE_COLUMNS, write_table
    from dfdc_cli.train.recipe import resolve_recipe
    from dfdc_cli.train.trainer import train
    from dfdc_cli.faces.video import read_video

    # One real face tube from carphone (the extractor's defaults: 100 frames).
    ex = extract([carphone], tmp_path / "ex", ExtractParams(), workers=1, quiet=True)
    assert len(ex.tubes) == 1
    tube = ex.tubes[0]
    frames = read_video(tube.tube_path)
    lm, bx = track_tube_geometry(Track.load(tube.track_path))
    n = min(len(frames), len(bx))
    assert n >= 90

    # Real tubes cut from it: per block of 25 frames a 16-frame training window and, after a
    # one-frame gap, an 8-frame held-out window ("part 45", --val-parts 45); each also mirrored.
    folder = tmp_path / "windows"
    folder.mkdir()
    rows = []
    for k, a in enumerate(range(0, n - 24, 25)):
        b = a + 17
        for flip in (False, True):
            tag = f"{k}{'f' * flip}"
            rows.append(_write_window(folder, f"train{tag}", frames[a:a + 16], lm[a:a + 16], bx[a:a + 16],
                                      flip, "dfdc_train_part_1"))
            rows.append(_write_window(folder, f"val{tag}", frames[b:b + 8], lm[b:b + 8], bx[b:b + 8],
                                      flip, "dfdc_train_part_45"))
    write_table(folder / "tubes.csv", rows, TUBE_COLUMNS)

    # A small 3D member (R3D-18 from scratch, 4 x 32 x 32 clips, 32 steps) trained on the reals and
    # their on-the-fly self-blends only. At 32 px only colour survives, and 32 steps are few, so the
    # generator's colour change is made strong here; the defaults are subtler (see the README).
    recipe = resolve_recipe(arch="r3d18", res=112, overrides={
        "model": {"init": "scratch"},
        "data": {"index": str(folder), "val_parts": "45", "fakes": "self-blended", "clip_frames": 4,
                 "input_res": 32, "workers": 0},
        "optim": {"epochs": 16, "batch_size": 8, "lr": 5e-4},
        "augment": {"crop_scale": [0.7, 1.0], "blur_p": 0.0},
        "selfblend": {"colour_prob": 1.0, "rgb_shift": 40.0, "brightness": 0.15, "contrast": 0.3,
                      "full_blend_prob": 1.0},
        "train": {"device": "cpu", "seed": 0, "val_every": 16},
    })
    res = train(recipe, run_dir=tmp_path / "run", echo=lambda s: None, show_progress=False)
    last = res.history[-1]
    # Held-out: 8 real windows and one self-blended copy of each (validation seeds, not training's).
    assert last["epoch"] == 16
    assert last["val_auc"] >= 0.75, [(h["epoch"], h["train_loss"], h["val_auc"]) for h in res.history]


def test_self_blend_records(tmp_path):
    from dfdc_cli.faces.index import TubeRecord
    from dfdc_cli.train.selfblend import self_blend_records
    from dfdc_cli.faces.video import write_video

    frames, lm, bx = synthetic_face_tube(t=8, size=64, face=28.0, path=(8.0, 28.0))
    recs = []
    for k, label in enumerate(("REAL", "FAKE", "")):
        d = tmp_path / f"entry{k}"
        d.mkdir()
        write_video(d / "tube0.mp4", frames, 25.0)
        Track(frames=np.arange(8), boxes=bx, landmarks=lm, probs=np.ones(8, np.float32), detected=np.ones(8, bool),
              crop_box=np.array([0, 0, 64, 64]), size=64).save(d / "tube0.npz")
        recs.append(TubeRecord(video=f"/v/{k}.mp4", name=f"v{k}.mp4", tube_id=0, first_frame=0, last_frame=7,
                               n_frames=8, x1=0, y1=0, x2=64, y2=64, mean_prob=0.9, max_prob=0.9, n_detections=1,
                               label=label, tube_path=str(d / "tube0.mp4"), track_path=str(d / "tube0.npz")))
    seen = []
    out = self_blend_records(recs, tmp_path / "sbi", seed=5, on_done=lambda r, s: seen.append(s))
    assert len(out) == 1 and out[0].label == "FAKE" and out[0].original == "v0.mp4"
    assert out[0].name == "v0_sbi5.mp4" and Path(out[0].tube_path).exists() and Path(out[0].track_path).exists()
    assert seen[0] is not None
    again = self_blend_records(recs, tmp_path / "sbi", seed=5, on_done=lambda r, s: seen.append(s))
    assert again == out and seen[1] is None  # existing files are kept (resumable)


def test_frames_without_geometry_are_left_alone():
    frames, lm, bx = synthetic_face_tube(t=5)
    lm[1] = np.nan
    bx[1] = np.nan
    fake, mask = blend_clip(frames, lm, bx, None, np.random.default_rng(0))
    assert mask[1].max() == 0 and np.array_equal(fake[1], frames[1])
    assert mask[0].max() > 0
