"""`deepfake scan`: the ensemble arithmetic on models with known outputs, the no-face / error paths,
and end to end on real clips with small registered members."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
from cli_util import run_cli
import torch
from torch import nn

from dfdc_cli.scan import scanner as S
from dfdc_cli.scan import ensemble as EN
from dfdc_cli.scan import members as MB
from dfdc_cli.scan import inputs as SI
from dfdc_cli.scan import results as SR
from dfdc_cli.faces.index import STATUS_ERROR, STATUS_NO_FACE, STATUS_OK
from dfdc_models.registry import MemberModel
from dfdc_models.specs import get_spec


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------------------------
# Networks with known outputs


class Asym3d(nn.Module):
    """3D net: FAKE logit = k * (mean of the left half - mean of the right half) + b, REAL logit 0.
    Records the input shapes it saw."""

    def __init__(self, k: float = 0.01, b: float = 0.5):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))
        self.b = b
        self.shapes: list = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        w = x.shape[-1]
        d = x[..., : w // 2].mean(dim=(1, 2, 3, 4)) - x[..., w // 2 :].mean(dim=(1, 2, 3, 4))
        return torch.stack([self.k * d + self.b, torch.zeros_like(d)], 1)


class Frame2d(nn.Module):
    """2D net on frames (N, 3, H, W): logit = 0.01 * (left - right) + 0.01 * (mean - 100)."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(0.01))
        self.shapes: list = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        w = x.shape[-1]
        d = x[..., : w // 2].mean(dim=(1, 2, 3)) - x[..., w // 2 :].mean(dim=(1, 2, 3))
        return (self.k * d + self.k * (x.mean(dim=(1, 2, 3)) - 100.0)).unsqueeze(1)


class Brightness3d(nn.Module):
    """3D net whose p(fake) follows the clip's brightness: FAKE logit = 4 * (mean / 255 - 0.5)."""

    def __init__(self, gain: float = 4.0):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(gain))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3, 4)) / 255.0 - 0.5
        return torch.stack([self.g * m, torch.zeros_like(m)], 1)


def member(net: nn.Module, base: str, name: str, **spec_changes) -> MB.Member:
    spec = replace(get_spec(base), name=name, scaling="raw", **spec_changes)
    return MB.member_from_model(MemberModel(spec, net))


def two_halves_tube(t: int = 40, left: int = 200, right: int = 100, border: int = 255) -> np.ndarray:
    """A 256 tube: a 16 px border (outside the 224 centre crop) and left/right halves inside."""
    x = np.full((t, 256, 256, 3), border, np.uint8)
    x[:, 16:240, 16:128] = left
    x[:, 16:240, 128:240] = right
    return x


def scanner(members, **kw) -> S.Scanner:
    return S.Scanner(members=members, device="cpu", **kw)


# ----------------------------------------------------------------------------------------------
# Arithmetic


def test_3d_flip_tta_centre_crop_and_resize():
    n112, n224 = Asym3d(), Asym3d()
    sc = scanner([member(n112, "mc3_112", "a112"), member(n224, "mc3_224", "a224")])
    tubes = [SI.LoadedTube(0, 0, two_halves_tube(40), None), SI.LoadedTube(0, 1, two_halves_tube(40, 100, 200), None)]
    out = sc.score_tubes(tubes)
    # The border (255) is cropped away; left - right = +-100 -> logits 1.5 and -0.5 (its flip).
    expected = (sig(0.01 * 100 + 0.5) + sig(-0.01 * 100 + 0.5)) / 2
    for o in out:
        assert o["a112"] == pytest.approx(expected, abs=1e-6)
        assert o["a224"] == pytest.approx(expected, abs=1e-6)
    # Both tubes in one batch, whole tube (40 frames), 112 and 224 inputs; clip and its flip.
    assert n112.shapes == [(2, 3, 40, 112, 112)] * 2
    assert n224.shapes == [(2, 3, 40, 224, 224)] * 2


def test_3d_without_flip_tta_sees_one_view():
    net = Asym3d()
    sc = scanner([member(net, "mc3_112", "noflip", flip_tta=False)])
    (o,) = sc.score_tubes([SI.LoadedTube(0, 0, two_halves_tube(30), None)])
    assert o["noflip"] == pytest.approx(sig(1.5), abs=1e-6)


