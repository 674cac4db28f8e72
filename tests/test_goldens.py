"""The seed's own numbers: every member, through our pipeline, gives the p(fake) that the seed's
inference code gives (within 1e-5), on synthetic weights in the released layouts and three
synthetic tubes (tests/data/medics_goldens.json, copied from ../shared/reference/goldens).

The weights and tubes are regenerated here by :mod:`dfdc_models.synthetic`; their sha256 must equal the
goldens' (else this platform draws other numbers and a p(fake) comparison would be meaningless).
tube1 / tube2 are 256x256 tubes as the extractor hands them over; tube3 is a 200x170 face crop,
which goes through the extractor's square-and-resize (3D) or its 2D crop resize first. The rest is
scan's own path: :meth:`dfdc_cli.scan.scanner.Scanner.score_tubes` (centre crop, resize, the member's
scaling, flip TTA or the 2D median). The network input is checked first (sum, sum of squares and
channel means), so a failure says whether preprocessing or the network differs.

Cost: the networks on full tubes (up to 64 x 224 x 224), on CPU; one test per member so that
pytest-xdist spreads them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from dfdc_cli.faces import extract as X
from dfdc_cli.scan import scanner as S
from dfdc_cli.scan import members as MB
from dfdc_cli.scan import inputs as SI
from dfdc_models import synthetic as Y

GOLD = json.loads((Path(__file__).parent / "data" / "medics_goldens.json").read_text())
TOL = GOLD["tolerance_p_fake"]


@lru_cache(maxsize=None)
def tube(seed: int, frames: int, size: int = 256) -> np.ndarray:
    return Y.synthetic_tube(seed, frames, size).numpy()


def pixels(member: str, kind: str) -> list[np.ndarray]:
    """The member's three inputs as our extractor would hand them to scan (3D: tube frames; 2D:
    the first 32 crops, resized to 256)."""
    out = []
    for k in ("tube1", "tube2", "tube3"):
        t = GOLD["members"][member][k]
        frames = tube(t["seed"], t["frames"], t.get("size", 256))
        if "cols" in t:  # a face crop: the extractor's resize to the tube / 2D size
            crop = frames[:, :, t["cols"][0] : t["cols"][1]]
            frames = np.stack([X.square_face(f) if kind == "3d" else X.face_2d(f) for f in
                               (crop if kind == "3d" else crop[: MB.FRAMES_2D])])
        out.append(frames if kind == "3d" else frames[: MB.FRAMES_2D])
    return out


def test_synthetic_tubes_are_the_goldens():
    for name, sha in GOLD["tube_sha256"].items():
        args = [int(v) for v in name.split("(")[1].rstrip(")").replace("size=", "").split(",")]
        assert Y.tensor_sha256(Y.synthetic_tube(*args)) == sha, name


def test_square_face_truncates_as_the_seed():
    """The seed resized the float padded crop and truncated; rounding differs in ~half the pixels."""
    crop = tube(3, 40, 200)[0, :, 15:185]
    got = X.square_face(crop)
    assert got.shape == (256, 256, 3) and got.dtype == np.uint8
    assert np.array_equal(got[:, 218:], np.zeros_like(got[:, 218:]))  # the padding (cols 170..199 of 200)
    import cv2

    padded = np.zeros((200, 200, 3), np.float64)
    padded[:, :170] = crop
    exact = cv2.resize(padded, (256, 256), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(got, np.floor(exact).astype(np.uint8))
    assert not np.array_equal(got, np.round(exact).astype(np.uint8))
    assert np.array_equal(X.square_face(tube(1, 32)[0]), tube(1, 32)[0])  # 256 square: unchanged


@pytest.mark.slow
@pytest.mark.parametrize("member", list(GOLD["members"]))
def test_member_gives_the_seeds_p_fake(member):
    gold = GOLD["members"][member]
    sd = Y.synthetic_state_dict(member)
    assert Y.state_dict_sha256(sd) == gold["state_dict_sha256"]
    model = Y.synthetic_member(member, state_dict=sd)
    del sd
    m = MB.member_from_model(model)
    inputs = pixels(member, m.kind)

    with torch.no_grad():
        for k, frames in zip(("tube1", "tube2", "tube3"), inputs):
            x = torch.from_numpy(frames)[None]
            x = MB.prepare_3d(x, m.res) if m.kind == "3d" else MB.prepare_2d(x, m.res)
            x = model.preprocess(x).double()
            want = gold["input_checksum"][k]
            assert list(x.shape) == want["shape"], k
            means = x.mean(dim=(0, 2, 3, 4)).tolist()
            assert means == pytest.approx(want["mean_per_channel"], rel=1e-6, abs=1e-6), f"{k}: input differs"
            assert float((x * x).sum()) == pytest.approx(want["sum_sq"], rel=1e-6), f"{k}: input differs"

    tubes = [SI.LoadedTube(0, i, f if m.kind == "3d" else None, f if m.kind == "2d" else None)
             for i, f in enumerate(inputs)]
    torch.manual_seed(0)
    scores = S.Scanner(members=[m], device="cpu", batch_size=1).score_tubes(tubes)
    got = [s[member] for s in scores]
    want = [gold[f"p_fake_tube{i}"] for i in (1, 2, 3)]
    assert got == pytest.approx(want, abs=TOL, rel=0)
