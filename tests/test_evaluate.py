"""`deepfake eval`: labels, figures per member / ensemble at video and tube level, the report folder."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from dfdc_cli.evaluate import report as E
from dfdc_cli.evaluate import metrics as M
from dfdc_cli.errors import UserError
from dfdc_cli.scan.ensemble import aggregate_video
from dfdc_cli.scan.results import FaceScore, VideoScan

from cli_util import run_cli


def test_labels_from_csv(tmp_path):
    (tmp_path / "sub").mkdir()
    csv = tmp_path / "sub" / "val.csv"
    csv.write_text("filename,label\na.mp4,FAKE\nb.mp4,real\nc.mp4,1\n/abs/d.mp4,0\n")
    items = E.labels_from_csv(csv)
    assert [(i.name, i.label) for i in items] == [("a.mp4", 1), ("b.mp4", 0), ("c.mp4", 1), ("d.mp4", 0)]
    assert items[0].video == tmp_path / "sub" / "a.mp4"  # relative to the CSV's folder
    assert str(items[3].video) == "/abs/d.mp4"
    csv.write_text("filename,label\na.mp4,maybe\n")
    with pytest.raises(UserError, match="row 2"):
        E.labels_from_csv(csv)
    csv.write_text("file_name,y\na.mp4,1\n")
    with pytest.raises(UserError, match="filename,label"):
        E.labels_from_csv(csv)


def test_labels_from_metadata_and_missing_files(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "metadata.json").write_text(json.dumps({
        "a.mp4": {"label": "FAKE", "split": "train", "original": "o.mp4"},
        "b.mp4": {"label": "REAL", "split": "train", "original": None}}))
    present, missing = E.gather_labels(None, [tmp_path])  # a folder holding metadata.json works
    assert [(i.name, i.label, i.original) for i in present] == [("a.mp4", 1, "o.mp4")]
    assert [i.name for i in missing] == ["b.mp4"]
    with pytest.raises(UserError):
        E.gather_labels(None, [])
    (tmp_path / "metadata.json").write_text(json.dumps({"b.mp4": {"label": "REAL"}}))
    with pytest.raises(UserError, match="none of the 1"):
        E.gather_labels(None, [tmp_path / "metadata.json"])


def synthetic():
    """Four videos: two fakes, one real, one real with no face; members a and b."""
    spec = [("f1.mp4", 1, [{"a": 0.9, "b": 0.7}, {"a": 0.5, "b": 0.3}]),
            ("f2.mp4", 1, [{"a": 0.6, "b": 0.2}]),
            ("r1.mp4", 0, [{"a": 0.1, "b": 0.4}]),
            ("r2.mp4", 0, None)]
    results, items = [], []
    for name, y, faces in spec:
        r = VideoScan(f"/v/{name}", name, "ok" if faces else "no_face", "" if faces else "no face found")
        scores = {}
        for k, f in enumerate(faces or []):
            r.faces.append(FaceScore(k, 0, 99, 100, [0, 0, 1, 1], 0.9))
            scores[k] = f
        aggregate_video(r, scores, ["a", "b"])
        results.append(r)
        items.append(E.Labelled(r.video, name, y))
    return results, items


def test_video_and_tube_figures():
    results, items = synthetic()
    rep = E.evaluate_results(results, items, ["a", "b"])
    assert rep["counts"] == {"videos": 4, "fake": 2, "real": 2, "ok": 3, "no_face": 1, "error": 0, "tubes": 4}
    y = [1, 1, 0, 0]
    pa = [0.7, 0.6, 0.1, 0.5]  # member a: mean over faces; the no-face video keeps the prior 0.5
    pb = [0.5, 0.2, 0.4, 0.5]
    pe = [(0.7 + 0.5) / 2, 0.4, 0.25, 0.5]
    v = rep["video"]
    assert v["a"]["log_loss"] == pytest.approx(M.log_loss(y, pa))
    assert v["a"]["roc_auc"] == pytest.approx(M.roc_auc(y, pa))
    assert v["b"]["roc_auc"] == pytest.approx(M.roc_auc(y, pb))
    assert v["ensemble"]["log_loss"] == pytest.approx(M.log_loss(y, pe))
    assert v["ensemble"]["accuracy"] == pytest.approx(0.5)  # 0.6 F ok, 0.4 R wrong, 0.25 R ok, 0.5 F wrong
    # Tube level: 4 tubes (the no-face video has none), each with its video's label.
    t = rep["tube"]
    assert t["a"]["n"] == 4 and t["a"]["n_fake"] == 3
    assert t["a"]["roc_auc"] == pytest.approx(M.roc_auc([1, 1, 1, 0], [0.9, 0.5, 0.6, 0.1]))
    assert t["ensemble"]["log_loss"] == pytest.approx(M.log_loss([1, 1, 1, 0], [0.8, 0.4, 0.4, 0.25]))


def test_bootstrap_intervals_in_report():
    results, items = synthetic()
    rep = E.evaluate_results(results, items, ["a", "b"], bootstrap=50, seed=1)
    ci = rep["video"]["ensemble"]["ci"]["log_loss"]
    assert ci["lo"] <= rep["video"]["ensemble"]["log_loss"] <= ci["hi"]
    again = E.evaluate_results(results, items, ["a", "b"], bootstrap=50, seed=1)
    assert again["tube"]["a"]["ci"] == rep["tube"]["a"]["ci"]


def test_report_folder(tmp_path):
    results, items = synthetic()
    rep = E.evaluate_results(results, items, ["a", "b"], bootstrap=20)
    meta = {"members": ["a", "b"], "weights": {"a": 1.0, "b": 1.0}, "date": "today", "sources": ["x"],
            "bootstrap": 20, "seed": 0}
    paths = E.write_report(tmp_path / "rep", results, items, rep, meta)
    for key in ("metrics", "videos", "tubes", "roc", "calibration", "summary_md", "summary_html", "scan"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    for png in ("roc", "calibration"):
        assert paths[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(paths["metrics"].read_text())
    assert doc["video"]["ensemble"]["log_loss"] == pytest.approx(rep["video"]["ensemble"]["log_loss"])
    assert doc["counts"]["no_face"] == 1 and "_tables" not in doc
    import pandas as pd

    df = pd.read_csv(paths["videos"])
    assert list(df["filename"]) == ["f1.mp4", "f2.mp4", "r1.mp4", "r2.mp4"]
    assert df.loc[3, "status"] == "no_face" and df.loc[3, "p_fake"] == 0.5
    assert len(pd.read_csv(paths["tubes"])) == 4
    md = paths["summary_md"].read_text()
    assert "## Video level" in md and "| ensemble |" in md and "## Tube level" in md
    assert "<table>" in paths["summary_html"].read_text()


def test_one_class_report_has_nan_not_crash(tmp_path):
    results, items = synthetic()
    results, items = results[:2], items[:2]  # fakes only
    rep = E.evaluate_results(results, items, ["a", "b"], bootstrap=10)
    assert math.isnan(rep["video"]["ensemble"]["roc_auc"])
    paths = E.write_report(tmp_path / "rep", results, items, rep, {"members": ["a", "b"]})
    doc = json.loads(paths["metrics"].read_text())
    assert doc["video"]["ensemble"]["roc_auc"] is None  # NaN is written as null
    assert "only FAKE" in paths["summary_md"].read_text()


@pytest.mark.slow
def test_eval_cli_end_to_end(tmp_path, monkeypatch, capsys, carphone, bikes, tiny_members):  # noqa: F811
    data = tmp_path / "part"
    data.mkdir()
    shutil.copy(carphone, data / "carphone.mp4")
    shutil.copy(bikes, data / "bikes.mp4")
    (data / "metadata.json").write_text(json.dumps({
        "carphone.mp4": {"label": "REAL", "split": "train", "original": None},
        "bikes.mp4": {"label": "FAKE", "split": "train", "original": "x.mp4"},
        "gone.mp4": {"label": "FAKE", "split": "train", "original": "x.mp4"}}))
    out = tmp_path / "report"
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "--metadata", data / "metadata.json",
                                "--out", out, "--bootstrap", "20", "--workers", "1", width=80)
    assert code == 0, err
    assert "1 labelled videos are missing" in err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["counts"] == {"videos": 2, "fake": 1, "real": 1, "ok": 1, "no_face": 1, "error": 0, "tubes": 1}
    assert set(doc["video"]) == set(tiny_members) | {"ensemble"}
    scan = json.loads((out / "scan.json").read_text())
    car = next(v for v in scan["videos"] if v["name"] == "carphone.mp4")
    y, p = [0, 1], [car["p_fake"], 0.5]  # in metadata order: carphone (REAL), bikes (FAKE, no face)
    assert doc["video"]["ensemble"]["log_loss"] == pytest.approx(M.log_loss(y, p), abs=1e-9)
    assert doc["video"]["ensemble"]["roc_auc"] == (1.0 if car["p_fake"] < 0.5 else 0.0 if car["p_fake"] > 0.5 else 0.5)
    assert doc["tube"]["ensemble"]["n"] == 1
    for f in ("videos.csv", "tubes.csv", "roc.png", "calibration.png", "summary.md", "summary.html"):
        assert (out / f).is_file(), f
    assert "ensemble" in stdout and "video level" in stdout and "tube level" in stdout
    assert max(map(len, stdout.splitlines())) <= 80 and "…" not in stdout  # a terminal of 80 columns

    # --calibrate on two videos (one scored): the report is written, the fit says why it cannot be
    # made, and the exit code says it failed.
    out2 = tmp_path / "report2"
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "--metadata", data / "metadata.json",
                                "--out", out2, "--workers", "1", "--calibrate")
    assert code == 1 and "no calibration fitted" in err and "at least 5 of each" in err
    assert (out2 / "metrics.json").is_file() and not (out2 / "calibration.json").exists()
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "--metadata", data / "metadata.json",
                                "--out", tmp_path / "report3", "--calibrate", "--band", "odds:0")
    assert code == 2 and "--band" in err and not (tmp_path / "report3").exists()  # refused before the scan


def test_eval_set_labels_the_results_and_the_meta_names_the_sources(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "metadata.json").write_text(json.dumps({"a.mp4": {"label": "FAKE"}, "b.mp4": {"label": "REAL"}}))
    es = E.eval_set(None, [tmp_path])
    assert es.videos == [(tmp_path / "a.mp4").absolute()] and [it.label for it in es.labels] == [1]
    assert es.items is None and es.missing == 1  # b.mp4 is not there
    results = [VideoScan(str(es.videos[0]), "a.mp4", "ok")]
    E.label_results(results, es.labels)
    assert results[0].label == "FAKE"
    meta = E.report_meta({"members": ["m"]}, None, [tmp_path], None, es.missing, 0, 3)
    assert meta["members"] == ["m"] and meta["sources"] == [str(tmp_path)]
    assert (meta["missing"], meta["bootstrap"], meta["seed"]) == (1, 0, 3)


def test_a_metric_added_in_one_place_reaches_every_report(tmp_path, monkeypatch):
    """metrics.METRICS is the one place: a new row there is computed, bootstrapped, written to
    metrics.json and shown in summary.md / summary.html and eval's table."""
    from dfdc_cli.commands.evaluate import metrics_table
    from rich.console import Console

    monkeypatch.setitem(M.METRICS, "fake_rate", M.Metric(lambda y, p: float((p >= 0.5).mean()), "FAKE rate"))
    results, items = synthetic()
    rep = E.evaluate_results(results, items, ["a", "b"], bootstrap=10)
    assert rep["video"]["ensemble"]["fake_rate"] == pytest.approx(0.5)  # 0.6 and 0.5 of 0.6, 0.4, 0.25, 0.5
    assert "fake_rate" in rep["video"]["a"]["ci"]
    meta = {"members": ["a", "b"], "weights": {"a": 1.0, "b": 1.0}, "date": "today", "sources": ["x"]}
    paths = E.write_report(tmp_path / "rep", results, items, rep, meta)
    assert json.loads(paths["metrics"].read_text())["tube"]["b"]["fake_rate"] is not None
    assert "FAKE rate" in paths["summary_md"].read_text() and "FAKE rate" in paths["summary_html"].read_text()
    console = Console(width=200, record=True)
    console.print(metrics_table(rep["video"], "video level"))
    assert "FAKE rate" in console.export_text()