def test_tubes_of_different_lengths_are_batched_by_length():
    net = Asym3d()
    sc = scanner([member(net, "mc3_112", "a")], batch_size=2)
    lens = [40, 30, 40, 40, 30]
    out = sc.score_tubes([SI.LoadedTube(i, 0, two_halves_tube(n), None) for i, n in enumerate(lens)])
    assert len(out) == 5 and all("a" in o for o in out)
    assert sorted(s[0:3] for s in net.shapes[::2]) == sorted([(2, 3, 40), (1, 3, 40), (2, 3, 30)])
    assert S.batches_by_length([40, 30, 40, 40, 30], 2) == [[0, 2], [3], [1, 4]]


def test_2d_median_over_first_32_frames_every_other_flipped():
    net = Frame2d()
    sc = scanner([member(net, "seresnext50_2d", "f2d")])
    frames = np.zeros((40, 256, 256, 3), np.uint8)
    for t in range(40):  # left - right = 100 and mean = 100 + t: logit = +-1 + 0.01 t
        frames[t, :, :128] = 150 + t
        frames[t, :, 128:] = 50 + t
    (o,) = sc.score_tubes([SI.LoadedTube(0, 0, None, frames)])
    # Even frames are flipped (logit -1 + 0.01 t); only the first 32 frames count; lower median.
    p = [sig((-1.0 if t % 2 == 0 else 1.0) + 0.01 * t) for t in range(32)]
    assert o["f2d"] == pytest.approx(np.sort(p)[15], abs=1e-6)
    assert net.shapes == [(32, 3, 256, 256)]


def test_mean_over_faces_members_weights_and_clip():
    faces = {0: {"a": 0.2, "b": 0.6}, 1: {"a": 0.4, "b": 1.0}}

    def video():
        r = SR.VideoScan(video="/v.mp4", name="v.mp4", status=STATUS_OK)
        r.faces = [SR.FaceScore(i, 0, 99, 100, [0, 0, 10, 10], 0.99) for i in (0, 1)]
        return r

    r = EN.aggregate_video(video(), faces, ["a", "b"])
    assert r.members == {"a": pytest.approx(0.3), "b": pytest.approx(0.8)}
    assert r.p_fake == pytest.approx(0.55) and r.verdict == "FAKE" and r.n_faces == 2
    assert r.faces[0].p_fake == pytest.approx(0.4) and r.faces[1].p_fake == pytest.approx(0.7)
    r = EN.aggregate_video(video(), faces, ["a", "b"], weights={"a": 3, "b": 1})
    assert r.p_fake == pytest.approx((3 * 0.3 + 0.8) / 4) and r.verdict == "REAL"
    r = EN.aggregate_video(video(), faces, ["a", "b"], weights={"a": 0, "b": 1}, rule=0.9)
    assert r.p_fake == pytest.approx(0.8) and r.verdict == "REAL"
    # The clip to [0.001, 0.999], with the raw value kept.
    r = EN.aggregate_video(video(), {0: {"a": 1.0}, 1: {"a": 1.0}}, ["a"])
    assert r.p_fake == 0.999 and r.p_fake_raw == 1.0
    r = EN.aggregate_video(video(), {0: {"a": 0.0}, 1: {"a": 0.0}}, ["a"])
    assert r.p_fake == 0.001
    # A member that scored no face is left out of the mean, and said so.
    r = EN.aggregate_video(video(), {0: {"a": 0.2}, 1: {"a": 0.4}}, ["a", "b"])
    assert r.members["b"] is None and r.p_fake == pytest.approx(0.3) and "not scored by b" in r.reason


def test_no_face_and_error_keep_the_prior():
    for status in (STATUS_NO_FACE, STATUS_ERROR):
        r = EN.aggregate_video(SR.VideoScan("/v", "v", status, "why"), {}, ["a"])
        assert r.p_fake == 0.5 and r.verdict is None and r.members == {"a": None} and r.reason == "why"


def test_parse_weights():
    assert EN.parse_weights(None, ["a", "b"]) == {"a": 1.0, "b": 1.0}
    assert EN.parse_weights("a=2, b=0", ["a", "b"]) == {"a": 2.0, "b": 0.0}
    from dfdc_cli.errors import UserError

    for bad in ("c=1", "a", "a=x", "a=-1", "a=0,b=0"):
        with pytest.raises(UserError):
            EN.parse_weights(bad, ["a", "b"])


# ----------------------------------------------------------------------------------------------
# The scanner with a stand-in extractor (tube files written here)


