"""The index contract: one merge of rows into a folder's tables (runs and self-blended copies),
typed records from the tables and from a store entry's result, the shared constants, the
extractor's parameters from a preset and options, the pool's typed detection batching."""

from __future__ import annotations

import numpy as np
import pytest

from dfdc_cli.faces import index as I
from dfdc_cli.errors import UserError
from dfdc_cli.faces.extract import PRESETS, params_for
from dfdc_cli.faces.detectors import DetectSettings
from dfdc_cli.faces.extract.pool import detect_batched
from dfdc_cli.faces.extract.store import records_for
from dfdc_cli.faces.inputs import VideoInput


def _video(path: str, **kw) -> I.VideoRecord:
    return I.VideoRecord(video=path, name=path.rsplit("/", 1)[-1], status=I.STATUS_OK, n_tubes=1, **kw)


def _tube(path: str, tube_path: str, **kw) -> I.TubeRecord:
    return I.TubeRecord(video=path, name=path.rsplit("/", 1)[-1], tube_id=0, first_frame=0, last_frame=39,
                        n_frames=40, x1=1, y1=2, x2=30, y2=31, mean_prob=0.9, max_prob=0.99, n_detections=4,
                        tube_path=tube_path, track_path=tube_path[:-4] + ".npz", **kw)


def test_one_merge_for_runs_and_added_tubes(tmp_path):
    I.write_index(tmp_path, [_video("/v/a.mp4", label="REAL"), _video("/v/b.mp4")],
                  [_tube("/v/a.mp4", "/s/a0.mp4", label="REAL"), _tube("/v/b.mp4", "/s/b0.mp4")])
    videos_before = (tmp_path / I.VIDEOS_CSV).read_bytes()
    # Tubes alone (self-blended copies of a's tube): added beside it; the videos' table untouched.
    fake = _tube("/v/a.mp4", "/sb/a0_sbi0.mp4", label="FAKE", original="a.mp4")
    I.write_index(tmp_path, [], [fake])
    I.write_index(tmp_path, [], [fake])  # again: the same row replaced, not doubled
    assert (tmp_path / I.VIDEOS_CSV).read_bytes() == videos_before
    assert list(I.read_tubes(tmp_path)["tube_path"]) == ["/s/a0.mp4", "/s/b0.mp4", "/sb/a0_sbi0.mp4"]
    # A run over a video again replaces its row and all its tubes (its copies too).
    I.write_index(tmp_path, [_video("/v/a.mp4", n_frames=7)], [_tube("/v/a.mp4", "/s/a0.mp4")])
    videos, tubes = I.read_records(tmp_path)
    assert [(v.name, v.n_frames) for v in videos] == [("b.mp4", 0), ("a.mp4", 7)]
    assert [t.tube_path for t in tubes] == ["/s/b0.mp4", "/s/a0.mp4"]


def test_two_videos_of_one_content_keep_their_own_tube_rows(tmp_path):
    """Copies of one file share a store entry (so a tube path): a run over one of them keeps the other's rows."""
    I.write_index(tmp_path, [_video("/v/a.mp4"), _video("/w/a.mp4")],
                  [_tube("/v/a.mp4", "/s/a0.mp4"), _tube("/w/a.mp4", "/s/a0.mp4")])
    I.write_index(tmp_path, [_video("/v/a.mp4")], [_tube("/v/a.mp4", "/s/a0.mp4")])
    assert sorted(I.read_tubes(tmp_path)["video"]) == ["/v/a.mp4", "/w/a.mp4"]


def test_records_are_typed(tmp_path):
    I.write_index(tmp_path, [_video("/v/0001.mp4", fps=25.0, label="")], [_tube("/v/0001.mp4", "/s/1.mp4")])
    (v,), (t,) = I.read_records(tmp_path)
    assert v == _video("/v/0001.mp4", fps=25.0, label="")
    assert t == _tube("/v/0001.mp4", "/s/1.mp4")
    assert isinstance(t.x1, int) and isinstance(t.mean_prob, float) and t.label == "" and t.tube2d_path == ""
    # blank numbers get the field's default; unknown keys are ignored
    assert I.record_from(I.VideoRecord, {"video": "/x", "name": "x", "status": "ok", "fps": "", "extra": 1}).fps == 0.0


def test_records_of_a_result(tmp_path):
    entry = tmp_path / "store" / "ab" / "ab-key"
    res = {"entry": str(entry), "status": "ok", "n_frames": "50", "width": 64, "height": 48, "fps": 25,
           "seconds": 1.23456, "tubes": [{"tube_id": 0, "first_frame": 0, "last_frame": 39, "n_frames": 40,
                                          "x1": 1, "y1": 2, "x2": 30, "y2": 31, "mean_prob": 0.9, "max_prob": 0.99,
                                          "n_detections": 4, "tube_file": "tube0.mp4", "track_file": "tube0.npz",
                                          "tube2d_file": ""}]}
    inp = VideoInput("/v/a.mp4", "FAKE", "b.mp4", "part0")
    v, (t,) = records_for(inp, res, None, PRESETS["train"])
    assert (v.n_frames, v.fps, v.seconds, v.key, v.n_tubes, v.reason) == (50, 25.0, 1.235, "ab-key", 1, "")
    assert (t.label, t.original, t.part, t.key) == ("FAKE", "b.mp4", "part0", "ab-key")
    assert t.tube_path == str(entry / "tube0.mp4") and t.tube2d_path == ""
    v, ts = records_for(inp, None, "empty file (0 bytes)", PRESETS["train"])
    assert (v.status, v.reason, ts) == (I.STATUS_ERROR, "empty file (0 bytes)", [])


def test_constants_have_one_home():
    from dfdc_cli.faces import tubes
    from dfdc_cli.faces.extract import ExtractParams

    assert ExtractParams().size == I.TUBE_SIZE and ExtractParams().frames_2d == I.FRAMES_2D
    assert tubes.box_2d_crops.__defaults__[0] == I.FRAMES_2D
    assert I.Faces.empty().boxes.shape == (0, 4) and len(I.Faces.empty()) == 0


def test_params_for_a_preset_and_options():
    assert params_for() == PRESETS["train"].replace(max_frames=100, max_faces=5)
    scan = params_for("Scan", every=5)
    assert scan == PRESETS["scan"].replace(every=5) and scan.long_side == 480
    assert params_for("scan", scale=0.25).long_side is None  # an explicit scale wins over the preset's long side
    assert params_for("scan", long_side=0).long_side is None
    with pytest.raises(UserError, match="unknown preset 'fast'"):
        params_for("fast")


class _Detector:
    def __init__(self):
        self.calls = []

    def faces(self, images, settings):
        self.calls.append((len(images), settings.thresholds))
        if settings.thresholds == (0.1, 0.1, 0.1):
            raise RuntimeError("boom")
        return [I.Faces.empty() for _ in images]


def test_detect_batched_groups_by_size_and_settings():
    det = _Detector()
    a, b = DetectSettings((0.6, 0.7, 0.7), 0.709, 20.0), DetectSettings((0.1, 0.1, 0.1), 0.709, 20.0)
    small, big = np.zeros((8, 8, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)
    answers = detect_batched(det, [([small] * 2, a), ([big], a), ([small] * 3, a), ([small], b)])
    assert sorted(det.calls) == sorted([(5, a.thresholds), (1, a.thresholds), (1, b.thresholds)])
    assert [len(x) for x in answers[:3]] == [2, 1, 3] and answers[3] == "RuntimeError: boom"
