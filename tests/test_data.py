"""Split, balanced sampler and clip dataset of the trainer (synthetic index, tiny tubes; CPU, fast)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from dfdc_cli.train import data
from dfdc_cli.train import sampling
from dfdc_cli.errors import UserError


def synthetic_index(n_orig=30, seed=0) -> pd.DataFrame:
    """Real videos with 0..5 fakes each, spread over DFDC parts 0..49 (a fake in its original's part,
    except a few that sit in another part, as happens when sets are merged)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_orig):
        part = int(rng.integers(0, 50))
        name = f"real{i:03d}.mp4"
        for tube in range(int(rng.integers(1, 3))):
            rows.append(dict(name=name, label="REAL", original="", part=f"dfdc_train_part_{part}", tube_id=tube))
        for j in range(int(rng.integers(0, 6))):
            fpart = part if rng.random() > 0.1 else int(rng.integers(0, 50))
            rows.append(dict(name=f"fake{i:03d}_{j}.mp4", label="FAKE", original=name,
                             part=f"dfdc_train_part_{fpart}", tube_id=0))
    df = pd.DataFrame(rows)
    df["tube_path"] = [f"/tubes/{r.name}_{r.tube_id}.mp4" for r in df.itertuples()]
    df["n_frames"] = 60
    return data.prepare_tubes(df)


def test_parts_parsing():
    assert data.parse_parts("45-49") == {45, 46, 47, 48, 49}
    assert data.parse_parts("0-2, 7") == {0, 1, 2, 7}
    assert data.part_number("dfdc_train_part_45") == 45
    assert data.part_number("part7/") == 7
    assert data.part_number("videos") is None
    with pytest.raises(UserError):
        data.parse_parts("45-40")
    with pytest.raises(UserError):
        data.parse_parts("abc")


def test_prepare_groups_fakes_with_their_original():
    df = synthetic_index()
    fakes = df[df.y == 1]
    assert (fakes["group"] == fakes["original"]).all()
    reals = df[df.y == 0]
    assert (reals["group"] == reals["name"]).all()