def fake_extractor(tmp_path, spec: dict, keep_files: bool = False):
    """spec: video name -> list of tube brightness values, or "no_face", or "error".
    ``keep_files``: tube files already written are left alone (as the real tube store does)."""
    from dfdc_cli.faces.video import write_video

    def run(paths, device, workers, on_video):
        for i, p in reversed(list(enumerate(paths))):  # completion order != input order
            what = spec[p.name]
            if what == "no_face":
                on_video(i, SI.Extracted(str(p), p.name, STATUS_NO_FACE, "no face tube of >= 30 frames", 0.1, []))
            elif what == "error":
                on_video(i, SI.Extracted(str(p), p.name, STATUS_ERROR, "not a video", 0.0, []))
            else:
                rows = []
                for k, v in enumerate(what):
                    f = tmp_path / f"{p.stem}_tube{k}.mp4"
                    if not (keep_files and f.exists()):
                        write_video(f, np.full((30 + 5 * k, 256, 256, 3), v, np.uint8), 30.0)
                    rows.append(dict(tube_id=k, first_frame=0, last_frame=29 + 5 * k, n_frames=30 + 5 * k,
                                     x1=0, y1=0, x2=100, y2=100, mean_prob=0.99, tube_path=str(f),
                                     tube2d_path=""))
                on_video(i, SI.Extracted(str(p), p.name, STATUS_OK, "", 0.2, rows))

    return run


def test_scanner_orders_results_and_averages_faces(tmp_path):
    from dfdc_cli.faces.video import read_video

    ext = fake_extractor(tmp_path, {"a.mp4": [60, 200], "b.mp4": "no_face", "c.mp4": "error", "d.mp4": [128]})
    m1 = member(Brightness3d(4.0), "mc3_112", "bright")
    m2 = member(Brightness3d(-2.0), "r2plus1d_112", "dark")
    sc = scanner([m1, m2], extractor=ext, chunk_size=2)
    paths = [tmp_path / n for n in ("a.mp4", "b.mp4", "c.mp4", "d.mp4")]
    res = sc.scan(paths)
    assert [r.name for r in res] == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]

    def p_of(gain, file):  # what the member gives one tube (read back from its MP4)
        x = read_video(file).astype(np.float64)[:, 16:240, 16:240]
        return sig(gain * (x.mean() / 255 - 0.5))

    a = res[0]
    assert a.status == STATUS_OK and a.n_faces == 2 and a.verdict in ("FAKE", "REAL")
    exp = {name: [p_of(g, tmp_path / f"a_tube{k}.mp4") for k in (0, 1)] for name, g in (("bright", 4), ("dark", -2))}
    for name in ("bright", "dark"):
        assert a.members[name] == pytest.approx(np.mean(exp[name]), abs=1e-5)
        assert [f.members[name] for f in a.faces] == pytest.approx(exp[name], abs=1e-5)
    assert a.p_fake == pytest.approx((a.members["bright"] + a.members["dark"]) / 2, abs=1e-9)
    b, c = res[1], res[2]
    assert (b.status, b.p_fake, b.verdict, b.n_faces) == (STATUS_NO_FACE, 0.5, None, 0)
    assert (c.status, c.p_fake, c.verdict, c.reason) == (STATUS_ERROR, 0.5, None, "not a video")
    # A tube file that cannot be read: the video has no face left to score -> error with the reason.
    ext2 = fake_extractor(tmp_path, {"e.mp4": [90]})
    sc.extractor = ext2
    (tmp_path / "e_tube0.mp4").write_text("")  # never read: ext2 rewrites it
    res = sc.scan([tmp_path / "e.mp4"])
    assert res[0].status == STATUS_OK

    def broken(paths, device, workers, on_video):
        rows = [dict(tube_id=0, first_frame=0, last_frame=29, n_frames=30, x1=0, y1=0, x2=1, y2=1,
                     mean_prob=0.9, tube_path=str(tmp_path / "missing.mp4"), tube2d_path="")]
        on_video(0, SI.Extracted(str(paths[0]), paths[0].name, STATUS_OK, "", 0.0, rows))

    sc.extractor = broken
    (r,) = sc.scan([tmp_path / "f.mp4"])
    assert r.status == STATUS_ERROR and "tube 0" in r.reason and r.p_fake == 0.5


def test_extractor_failure_surfaces(tmp_path):
    def boom(paths, device, workers, on_video):
        raise RuntimeError("detector exploded")

    sc = scanner([member(Brightness3d(), "mc3_112", "x")], extractor=boom)
    with pytest.raises(RuntimeError, match="exploded"):
        sc.scan([tmp_path / "a.mp4"])


