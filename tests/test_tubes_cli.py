"""`deepfake tubes`: contact sheets of tubes, index listing, self-blended samples, one-line errors."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
from cli_util import run_cli

from dfdc_cli.faces.index import TUBE_COLUMNS, TubeRecord, Track, write_table
from dfdc_cli.faces.video import write_video


def make_tube(folder, t: int = 25, size: int = 64, stem: str = "clip_0"):
    """A small tube MP4 with a moving face-like blob, plus its track (source px = 2 x tube px)."""
    rng = np.random.default_rng(0)
    frames, boxes, lms = [], [], []
    rel = np.array([[0.31, 0.42], [0.69, 0.42], [0.50, 0.62], [0.34, 0.80], [0.66, 0.80]], np.float32)
    for i in range(t):
        x0 = 6.0 + 20.0 * i / max(t - 1, 1)
        img = np.clip(rng.normal(110, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        cv2.ellipse(img, (round(x0 + 14), 30), (12, 16), 0, 0, 360, (200, 160, 130), -1)
        frames.append(img)
        boxes.append([x0, 16.0, x0 + 28.0, 44.0])
        lms.append(np.array([x0, 16.0]) + rel * 28.0)
    frames = np.stack(frames)
    tube = folder / f"{stem}.mp4"
    write_video(tube, frames, 30.0)
    Track(frames=np.arange(t), boxes=np.array(boxes, np.float32) * 2, landmarks=np.array(lms, np.float32) * 2,
          probs=np.full(t, 0.99, np.float32), detected=np.arange(t) % 10 == 0,
          crop_box=np.array([0, 0, 2 * size, 2 * size]), size=size).save(folder / f"{stem}.npz")
    return tube




def test_contact_sheet_size(tmp_path):
    from dfdc_cli.faces.sheets import render_sheet

    frames = np.zeros((25, 64, 48, 3), np.uint8)  # non-square frames are letter-boxed
    sheet = render_sheet(frames, every=5, cols=3, thumb=64)  # frames 0,5,10,15,20: 2 rows of 3
    assert sheet.shape == (2 * 64, 3 * 64, 3) and sheet.dtype == np.uint8
    assert render_sheet(frames, every=10, cols=8, thumb=32).shape == (32, 3 * 32, 3)


def test_show_writes_png(tmp_path, monkeypatch, capsys):
    tube = make_tube(tmp_path)
    out = tmp_path / "sheet.png"
    code, stdout, err = run_cli(monkeypatch, capsys, "tubes", "show", tube, "--out", out,
                                "--every", "5", "--cols", "3", "--thumb", "64")
    assert code == 0, err
    img = cv2.imread(str(out))
    assert img.shape == (128, 192, 3)
    assert "track drawn" in stdout
    # Default output: ./<stem>_sheet.png; --no-overlay skips the track.
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(monkeypatch, capsys, "tubes", "show", tube, "--no-overlay")
    assert code == 0, err
    assert (tmp_path / "clip_0_sheet.png").exists() and "track drawn" not in stdout


def test_show_overlay_draws_the_track(tmp_path):
    from dfdc_cli.faces.sheets import load_track_geometry, load_tube_frames, render_sheet

    tube = make_tube(tmp_path)
    frames = load_tube_frames(tube)
    geom = load_track_geometry(tmp_path / "clip_0.npz", frames.shape[1:3])
    assert np.allclose(geom[1][0], [6.0, 16.0, 34.0, 44.0], atol=1e-3)
    plain = render_sheet(frames, 5, 3, 64, None)
    drawn = render_sheet(frames, 5, 3, 64, geom)
    assert plain.shape == drawn.shape and np.any(plain != drawn)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty"])
def test_show_bad_file_is_a_one_line_error(tmp_path, monkeypatch, capsys, kind):
    path = tmp_path / "bad.mp4"
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    code, stdout, err = run_cli(monkeypatch, capsys, "tubes", "show", path, "--out", tmp_path / "x.png")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.mp4" in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_show_missing_track_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    tube = make_tube(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "tubes", "show", tube, "--track", tmp_path / "nope.npz")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope.npz" in err


def test_list_index(tmp_path, monkeypatch, capsys):
    tube = make_tube(tmp_path)
    rows = [TubeRecord(video="/v/a.mp4", name="a.mp4", tube_id=0, first_frame=0, last_frame=24, n_frames=25,
                       x1=0, y1=0, x2=128, y2=128, mean_prob=0.98, max_prob=0.99, n_detections=3,
                       label="REAL", tube_path=str(tube), track_path=str(tmp_path / "clip_0.npz"))]
    write_table(tmp_path / "tubes.csv", rows, TUBE_COLUMNS)
    code, out, err = run_cli(monkeypatch, capsys, "tubes", "list", tmp_path)
    assert code == 0, err
    assert "a.mp4" in out and "1 tube(s)" in out
    code, out, err = run_cli(monkeypatch, capsys, "tubes", "list", tmp_path, "--label", "FAKE")
    assert code == 0 and "0 tube(s)" in out
    code, out, err = run_cli(monkeypatch, capsys, "tubes", "list", tmp_path / "nowhere")
    assert code == 2 and err.strip().startswith("error:")


def test_blend_command(tmp_path, monkeypatch, capsys):
    tube = make_tube(tmp_path)
    out = tmp_path / "sbi" / "clip_0_sbi.mp4"
    sheet = tmp_path / "blend.png"
    code, stdout, err = run_cli(monkeypatch, capsys, "tubes", "blend", tube, "--out", out, "--seed", "4",
                                "--sheet", sheet, "--every", "5", "--cols", "5", "--thumb", "32")
    assert code == 0, err
    assert out.exists() and out.with_suffix(".npz").exists()
    assert cv2.imread(str(sheet)).shape == (3 * 32, 5 * 32, 3)  # real / fake / mask rows
    # Parameters from a file; an unknown key is a one-line error.
    good = tmp_path / "p.toml"
    good.write_text("[self_blend]\nblend_ratio = [0.5, 0.5]\nfull_blend_prob = 0.0\n")
    code, _, err = run_cli(monkeypatch, capsys, "tubes", "blend", tube, "--out", tmp_path / "b.mp4",
                           "--params", good)
    assert code == 0, err
    bad = tmp_path / "bad.toml"
    bad.write_text("[self_blend]\nblend_ration = [0.5, 0.5]\n")
    code, _, err = run_cli(monkeypatch, capsys, "tubes", "blend", tube, "--params", bad)
    assert code == 2 and "blend_ration" in err and len(err.strip().splitlines()) == 1
    # A tube without a track cannot be blended.
    lone = tmp_path / "lone.mp4"
    lone.write_bytes(tube.read_bytes())
    code, _, err = run_cli(monkeypatch, capsys, "tubes", "blend", lone)
    assert code == 2 and "track" in err


def test_show_2d_crops_use_the_tube_track(tmp_path, monkeypatch, capsys):
    pytest.importorskip("dfdc_cli.faces.tubes")
    tube = make_tube(tmp_path)
    crops = tmp_path / "clip_0_2d.mp4"  # stands in for the 2D pathway's crops of the same track
    crops.write_bytes(tube.read_bytes())
    code, stdout, err = run_cli(monkeypatch, capsys, "tubes", "show", crops, "--out", tmp_path / "s.png")
    assert code == 0, err
    assert "track drawn" in stdout