def _no_leakage(split):
    assert not set(split.train["group"]) & set(split.val["group"])
    # no fake on one side whose original is on the other
    assert not set(split.train.loc[split.train.y == 1, "original"]) & set(split.val["name"])
    assert not set(split.val.loc[split.val.y == 1, "original"]) & set(split.train["name"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_split_has_no_leakage(seed):
    df = synthetic_index(seed=seed)
    s = data.split_tubes(df, None, 0.2, seed=seed)
    _no_leakage(s)
    assert len(s.train) + len(s.val) == len(df)
    n_groups = df["group"].nunique()
    assert s.sizes()["val"]["groups"] == round(0.2 * n_groups)
    # deterministic in the seed
    s2 = data.split_tubes(df, None, 0.2, seed=seed)
    assert s2.val["tube_path"].tolist() == s.val["tube_path"].tolist()
    assert "real" in s.summary() and "fake" in s.summary()


def test_parts_split_moves_straddling_groups():
    df = synthetic_index(seed=3)
    s = data.split_tubes(df, "40-49", 0.1)
    _no_leakage(s)
    assert (s.val["part_num"] >= 40).sum() > 0
    # every tube of a held-out part is on the validation side
    assert not (s.train["part_num"].between(40, 49)).any()
    assert s.moved_groups == (s.val["part_num"] < 40).groupby(s.val["group"]).any().sum()
    with pytest.raises(UserError):
        data.split_tubes(df, "90-99", 0.1)


def test_balanced_sampler_epoch():
    labels = np.array([0] * 10 + [1] * 35)
    s = sampling.BalancedSampler(labels, seed=5)
    items = list(s)
    assert len(items) == len(s) == 20
    rows = [r for r, _, _ in items]
    reals = [r for r in rows if labels[r] == 0]
    fakes = [r for r in rows if labels[r] == 1]
    assert sorted(reals) == list(range(10))  # every real exactly once
    assert len(fakes) == 10 and len(set(fakes)) == 10
    # per-sample seeds are distinct
    assert len({sd for _, _, sd in items}) == 20
    # deterministic in (seed, epoch), different across epochs
    assert list(sampling.BalancedSampler(labels, seed=5)) == items
    s.set_epoch(1)
    assert list(s) != items


def test_balanced_sampler_walks_all_fakes():
    labels = np.array([0] * 8 + [1] * 24)  # 3 epochs of fakes
    s = sampling.BalancedSampler(labels, seed=0)
    seen = Counter()
    for e in range(3):
        seen.update(r for r, _, _ in s.epoch_items(e) if labels[r] == 1)
    assert set(seen) == set(range(8, 32)) and set(seen.values()) == {1}
    # fewer fakes than reals: fakes repeat, still balanced
    s2 = sampling.BalancedSampler(np.array([0] * 9 + [1] * 2), seed=0)
    rows = [r for r, _, _ in s2]
    assert sum(1 for r in rows if r >= 9) == 9


def test_balanced_sampler_sharding():
    labels = np.array([0] * 7 + [1] * 20)
    full = sampling.BalancedSampler(labels, seed=1).epoch_items(0)
    shards = [list(sampling.BalancedSampler(labels, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert len({len(sh) for sh in shards}) == 1
    union = [it for sh in shards for it in sh]
    assert set(union) == set(full)  # all items covered (with padding repeats)
    assert len(union) - len(full) < 3


def test_sampler_self_blended_and_mixed():
    labels = np.array([0] * 6 + [1] * 12)
    s = sampling.BalancedSampler(labels, fakes="self-blended", seed=0)
    items = list(s)
    assert len(items) == 12
    sbi = [r for r, b, _ in items if b]
    assert len(sbi) == 6 and all(labels[r] == 0 for r in sbi)
    assert all(labels[r] == 0 for r, _, _ in items)  # the index's fakes are not used
    m = sampling.BalancedSampler(labels, fakes="mixed", selfblend_fraction=0.5, seed=0)
    kinds = Counter((labels[r], b) for r, b, _ in m)
    assert kinds == {(0, False): 6, (0, True): 3, (1, False): 3}
    with pytest.raises(UserError):
        sampling.BalancedSampler(np.array([0, 0, 0]), fakes="real")
    assert len(list(sampling.BalancedSampler(np.array([0, 0, 0]), fakes="self-blended"))) == 6
    v = sampling.val_items(labels, "self-blended")
    assert sum(b for _, b, _ in v) == 6 and len(v) == 12


def test_pad_indices():
    assert data.pad_indices(3, 7, "loop").tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert data.pad_indices(3, 7, "reflect").tolist() == [0, 1, 2, 1, 0, 1, 2]
    assert data.pad_indices(3, 5, "repeat").tolist() == [0, 1, 2, 2, 2]
    assert data.pad_indices(9, 4, "loop").tolist() == [0, 1, 2, 3]


@pytest.fixture
def grey_tubes(tmp_path):
    """Two tiny tube MP4s whose frame i is uniform grey 20*i (so decoded frames can be told apart)."""
    from dfdc_cli.faces.video import write_video

    rows = []
    for k, n in enumerate((12, 5)):
        frames = np.stack([np.full((64, 64, 3), 20 * i, np.uint8) for i in range(n)])
        p = tmp_path / f"t{k}.mp4"
        write_video(p, frames, 25)
        rows.append(dict(name=f"v{k}.mp4", label="REAL" if k == 0 else "FAKE", original="v0.mp4" if k else "",
                         part="p0", tube_path=str(p), track_path="", n_frames=n))
    return data.prepare_tubes(pd.DataFrame(rows))


def _frame_levels(x: torch.Tensor) -> list[int]:
    return [int(round(v / 20)) for v in x.float().mean(dim=(0, 2, 3)).tolist()]


def test_clip_dataset_windows(grey_tubes):
    noaug = dict(brightness_contrast_p=0, blur_p=0, hflip_p=0, crop_scale=[1, 1], crop_ratio=[1, 1])
    val = data.ClipDataset(grey_tubes, clip_frames=8, res=32, train=False, aug=noaug)
    x, y = val[(0, False, 0)]
    # (a validation clip resized to res is not rounded back to uint8: scan does not round it)
    assert x.shape == (3, 8, 32, 32) and x.dtype == torch.float32 and y.item() == 0.0
    assert _frame_levels(x) == list(range(8))  # validation: the first T frames
    x, y = val[(1, False, 0)]
    assert y.item() == 1.0
    assert _frame_levels(x) == [0, 1, 2, 3, 4, 0, 1, 2]  # 5-frame tube looped to 8
    tr = data.ClipDataset(grey_tubes, clip_frames=8, res=32, train=True, aug=noaug)
    starts = set()
    for seed in range(12):
        lv = _frame_levels(tr[(0, False, seed)][0])
        assert lv == list(range(lv[0], lv[0] + 8))  # a contiguous window
        starts.add(lv[0])
        assert torch.equal(tr[(0, False, seed)][0], tr[(0, False, seed)][0])  # same seed, same clip
    assert starts <= set(range(5)) and len(starts) > 1


def test_clip_dataset_self_blend(tmp_path):
    """A self-blend item is a FAKE made from the real tube's window; it changes only pixels around the
    face (the track's box), and the same seed gives the same clip."""
    from dfdc_cli.faces.index import Track
    from dfdc_cli.faces.video import write_video

    n, size = 12, 64
    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.stack([
        np.stack([(128 + 60 * np.sin(xx / 5.0 + t / 3)), (128 + 60 * np.cos(yy / 7.0)), (100 + xx + yy) % 255], -1)
        for t in range(n)
    ]).clip(0, 255).astype(np.uint8)
    tube = tmp_path / "t.mp4"
    write_video(tube, frames, 25)
    box = np.array([20, 18, 44, 46], np.float32)
    template = np.array([[0.34, 0.46], [0.66, 0.46], [0.5, 0.64], [0.37, 0.82], [0.63, 0.82]], np.float32)
    lm = box[:2] + template * (box[2:] - box[:2])
    track = Track(frames=np.arange(n), boxes=np.repeat(box[None], n, 0), landmarks=np.repeat(lm[None], n, 0),
                  probs=np.full(n, 0.99, np.float32), detected=np.ones(n, bool),
                  crop_box=np.array([0, 0, size, size]), size=size)
    track.save(tmp_path / "t.npz")
    df = data.prepare_tubes(pd.DataFrame([dict(name="r.mp4", label="REAL", original="", part="p0", tube_path=str(tube),
                                               track_path=str(tmp_path / "t.npz"), n_frames=n)]))
    noaug = dict(brightness_contrast_p=0, blur_p=0, hflip_p=0, crop_scale=[1, 1], crop_ratio=[1, 1], val_crop=256)
    ds = data.ClipDataset(df, clip_frames=8, res=size, train=True, aug=noaug,
                          selfblend={"blend_ratio": [1.0, 1.0], "full_blend_prob": 1.0, "colour_prob": 1.0})
    real, y0 = ds[(0, False, 3)]
    fake, y1 = ds[(0, True, 3)]
    assert y0.item() == 0.0 and y1.item() == 1.0
    assert torch.equal(ds[(0, True, 3)][0], fake)  # same seed, same self-blended clip
    diff = (fake.int() - real.int()).abs().amax(dim=(0, 1))  # (H, W)
    assert diff.max() > 10  # the face region changed
    outside = np.ones((size, size), bool)
    outside[8:56, 8:56] = False  # well outside the face box (the mask may grow a little beyond it)
    assert diff[torch.from_numpy(outside)].max() == 0


def test_2d_self_blend_follows_the_face_in_the_2d_crops(tmp_path):
    """The 2D member reads the *_2d.mp4 crops (square boxes around the face), whose geometry differs
    from the tube's union box: the blend must land on the face in the crops, not where the face sits
    in the tube."""
    from dfdc_cli.faces.index import Track
    from dfdc_cli.faces.tubes import track_2d_geometry
    from dfdc_cli.faces.video import write_video

    n, size = 8, 256
    face = np.array([300, 300, 360, 372], np.float32)  # source pixels, bottom-right of the union box
    template = np.array([[0.34, 0.46], [0.66, 0.46], [0.5, 0.64], [0.37, 0.82], [0.63, 0.82]], np.float32)
    lm = face[:2] + template * (face[2:] - face[:2])
    track = Track(frames=np.arange(n), boxes=np.repeat(face[None], n, 0), landmarks=np.repeat(lm[None], n, 0),
                  probs=np.full(n, 0.99, np.float32), detected=np.ones(n, bool),
                  crop_box=np.array([100, 100, 400, 400]), size=size)
    track.save(tmp_path / "t.npz")
    yy, xx = np.mgrid[0:size, 0:size]
    texture = np.stack([128 + 60 * np.sin(xx / 5.0), 128 + 60 * np.cos(yy / 7.0), (100 + xx + yy) % 255], -1)
    frames = np.repeat(texture.clip(0, 255).astype(np.uint8)[None], n, 0)
    write_video(tmp_path / "t.mp4", frames, 25)
    write_video(tmp_path / "t_2d.mp4", frames, 25)
    df = data.prepare_tubes(pd.DataFrame([dict(
        name="r.mp4", label="REAL", original="", part="p0", tube_path=str(tmp_path / "t.mp4"),
        track_path=str(tmp_path / "t.npz"), tube2d_path=str(tmp_path / "t_2d.mp4"), n_frames=n)]))
    noaug = dict(brightness_contrast_p=0, blur_p=0, hflip_p=0, vflip_p=0, channel_shuffle_p=0, crop_scale=[1, 1],
                 crop_ratio=[1, 1], val_crop=256)
    ds = data.ClipDataset(df, clip_frames=1, res=size, train=True, kind="2d", aug=noaug, frames_2d=n,
                          selfblend={"blend_ratio": [1.0, 1.0], "full_blend_prob": 1.0, "colour_prob": 1.0})
    real, _ = ds[(0, False, 5)]
    fake, y = ds[(0, True, 5)]
    assert y.item() == 1.0
    diff = (fake.int() - real.int()).abs().amax(dim=0).numpy()  # (H, W)
    ys, xs = np.nonzero(diff > 10)
    assert len(xs) > 100
    lm2d, _ = track_2d_geometry(track, n=n)
    centre = lm2d[0].mean(axis=0)  # the face centre in the crops (near the middle)
    assert abs(xs.mean() - centre[0]) < 25 and abs(ys.mean() - centre[1]) < 25
    # ... and far from where the face sits in the tube's own geometry (bottom-right).
    tube_centre = track.to_tube_coords(lm[None])[0].mean(axis=0)
    assert np.hypot(xs.mean() - tube_centre[0], ys.mean() - tube_centre[1]) > 50


def test_2d_validation_item_is_the_first_frames_2d_frames(tmp_path):
    """2D validation: the item is the stack of the first frames_2d frames after the validation crop
    (the 2D crops when the tube has them), short tubes padded like the 3D clips; training items stay
    single frames."""
    from dfdc_cli.train import augment
    from dfdc_cli.faces.video import read_video, write_video

    size, res, n_2d = 64, 48, 32
    yy, xx = np.mgrid[0:size, 0:size]

    def moving(n: int, phase: float) -> np.ndarray:
        # Texture drifting with t plus a level that grows with t: every frame differs, and a crop
        # taken in the wrong place or a frame taken out of order shows.
        return np.stack([
            np.stack([128 + 80 * np.sin((xx + 2 * t) / 6.0 + phase), 128 + 80 * np.cos((yy - t) / 9.0),
                      np.full((size, size), 4.0 * t)], -1)
            for t in range(n)
        ]).clip(0, 255).astype(np.uint8)

    write_video(tmp_path / "long.mp4", moving(40, 0.0), 25)
    write_video(tmp_path / "short.mp4", moving(5, 1.0), 25)
    write_video(tmp_path / "c.mp4", moving(40, 2.0), 25)
    write_video(tmp_path / "c_2d.mp4", moving(36, 3.0)[:, ::-1].copy(), 25)  # the 2D crops differ from the tube
    rows = [dict(name=f"v{k}.mp4", label="REAL", original="", part="p0", tube_path=str(tmp_path / f"{stem}.mp4"),
                 track_path="", tube2d_path=p2, n_frames=n)
            for k, (stem, p2, n) in enumerate((("long", "", 40), ("short", "", 5),
                                                ("c", str(tmp_path / "c_2d.mp4"), 40)))]
    df = data.prepare_tubes(pd.DataFrame(rows))
    noaug = dict(brightness_contrast_p=0, blur_p=0, hflip_p=0, crop_scale=[1, 1], crop_ratio=[1, 1], val_crop=224)
    val = data.ClipDataset(df, clip_frames=8, res=res, train=False, kind="2d", aug=noaug, frames_2d=n_2d)

    def expected(path, order) -> torch.Tensor:
        decoded = read_video(path)[order]
        params = augment.val_clip_params(size, size, noaug)
        assert params["crop"][2] == 56  # a real crop (224/256 of the side), then resized to res
        return augment.apply_clip_params(decoded, params, res, quantise=False)

    x, y = val[(0, False, 0)]
    assert x.shape == (3, n_2d, res, res) and x.dtype == torch.float32 and y.item() == 0.0
    assert torch.equal(x, expected(tmp_path / "long.mp4", np.arange(n_2d)))
    x, _ = val[(1, False, 0)]  # 5 frames, looped: 0..4, 0..4, ...
    assert x.shape == (3, n_2d, res, res)
    assert torch.equal(x, expected(tmp_path / "short.mp4", np.arange(n_2d) % 5))
    x, _ = val[(2, False, 0)]
    assert torch.equal(x, expected(tmp_path / "c_2d.mp4", np.arange(n_2d)))
    assert not torch.equal(x, expected(tmp_path / "c.mp4", np.arange(n_2d)))

    tr = data.ClipDataset(df, clip_frames=8, res=res, train=True, kind="2d", aug=noaug, frames_2d=n_2d)
    assert tr[(0, False, 3)][0].shape == (3, res, res)


def test_sampler_paired_self_blends_follow_their_real():
    labels = np.array([0] * 5)
    s = sampling.BalancedSampler(labels, fakes="self-blended", seed=3, paired=True, repeat=2)
    items = s.epoch_items(0)
    assert len(items) == s.epoch_size == 20
    for real, fake in zip(items[0::2], items[1::2]):
        assert real[1] is False and fake[1] is True
        assert real[0] == fake[0] and real[2] == fake[2]  # same tube, same sample seed: same frame
    assert sorted(r for r, b, _ in items if not b) == sorted(list(range(5)) * 2)
    assert items != sampling.BalancedSampler(labels, fakes="self-blended", seed=4, paired=True, repeat=2).epoch_items(0)
    with pytest.raises(UserError, match="paired"):
        sampling.BalancedSampler(np.array([0, 1]), fakes="mixed", paired=True)