def test_submission_and_json(tmp_path):
    r1 = SR.VideoScan("/x/a.mp4", "a.mp4", STATUS_OK, p_fake=0.8, verdict="FAKE")
    r2 = SR.VideoScan("/x/b.mp4", "b.mp4", STATUS_NO_FACE, "no face")
    SR.write_submission(tmp_path / "s.csv", [r1, r2])
    assert (tmp_path / "s.csv").read_text() == "filename,label\na.mp4,0.800000\nb.mp4,0.500000\n"
    doc = SR.to_json([r1, r2], {"members": ["m"]})
    assert doc["videos"][1]["status"] == "no_face" and doc["videos"][1]["p_fake"] == 0.5


def test_tally_counts_and_exit_code():
    rs = [SR.VideoScan("/a", "a", STATUS_OK, verdict="FAKE", cached_members=["m"]),
          SR.VideoScan("/b", "b", STATUS_OK, verdict="REAL"), SR.VideoScan("/c", "c", STATUS_NO_FACE)]
    t = SR.Tally.of(rs)
    assert (t.videos, t.fake, t.real, t.no_face, t.failed, t.cached) == (3, 1, 1, 1, 0, 1)
    assert t.exit_code == 0  # a video with no face counts as scanned
    assert SR.Tally.of(rs + [SR.VideoScan("/d", "d", STATUS_ERROR)]).exit_code == 1


def test_scan_inputs_and_the_2d_note(tmp_path):
    from dfdc_cli.errors import UserError

    with pytest.raises(UserError, match="give video files or folders to scan"):
        SI.scan_inputs(None, None)
    with pytest.raises(UserError, match="no video files found"):
        SI.scan_inputs([tmp_path], None)
    (tmp_path / "a.mp4").write_bytes(b"")
    assert SI.scan_inputs([tmp_path], None) == ([tmp_path / "a.mp4"], None)
    items = [SI.Extracted("/v", "v", STATUS_OK, "", 0.0, [{"tube_id": 0, "tube2d_path": ""},
                                                          {"tube_id": 1, "tube2d_path": "t_2d.mp4"}])]
    two, three = MB.Member("f2d", "2d", 256, None), MB.Member("m3", "3d", 112, None)
    assert SI.missing_2d_note([three, two], items) == (
        "1 tubes of the index have no 2D crops (extract --with-2d makes them); f2d does not score those")
    assert SI.missing_2d_note([three], items) is None


def test_resolve_members_checks_names():
    from dfdc_cli.errors import UserError

    assert MB.resolve_members(["mc3_112", "i3d_224"]) == ["mc3_112", "i3d_224"]
    with pytest.raises(UserError, match="nope_3"):
        MB.resolve_members(["nope_3"])


# ----------------------------------------------------------------------------------------------
# End to end: real extraction of real clips, small registered members, the CLI


def table_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]| {2,}", line)]
        cells = [c for c in cells if c != ""]
        if cells and cells[0].endswith(".mp4"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_scan_cli_end_to_end(tmp_path, monkeypatch, capsys, carphone, bikes, tiny_members):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n")
    js, sub = tmp_path / "scan.json", tmp_path / "sub.csv"
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, bikes, bad, "--workers", "1",
                             "--json", js, "--csv", sub)
    assert code == 1, err  # an unreadable video -> nonzero
    doc = json.loads(js.read_text())
    assert doc["members"] == tiny_members and doc["clip"] == [0.001, 0.999]
    v = {Path_name(x["video"]): x for x in doc["videos"]}
    car, bk, nv = v["carphone_pristine.mp4"], v["bikes.mp4"], v["notes.mp4"]
    assert car["status"] == "ok" and car["n_faces"] == 1 and car["verdict"] in ("FAKE", "REAL")
    face = car["faces"][0]
    assert face["n_frames"] >= 30 and face["last_frame"] <= 99  # the scan preset: first 100 frames
    assert set(face["members"]) == set(tiny_members)  # the 2D member got its *_2d.mp4 crops
    assert car["p_fake"] == pytest.approx(np.mean([car["members"][m] for m in tiny_members]), abs=1e-9)
    assert bk["status"] == "no_face" and bk["p_fake"] == 0.5 and bk["verdict"] is None
    assert nv["status"] == "error" and nv["reason"] and nv["p_fake"] == 0.5
    # The table shows what the JSON says.
    rows = table_rows(out)
    assert set(rows) == {"carphone_pristine.mp4", "bikes.mp4", "notes.mp4"}
    r = rows["carphone_pristine.mp4"]
    assert r[1] == "1"
    assert r[2:5] == [f"{car['members'][m]:.3f}" for m in tiny_members]
    assert r[5] == f"{car['p_fake']:.3f}" and r[6] == car["verdict"]
    assert rows["bikes.mp4"][1] == "0" and "no face" in " ".join(rows["bikes.mp4"])
    assert rows["notes.mp4"][6] == "ERROR" and rows["bikes.mp4"][6] == "NO FACE"
    assert sub.read_text().splitlines() == [
        "filename,label", f"carphone_pristine.mp4,{car['p_fake']:.6f}", "bikes.mp4,0.500000", "notes.mp4,0.500000"]

    # Second run: tubes come from the cache; only readable videos -> exit 0 (no face counts as scanned).
    monkeypatch.setattr("dfdc_cli.faces.extract.run.run_pool", lambda *a, **k: pytest.fail("no worker needed for cache hits"))
    code, out2, err = run_cli(monkeypatch, capsys, "scan", carphone, bikes, "--members", "mc3_112",
                              "--workers", "1", "--json", js)
    assert code == 0, err
    doc2 = json.loads(js.read_text())
    car2 = doc2["videos"][0]
    assert doc2["members"] == ["mc3_112"]
    assert car2["p_fake"] == pytest.approx(car["members"]["mc3_112"], abs=1e-6)


