"""`scan --span first|whole|auto`: which frames are read, how windows make one verdict, and the
per-window / per-frame figures of the machine output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_util import run_cli
from conftest import face_frames
from dfdc_cli.faces.extract.params import PRESETS, window_starts
from dfdc_cli.scan.span import combine_windows, frames_read_text, Window


def test_window_starts_spread_without_overlap():
    assert window_starts(100, 100, 8) == [0]
    assert window_starts(99, 100, 8) == [0]
    assert window_starts(300, 100, 8) == [0, 100, 200]  # a DFDC clip: three windows, end to end
    assert window_starts(250, 100, 8) == [0, 150]  # the last window ends at the video's end
    s = window_starts(9000, 100, 8)
    assert len(s) == 8 and s[0] == 0 and s[-1] == 8900
    assert all(b - a >= 100 for a, b in zip(s, s[1:]))  # never overlapping
    assert window_starts(9000, 100, 1) == [0]


def test_span_window_params_keep_the_seeds_store_key():
    base = PRESETS["scan"]
    assert base.replace(span_window=(0, 1)).key() == base.key()  # window 0 shares the seed's cache entries
    assert base.replace(span_window=(2, 8)).key() != base.key()
    assert base.replace(span_window=(2, 8)).start_frame(9000) == window_starts(9000, 100, 8)[2]
    from dfdc_cli.errors import VideoError

    with pytest.raises(VideoError, match="only 3 windows"):
        base.replace(span_window=(5, 8)).start_frame(300)


def test_combine_windows_takes_the_highest_window():
    assert combine_windows({0: 0.2, 1: 0.9, 2: 0.2}) == (0.9, 1)  # a one-window swap is not diluted
    assert combine_windows({0: None, 1: 0.3}) == (0.3, 1)
    assert combine_windows({0: 0.4, 1: 0.4}) == (0.4, 0)  # ties: the earliest window
    assert combine_windows({0: None}) == (None, None)
    assert combine_windows({}) == (None, None)


def test_frames_read_text():
    ws = [Window(0, 0, 100, "no_face"), Window(1, 150, 100, "ok")]
    assert frames_read_text(ws, 250) == "frames 0-99, 150-249 of 250 (2 windows)"
    assert frames_read_text(ws[:1]) == "frames 0-99"
    many = [Window(k, s, 100, "ok") for k, s in enumerate(window_starts(9000, 100, 8))]
    assert frames_read_text(many, 9000) == "8 windows of 100 frames spread over frames 0-8999 of 9000"


def test_aggregate_over_windows_is_the_seed_within_a_window_and_max_across():
    from dfdc_cli.scan.ensemble import aggregate_video
    from dfdc_cli.scan.results import FaceScore, VideoScan

    def face(tid, window):
        return FaceScore(tube_id=tid, first_frame=0, last_frame=99, n_frames=100, box=[0, 0, 1, 1],
                         mean_prob=1.0, window=window)

    r = VideoScan(video="/v.mp4", name="v.mp4", status="ok",
                  faces=[face(0, 0), face(1, 0), face(1000, 1)],
                  windows=[dict(window=0, start_frame=0, n_frames=100, status="ok", reason="", tube_ids=[0, 1]),
                           dict(window=1, start_frame=100, n_frames=100, status="ok", reason="", tube_ids=[1000])])
    scores = {0: {"a": 0.2, "b": 0.4}, 1: {"a": 0.4, "b": 0.2}, 1000: {"a": 0.9, "b": 0.7}}
    aggregate_video(r, scores, ["a", "b"], {"a": 1.0, "b": 1.0}, 0.5)
    w0, w1 = r.windows
    assert w0["members"] == pytest.approx({"a": 0.3, "b": 0.3}) and w0["p_fake"] == pytest.approx(0.3)
    assert w1["members"] == pytest.approx({"a": 0.9, "b": 0.7}) and w1["p_fake"] == pytest.approx(0.8)
    assert r.window == 1 and r.p_fake == pytest.approx(0.8) and r.verdict == "FAKE"
    assert r.members == pytest.approx({"a": 0.9, "b": 0.7})  # the deciding window's member figures
    assert r.n_faces == 2  # faces seen together: two in window 0 (three tubes in all)
    # One window: the seed's figures exactly (mean over faces, mean over members).
    one = VideoScan(video="/v.mp4", name="v.mp4", status="ok", faces=[face(0, 0), face(1, 0)])
    aggregate_video(one, scores, ["a", "b"], None, 0.5)
    assert one.p_fake == pytest.approx(0.3) and one.window == 0


# ----------------------------------------------------------------------------------------------
# End to end on a long generated clip: 250 frames without a face, then 150 with one


@pytest.fixture(scope="module")
def late_face(tmp_path_factory):
    from dfdc_cli.faces.video import write_video

    d = tmp_path_factory.mktemp("late-face")
    p = d / "late_face.mp4"
    write_video(p, face_frames(400, (240, 320), lambda i: [(110 + (i % 20), 50)] if i >= 250 else []), 25)
    return p


def scan_json(monkeypatch, capsys, tmp_path, *args):
    js = tmp_path / f"scan-{len(list(tmp_path.iterdir()))}.json"
    code, out, err = run_cli(monkeypatch, capsys, "scan", *args, "--workers", "1", "--json", js)
    assert code == 0, err
    return json.loads(js.read_text()), out


@pytest.mark.slow
def test_long_video_first_says_no_face_whole_scores_the_face_part(monkeypatch, capsys, tmp_path, late_face):
    doc, out = scan_json(monkeypatch, capsys, tmp_path, late_face, "--span", "first")
    v = doc["videos"][0]
    assert doc["span"] == "first" and v["status"] == "no_face" and v["verdict"] is None
    assert "only those were read" in v["reason"] and "frames 0-99 of 400" in v["reason"]
    assert v["frames_read"] == [[0, 99]] and v["n_frames"] == 400
    assert "NO FACE" in out

    doc, out = scan_json(monkeypatch, capsys, tmp_path, late_face, "--span", "whole")
    v = doc["videos"][0]
    assert v["status"] == "ok" and v["verdict"] in ("FAKE", "REAL")
    assert v["frames_read"] == [[0, 99], [100, 199], [200, 299], [300, 399]]  # the whole video, 4 windows
    assert [w["status"] for w in v["windows"]] == ["no_face", "no_face", "ok", "ok"]
    assert all(f["first_frame"] >= 250 for f in v["faces"])  # the faces are where the face is
    assert {f["window"] for f in v["faces"]} == {2, 3}
    assert all(f["tube_id"] // 1000 == f["window"] for f in v["faces"])
    scored = [w["p_fake"] for w in v["windows"] if w["p_fake"] is not None]
    assert v["p_fake"] == pytest.approx(max(scored)) and v["window"] in (2, 3)
    # Per face and member, the frame model's per-frame scores, and their (lower) median is its p(fake).
    for f in v["faces"]:
        (m, frames), = f["frame_scores"].items()
        assert len(frames) == min(32, f["n_frames"])
        assert f["members"][m] == pytest.approx(float(np.sort(frames)[(len(frames) - 1) // 2]), abs=1e-5)
        assert f["boxes"] and all(f["first_frame"] <= b[0] <= f["last_frame"] for b in f["boxes"])

    # auto: the first 100 frames have no face, so it reads further and finds the same figures.
    doc_auto, _ = scan_json(monkeypatch, capsys, tmp_path, late_face)
    a = doc_auto["videos"][0]
    assert doc_auto["span"] == "auto" and a["status"] == "ok"
    assert a["p_fake"] == pytest.approx(v["p_fake"], abs=1e-6) and a["frames_read"] == v["frames_read"]
    # ...and the per-frame scores come back from the score cache.
    assert a["cached_members"] and all(f["frame_scores"] for f in a["faces"])


@pytest.mark.slow
def test_auto_keeps_the_seeds_figures_when_the_first_frames_have_a_face(monkeypatch, capsys, tmp_path, carphone):
    first, _ = scan_json(monkeypatch, capsys, tmp_path, carphone, "--span", "first", "--rescore")
    auto, _ = scan_json(monkeypatch, capsys, tmp_path, carphone, "--rescore")
    f, a = first["videos"][0], auto["videos"][0]
    assert a["status"] == f["status"] == "ok"
    assert a["p_fake"] == f["p_fake"] and a["members"] == f["members"]  # the seed's numbers
    assert a["frames_read"] == [[0, 99]] and len(a["windows"]) == 1 and a["reason"] == f["reason"]
    whole, _ = scan_json(monkeypatch, capsys, tmp_path, carphone, "--span", "whole", "--windows", "3")
    w = whole["videos"][0]
    assert w["n_frames"] == 120 and w["frames_read"] == [[0, 99]]  # 120 frames: one window of 100 fits


def test_span_is_checked(monkeypatch, capsys, carphone, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "scan", carphone, "--span", "middle")
    assert code == 2 and "--span" in err and "first" in err
    code, _, err = run_cli(monkeypatch, capsys, "scan", "--index", tmp_path, "--span", "whole")
    assert code == 2 and "--span whole" in err and "--index" in err


def test_merge_windows_offsets_ids_and_frames_and_leaves_out_fallback_only_faces():
    from dfdc_cli.scan.inputs import Extracted
    from dfdc_cli.scan.inputs import merge_windows

    def part(k, start, status, fallback="", reason=""):
        rows = [] if status != "ok" else [{"tube_id": 0, "first_frame": 5, "last_frame": 64, "n_frames": 60}]
        e = Extracted("/v.mp4", "v.mp4", status, reason, 1.0, rows, fallback=fallback, entry=f"e{k}",
                      n_frames=100, pixels={0: ("px", None)} if rows else None)
        return k, start, e

    m = merge_windows([part(0, 0, "no_face"), part(1, 300, "ok", "low_thresholds", "found by fallback (low_thresholds)"),
                       part(2, 600, "ok")], total=700, span="whole")
    assert m.status == "ok" and not m.weak
    assert [r["tube_id"] for r in m.tubes] == [2000]  # window 2's tube 0; window 1's fallback "face" left out
    assert (m.tubes[0]["first_frame"], m.tubes[0]["last_frame"], m.tubes[0]["window"]) == (605, 664, 2)
    assert set(m.pixels) == {2000}
    assert "window 2: left out" in m.reason and "frames 0-99, 300-399, 600-699 of 700" in m.reason
    assert [w.start_frame for w in m.windows] == [0, 300, 600] and m.n_total == 700
    weak = merge_windows([part(0, 0, "no_face"), part(1, 300, "ok", "low_thresholds", "found by fallback (low_thresholds)")],
                         total=400, span="auto")
    assert weak.weak and [r["tube_id"] for r in weak.tubes] == [1000]
    none = merge_windows([part(0, 0, "no_face"), part(1, 300, "no_face")], total=400, span="auto")
    assert none.status == "no_face" and none.reason == "no face in frames 0-99, 300-399 of 400 (2 windows)"
    assert none.key and none.key != merge_windows([part(0, 0, "no_face")], 400, "first").key
