"""Calibrated p(fake): fitting on synthetic held-out scores whose true calibration is known, the
UNSURE band's rules, the record with the model (registry entry and built-in model), and how scan's
arithmetic applies it (per member, before the average)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dfdc_cli.evaluate import calibrate as CB
from dfdc_cli.scan import ensemble as EN
from dfdc_cli.evaluate import metrics as M
from dfdc_cli.errors import UserError
from dfdc_cli.scan.results import FaceScore, VideoScan
from dfdc_models.calibration import Calibration, logit, sigmoid


def miscalibrated(n: int, slope: float, shift: float, seed: int = 0):
    """Labels drawn from a true p(fake) = sigmoid(z), and the score of an over/under-confident,
    shifted model: s = sigmoid(slope * z + shift). The calibration that undoes it is Platt with
    a = 1 / slope, b = -shift / slope."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < sigmoid(z)).astype(float)
    return y, sigmoid(slope * z + shift)


def test_platt_recovers_the_map_that_undoes_a_known_miscalibration():
    y, s = miscalibrated(20000, slope=3.0, shift=1.0)
    p = CB.fit_platt(y, s)
    assert p["a"] == pytest.approx(1 / 3, abs=0.02) and p["b"] == pytest.approx(-1 / 3, abs=0.04)
    cal = Calibration("platt", p, 0.5, 0.5)
    assert M.log_loss(y, cal.apply(s)) < M.log_loss(y, s) - 0.1
    assert M.calibration_bins(y, cal.apply(s))["ece"] < 0.02 < M.calibration_bins(y, s)["ece"]


def test_temperature_recovers_an_overconfident_models_temperature():
    y, s = miscalibrated(20000, slope=2.0, shift=0.0, seed=1)
    assert CB.fit_temperature(y, s)["t"] == pytest.approx(2.0, rel=0.05)


def test_isotonic_is_monotone_and_fits_in_sample():
    y, s = miscalibrated(400, slope=3.0, shift=1.0, seed=2)
    p = CB.fit_isotonic(y, s)
    cal = Calibration.from_dict(Calibration("isotonic", p, 0.5, 0.5).to_dict())  # valid as recorded
    xs = np.linspace(0, 1, 101)
    assert np.all(np.diff(cal.apply(xs)) >= 0)
    assert M.log_loss(y, cal.apply(s)) < M.log_loss(y, s)


def test_small_held_out_set_platt_beats_the_raw_score_out_of_sample_and_keeps_the_order():
    # 100 videos, as held-out sets here are: the cross-validated log loss is what a new video gets.
    y, s = miscalibrated(100, slope=4.0, shift=1.5, seed=3)
    cal, p_cv = CB.fit(y, s, member="m", model_id="abc")
    f = cal.fitted_on
    assert f["n"] == 100 and f["n_fake"] + f["n_real"] == 100
    assert f["after_cv"]["log_loss"] < f["before"]["log_loss"]
    assert f["after"]["log_loss"] <= f["after_cv"]["log_loss"] + 1e-9  # in sample flatters
    assert M.log_loss(y, p_cv) == pytest.approx(f["after_cv"]["log_loss"])
    order = np.argsort(s)
    assert np.all(np.diff(cal.apply(s)[order]) >= 0)  # a calibration never reorders videos (AUC kept)
    assert M.roc_auc(y, cal.apply(s)) == pytest.approx(M.roc_auc(y, s))
    assert set(f["cv"]["log_loss_by_method"]) == {"platt", "temperature", "isotonic"}


def test_folds_are_stratified_and_cover_every_video_once():
    y = np.array([1] * 13 + [0] * 27, float)
    fs = CB.folds(y)
    assert sorted(np.concatenate(fs).tolist()) == list(range(40))
    assert all(2 <= y[f].sum() <= 3 for f in fs)


def test_fit_refuses_too_few_videos_and_reversed_scores():
    y, s = miscalibrated(100, 2.0, 0.0, seed=4)
    keep = np.r_[np.flatnonzero(y == 1)[:4], np.flatnonzero(y == 0)]
    with pytest.raises(UserError, match="at least 5 of each"):
        CB.fit(y[keep], s[keep])
    with pytest.raises(UserError, match="does not rise with fakeness"):
        CB.fit(y, 1.0 - s)