def Path_name(p: str) -> str:
    from pathlib import Path

    return Path(p).name


def test_scan_without_models_says_how_to_get_one(monkeypatch, capsys, carphone, tmp_path):
    from dfdc_models import builtin

    monkeypatch.setattr(builtin, "folder", lambda: tmp_path)  # an installation that ships no built-in model
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone)
    assert code == 2
    assert "deepfake train" in err and "deepfake models import" in err


def test_scan_unknown_member(monkeypatch, capsys, carphone, tiny_members):
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, "--members", "nope_3")
    assert code == 2 and "unknown member" in err
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, "--members", "i3d_224")
    assert code == 2 and "no registered model" in err


def test_prepare_3d_matches_the_seeds_opencv_resize():
    import cv2

    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 256, 256, 3), dtype=np.uint8))
    got = MB.prepare_3d(x, 112)
    # The seed resized the float centre crop and normalised it without rounding back to uint8.
    assert got.dtype == torch.float32
    ref = np.stack([np.stack([cv2.resize(f[16:240, 16:240].astype(np.float64), (112, 112),
                                         interpolation=cv2.INTER_LINEAR) for f in v]) for v in x.numpy()])
    assert np.array_equal(got.permute(0, 2, 3, 4, 1).numpy(), ref)
    assert not np.array_equal(got.permute(0, 2, 3, 4, 1).numpy(), np.round(ref))
    # Training validates a member on exactly what scan hands it (one resize, no re-quantising).
    from dfdc_cli.train import augment

    val = augment.apply_clip_params(x[0].numpy(), augment.val_clip_params(256, 256, augment.CLIP_DEFAULTS), 112,
                                    quantise=False)
    assert torch.equal(val, got[0])
    for res in (56, 160):  # not an exact halving: bilinear, still as OpenCV on the float crop
        odd = MB.prepare_3d(x, res).permute(0, 2, 3, 4, 1).numpy()
        ref = cv2.resize(x[0, 0, 16:240, 16:240].numpy().astype(np.float32), (res, res), interpolation=cv2.INTER_LINEAR)
        assert np.abs(odd[0, 0] - ref).max() < 0.01  # (OpenCV rounds its float weights a little)
    assert torch.equal(MB.prepare_3d(x, 224).permute(0, 2, 3, 4, 1), x[:, :, 16:240, 16:240])
    assert MB.prepare_3d(x, 256).shape == (2, 3, 3, 256, 256)


def test_out_of_device_memory_halves_the_batch(capsys):
    seen = []

    def predict(x):
        seen.append(x.shape[0])
        if x.shape[0] > 1 or x.shape[2] == 30:  # batches never fit; a 30-frame tube never fits
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return torch.full((x.shape[0],), 0.25)

    sc = scanner([MB.Member("oom", "3d", 112, predict)], batch_size=4)
    out = sc.score_tubes([SI.LoadedTube(i, 0, two_halves_tube(n), None) for i, n in enumerate([40, 40, 40, 30])])
    assert [o.get("oom") for o in out] == [0.25, 0.25, 0.25, None]
    assert seen == [3, 1, 2, 1, 1, 1]