def test_odds_band_is_chows_rule_and_is_checked_on_the_data():
    y, s = miscalibrated(150, 3.0, 1.0, seed=5)
    lo, hi, rule = CB.choose_band(y, s, "odds:2")
    assert (lo, hi) == pytest.approx((1 / 3, 2 / 3)) and "2:1" in rule
    cal, _ = CB.fit(y, s, band="odds:2")
    chk = cal.fitted_on["band_check_cv"]
    assert chk["promise"] == pytest.approx(1 / 3)
    # The check's counts add up, and it says whether the decided verdicts keep the promise.
    assert chk["unsure"] + chk["fake_verdicts"] + chk["real_verdicts"] == chk["n"] == 150
    assert chk["within_promise"] == (chk["error_rate_decided"] <= 1 / 3)
    assert CB.choose_band(y, s, "none")[:2] == (0.5, 0.5)


def test_rates_band_meets_both_rates_and_is_the_narrowest_that_does():
    rng = np.random.default_rng(6)
    y = np.r_[np.ones(40), np.zeros(60)]
    p = np.r_[rng.beta(4, 2, 40), rng.beta(2, 4, 60)]  # overlapping classes
    lo, hi, _ = CB.choose_band(y, p, "rates:0.1,0.05")
    real, fake = p[y == 0], p[y == 1]
    assert np.mean(real >= hi) <= 0.1 and np.mean(fake < lo) <= 0.05
    # one value further in on either side breaks its rate
    below = real[real < hi].max()
    assert np.mean(real >= below) > 0.1
    above = fake[fake >= lo].min()
    assert np.mean(fake < np.nextafter(above, 2)) > 0.05
    assert lo < hi
    # separable classes: the two thresholds meet, one threshold between them, nothing UNSURE
    lo2, hi2, _ = CB.choose_band(np.r_[np.ones(10), np.zeros(10)], np.r_[np.full(10, 0.9), np.full(10, 0.1)],
                                 "rates:0.05,0.05")
    assert lo2 == hi2 and 0.1 < hi2 <= 0.9


def test_band_check_counts_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.5, 0.2, 0.8, 0.5, 0.1])
    c = CB.band_check(y, p, 0.4, 0.6)
    assert (c["fake_verdicts"], c["real_verdicts"], c["unsure"]) == (2, 2, 2)
    assert c["false_positive_rate"] == pytest.approx(1 / 3) and c["false_negative_rate"] == pytest.approx(1 / 3)
    assert c["error_rate_decided"] == pytest.approx(0.5) and (c["unsure_fake"], c["unsure_real"]) == (1, 1)


def test_parse_band_errors():
    for bad in ("odds", "odds:0.5", "rates:0.1", "rates:1,0.1", "wide", "odds:x"):
        with pytest.raises(UserError, match="--band"):
            CB.parse_band(bad)


def test_the_record_round_trips_and_a_damaged_one_says_what_is_wrong():
    c = Calibration("platt", {"a": 0.5, "b": -0.2}, 0.3, 0.7, "r", {"n": 3})
    d = json.loads(json.dumps(c.to_dict()))
    back = Calibration.from_dict(d)
    assert back.apply(0.9) == pytest.approx(c.apply(0.9)) == pytest.approx(float(sigmoid(0.5 * logit(0.9) - 0.2)))
    assert back.verdict(0.69) == "UNSURE" and back.verdict(0.7) == "FAKE" and back.verdict(0.29) == "REAL"
    for change, why in [({"method": "spline"}, "method"), ({"version": 9}, "version"),
                        ({"params": {"a": -1, "b": 0}}, "> 0"), ({"params": {"a": float("nan"), "b": 0}}, "finite"),
                        ({"params": {"a": 1}}, "lacks b"), ({"lo": 0.8}, "lo <= hi"),
                        ({"method": "isotonic", "params": {"x": [0.2, 0.1], "y": [0, 1]}}, "rise")]:
        with pytest.raises(ValueError, match=why):
            Calibration.from_dict({**d, **change})


def test_calibrate_report_writes_strict_json_and_the_plot(tmp_path):
    y, s = miscalibrated(80, 3.0, 1.0, seed=7)
    videos = [{"name": f"v{i}.mp4", "status": "ok", "label": "FAKE" if t else "REAL", "members": {"m1": float(x)}}
              for i, (t, x) in enumerate(zip(y, s))]
    videos.append({"name": "noface.mp4", "status": "no_face", "label": "FAKE", "members": {"m1": None}})
    doc = CB.calibrate_report(videos, {"m1": "abc123"}, tmp_path, source="test")
    back = json.loads((tmp_path / "calibration.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    rec = back["members"]["m1"]
    assert rec["model_id"] == "abc123" and rec["calibration"]["fitted_on"]["n"] == 80  # no-face video left out
    assert doc["members"]["m1"]["calibration"] == rec["calibration"]
    png = (tmp_path / rec["plot"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    cal = Calibration.from_dict(rec["calibration"])
    line = CB.summary_line("m1", cal)
    assert "log loss" in line and f"{cal.fitted_on['before']['log_loss']:.3f}" in line


# ----------------------------------------------------------------------------------------------
# Recorded with the model


def fitted(model_id: str, member: str = "mc3_112") -> dict:
    y, s = miscalibrated(60, 3.0, 1.0, seed=8)
    cal, _ = CB.fit(y, s, member=member, model_id=model_id)
    return {"members": {member: {"model_id": model_id, "calibration": cal.to_dict()}}}


def test_record_in_a_registry_entry_and_scan_uses_it(tiny_members):
    from dfdc_cli.scan import members as MB
    from dfdc_cli.errors import UserError as UE
    from dfdc_models import store

    e = store.active("mc3_112")
    assert store.load("mc3_112").calibration is None  # nothing recorded: today's behaviour
    lines = CB.record(fitted(e.model_id))
    assert "registry entry" in lines[0]
    e2 = store.get_entry("mc3_112", e.model_id)
    assert e2.sha256 == e.sha256 and e2.calibration["method"] == "platt"
    m = MB.load_member("mc3_112", "cpu")
    assert m.calibration is not None and m.calibration.apply(0.9) == pytest.approx(Calibration.from_dict(
        e2.calibration).apply(0.9))
    with pytest.raises(UE, match="no model of mc3_112 matches"):
        CB.record(fitted("000000000000"))
    # a damaged record is an error naming the manifest, never a silent fallback to the raw score
    bad = json.loads((e2.path / store.MANIFEST).read_text())
    bad["calibration"]["params"]["a"] = -2
    (e2.path / store.MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(UE, match=r"manifest\.json: damaged calibration"):
        MB.load_member("mc3_112", "cpu")


def test_record_in_the_builtin_model(tmp_path):
    from dfdc_models import builtin

    (tmp_path / "w.pt").write_bytes(b"weights")
    (tmp_path / "builtin.json").write_text(json.dumps({"member": "resnet18_160", "weights": "w.pt", "x": 1}))
    mid = builtin.model_id(tmp_path)
    assert mid.startswith("builtin-") and builtin.calibration(tmp_path) is None
    CB.record(fitted(mid, "resnet18_160"), tmp_path)
    meta = json.loads((tmp_path / "builtin.json").read_text())
    assert meta["x"] == 1 and meta["member"] == "resnet18_160"  # the rest is kept
    assert builtin.calibration(tmp_path).method == "platt"
    with pytest.raises(UserError, match="fitted on the built-in model builtin-00"):
        CB.record(fitted("builtin-00000000", "resnet18_160"), tmp_path)
    # --to-builtin: a registered model's fit, recorded in its exported built-in copy (same member only)
    doc = fitted("0123456789ab", "resnet18_160")
    line = CB.record(doc, tmp_path, to_builtin=True)[0]
    assert "fitted on 0123456789ab" in line
    assert builtin.calibration(tmp_path).fitted_on["model_id"] == "0123456789ab"
    with pytest.raises(UserError, match="is resnet18_160, not mc3_112"):
        CB.record(fitted("0123456789ab", "mc3_112"), tmp_path, to_builtin=True)
    meta = json.loads((tmp_path / "builtin.json").read_text())
    meta["calibration"]["hi"] = 2
    (tmp_path / "builtin.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"builtin\.json: damaged calibration"):
        builtin.calibration(tmp_path)


def test_the_shipped_builtin_model_keeps_todays_rule_or_records_a_valid_one():
    from dfdc_models import builtin

    if builtin.info() is None:
        pytest.skip("this installation ships no built-in model")
    c = builtin.calibration()  # raises on a damaged record
    rule = EN.verdict_rule({"b": c})
    assert (rule.lo, rule.hi) == ((0.5, 0.5) if c is None else (c.lo, c.hi))


# ----------------------------------------------------------------------------------------------
# Applied in scan's arithmetic


def cal(a: float, b: float, lo: float = 1 / 3, hi: float = 2 / 3) -> Calibration:
    return Calibration("platt", {"a": a, "b": b}, lo, hi)


def test_verdict_rule_per_member_calibrations_and_bands():
    c1, c2 = cal(0.5, 0.0), cal(1.0, -1.0, 0.4, 0.7)
    r = EN.verdict_rule({"a": c1, "b": c2})
    assert r.calibrated and (r.lo, r.hi) == (1 / 3, 0.7)  # the widest band
    assert r.verdict(0.35) == "UNSURE" and r.verdict(0.69) == "UNSURE" and r.verdict(0.7) == "FAKE"
    r = EN.verdict_rule({"a": c1, "b": None})
    assert not r.calibrated and (r.lo, r.hi) == (0.5, 0.5) and "b records none" in r.note
    r = EN.verdict_rule({"a": c1, "b": None}, weights={"a": 1, "b": 0})  # b left out: a alone
    assert r.calibrated and list(r.calibrations) == ["a"]
    r = EN.verdict_rule({"a": c1}, threshold=0.8)  # --threshold: one threshold on the calibrated p
    assert r.calibrated and (r.lo, r.hi) == (0.8, 0.8) and r.verdict(0.79) == "REAL"
    assert EN.verdict_rule({"a": None}) == EN.VerdictRule.single(0.5)


def video(*face_members) -> VideoScan:
    faces = [FaceScore(tube_id=i, first_frame=0, last_frame=39, n_frames=40, box=[0, 0, 9, 9], mean_prob=0.99)
             for i in range(len(face_members))]
    return VideoScan(video="/v.mp4", name="v.mp4", status="ok", faces=faces)


def test_calibration_applies_per_member_before_the_average():
    c1, c2 = cal(0.5, 0.0), cal(2.0, 0.5)
    rule = EN.verdict_rule({"a": c1, "b": c2})
    scores = {0: {"a": 0.9, "b": 0.6}, 1: {"a": 0.7, "b": 0.2}}
    r = EN.aggregate_video(video(*scores.values()), scores, ["a", "b"], None, rule)
    raw_a, raw_b = 0.8, 0.4
    assert r.members == pytest.approx({"a": raw_a, "b": raw_b})  # the models' scores stay raw
    assert r.members_calibrated == pytest.approx({"a": c1.apply(raw_a), "b": c2.apply(raw_b)})
    assert r.p_fake_raw == pytest.approx((raw_a + raw_b) / 2)
    assert r.p_fake == pytest.approx((c1.apply(raw_a) + c2.apply(raw_b)) / 2)
    assert r.verdict == rule.verdict(r.p_fake)
    # without a calibration: today's arithmetic and one threshold
    r0 = EN.aggregate_video(video(*scores.values()), scores, ["a", "b"], None, 0.5)
    assert r0.members_calibrated == {} and r0.p_fake == pytest.approx(0.6) and r0.verdict == "FAKE"


def test_unsure_band_verdict():
    rule = EN.verdict_rule({"a": cal(1.0, 0.0)})  # identity map, band [1/3, 2/3)
    for raw, want in [(0.2, "REAL"), (0.5, "UNSURE"), (0.66, "UNSURE"), (0.9, "FAKE")]:
        r = EN.aggregate_video(video({"a": raw}), {0: {"a": raw}}, ["a"], None, rule)
        assert r.verdict == want and not r.weak and r.model_verdict is None


def test_weak_video_is_unsure_whatever_its_score():
    v = video({"a": 0.99})
    v.weak = True
    r = EN.aggregate_video(v, {0: {"a": 0.99}}, ["a"], None, 0.5)
    assert r.verdict == "UNSURE" and r.model_verdict == "FAKE" and r.reason == "weak: low-threshold face; scores say FAKE"
    assert math.isclose(r.p_fake, 0.99)  # the score itself is kept (and the submission's value)


# ----------------------------------------------------------------------------------------------
# The commands, as the lead runs them: `deepfake models calibrate REPORT`, then `deepfake scan`


def synthetic_report(folder, member: str, model_id: str, n: int = 60):
    """An eval report's scan.json with labelled, scored videos (and one without a face)."""
    y, s = miscalibrated(n, 3.0, 1.0, seed=9)
    videos = [{"name": f"v{i}.mp4", "status": "ok", "label": "FAKE" if t else "REAL", "members": {member: float(x)}}
              for i, (t, x) in enumerate(zip(y, s))]
    videos.append({"name": "nf.mp4", "status": "no_face", "label": "REAL", "members": {member: None}})
    folder.mkdir()
    (folder / "scan.json").write_text(json.dumps({"members": [member], "models": {member: model_id},
                                                  "videos": videos}))
    return y, s


def test_models_calibrate_command_records_with_the_registered_model(tmp_path, monkeypatch, capsys, tiny_members):
    from cli_util import run_cli
    from dfdc_models import store

    e = store.active("mc3_112")
    report = tmp_path / "report"
    y, s = synthetic_report(report, "mc3_112", e.model_id)
    code, out, err = run_cli(monkeypatch, capsys, "models", "calibrate", report, "--dry-run")
    assert code == 0, err
    assert (report / "calibration.json").is_file() and (report / "calibration-mc3_112.png").is_file()
    assert "nothing recorded" in err and store.active("mc3_112").calibration is None
    code, out, err = run_cli(monkeypatch, capsys, "models", "calibrate", report, "--band", "rates:0.1,0.1")
    assert code == 0, err
    rec = store.active("mc3_112").calibration
    want, _ = CB.fit(y, s, band="rates:0.1,0.1")
    assert rec["params"] == pytest.approx(want.params) and (rec["lo"], rec["hi"]) == pytest.approx((want.lo, want.hi))
    assert "mc3_112: platt, log loss" in out and "recorded in registry entry" in out
    code, out, err = run_cli(monkeypatch, capsys, "models", "calibrate", report, "--band", "wide")
    assert code == 2 and "--band" in err and "Traceback" not in err
    code, out, err = run_cli(monkeypatch, capsys, "models", "calibrate", tmp_path / "nothing")
    assert code == 2 and "no such file" in err


@pytest.mark.slow
def test_scan_shows_the_calibrated_p_and_the_unsure_band(tmp_path, monkeypatch, capsys, carphone, tiny_members):
    from cli_util import run_cli
    from dfdc_models import store

    e = store.active("mc3_112")
    js, sub = tmp_path / "scan.json", tmp_path / "sub.csv"
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, "--members", "mc3_112", "--workers", "1",
                             "--json", js)
    assert code == 0, err
    raw = json.loads(js.read_text())["videos"][0]["members"]["mc3_112"]
    # A calibration whose band holds this video's calibrated score: a = 1 keeps the score, b moves it
    # to 0.5 exactly, inside [1/3, 2/3).
    b = -float(logit(raw))
    store.set_calibration("mc3_112", e.model_id, Calibration("platt", {"a": 1.0, "b": b}, 1 / 3, 2 / 3, "test").to_dict())
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, "--members", "mc3_112", "--workers", "1",
                             "--json", js, "--csv", sub)
    assert code == 0, err
    doc = json.loads(js.read_text())
    v = doc["videos"][0]
    assert v["verdict"] == "UNSURE" and v["p_fake"] == pytest.approx(0.5, abs=1e-6)
    assert v["members"]["mc3_112"] == pytest.approx(raw) and v["p_fake_raw"] == pytest.approx(raw)
    assert doc["unsure_band"] == pytest.approx([1 / 3, 2 / 3]) and doc["calibrations"]["mc3_112"]["method"] == "platt"
    row = next(line for line in out.splitlines() if "carphone" in line)
    assert "UNSURE" in row and "0.500" in row
    assert "(FAKE >= 0.67 > UNSURE >= 0.33 > REAL)" in out
    assert "p(fake) is calibrated" in err and "1 UNSURE" in err
    assert sub.read_text().splitlines()[1] == "carphone_pristine.mp4,0.500000"  # the calibrated p(fake)
    # --threshold: one threshold on the calibrated p(fake), no UNSURE
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, "--members", "mc3_112", "--workers", "1",
                             "--json", js, "--threshold", "0.4")
    assert json.loads(js.read_text())["videos"][0]["verdict"] == "FAKE"


def test_temperature_never_does_worse_in_sample_than_the_raw_score_on_saturated_scores():
    # A weak model whose scores sit near 0 and 1: clipped probabilities left plateaus in the loss on
    # which the line search stopped at t ~ 0.001 (every score 0 or 1).
    rng = np.random.default_rng(10)
    for _ in range(5):
        y = (rng.random(70) < 0.5).astype(float)
        s = np.clip(rng.beta(0.3, 0.3, 70), 1e-9, 1 - 1e-9)
        c = CB.fit_map(y, s, "temperature")
        assert M.log_loss(y, c.apply(s)) <= min(M.log_loss(y, s), math.log(2) + 1e-3)


def test_a_report_folder_that_cannot_be_written_is_one_line(tmp_path):
    y, s = miscalibrated(40, 3.0, 1.0, seed=11)
    videos = [{"status": "ok", "label": "FAKE" if t else "REAL", "members": {"m": float(x)}} for t, x in zip(y, s)]
    not_a_folder = tmp_path / "report"
    not_a_folder.write_text("a file where the report folder should be")
    with pytest.raises(UserError, match=r"calibration-m\.png: cannot be written"):
        CB.calibrate_report(videos, {"m": "id"}, not_a_folder)
    assert not_a_folder.read_text().startswith("a file")
