"""`scan --report DIR` and `deepfake report scan.json --out DIR`: the report folder (index, a page
per video, timeline, heatmaps; every link resolves), rebuilt from the JSON; Grad-CAM; a real
browser renders it (skipped without Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cli_util import run_cli
from dfdc_cli.report import build as R


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])


def parse(path: Path) -> Links:
    p = Links()
    p.feed(path.read_text())
    return p


def assert_self_contained(root: Path) -> dict[Path, Links]:
    """Every href/src of every page is a relative path to a file of the report; nothing remote."""
    pages = {}
    for page in root.rglob("*.html"):
        links = parse(page)
        pages[page] = links
        for target in links.links + links.imgs:
            assert not re.match(r"^[a-z]+:", target), f"{page.name}: {target} is not a local file"
            assert (page.parent / target).resolve().is_file(), f"{page.name}: {target} does not resolve"
    return pages


# ----------------------------------------------------------------------------------------------
# Grad-CAM


class RedDetector(nn.Module):
    """A frame 'member' with a red-detecting and a blue-detecting channel whose logit reads the red
    one: on a picture red in its top-left quadrant only, its map must be there."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[0, 0], self.conv.weight[0, 2] = 1.0, -1.0  # red minus blue
            self.conv.weight[1, 2], self.conv.weight[1, 0] = 1.0, -1.0  # blue minus red

    def preprocess(self, x):
        return x / 255.0

    def net_fake_logit(self, x):
        a = torch.relu(self.conv(x))
        return a[:, 0].mean(dim=(1, 2))


def test_grad_cam_is_where_the_logit_looks():
    from dfdc_cli.report.saliency import grad_cam, overlay

    x = torch.zeros(1, 3, 32, 32)
    x[:, 2] = 200.0  # blue everywhere...
    x[:, 0, :16, :16], x[:, 2, :16, :16] = 220.0, 0.0  # ...but a red top-left quadrant
    cam = grad_cam(RedDetector(), x)
    assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    assert cam[:14, :14].min() > 0.9 and cam[18:, 18:].max() == 0.0
    img = overlay(np.zeros((32, 32, 3), np.uint8), cam)
    assert img.shape == (32, 32, 3) and (img[:8, :8, 0] > img[:8, :8, 2]).all()  # hot: red
    assert (img[24:, 24:, 2] > img[24:, 24:, 0]).all()  # cold: blue


def test_grad_cam_of_a_3d_member_has_a_time_axis(tiny_members):
    from dfdc_cli.scan.members import load_member
    from dfdc_cli.report.saliency import clip_cam, frame_cam, top_frames

    m3 = load_member("mc3_112", "cpu").module
    tube = (np.random.default_rng(0).random((20, 256, 256, 3)) * 255).astype(np.uint8)
    seen, cam = clip_cam(m3, tube)
    assert seen.shape == (20, 112, 112, 3) and cam.shape == (20, 112, 112)
    assert 0 <= cam.min() and cam.max() <= 1 and cam.max() > 0
    assert len(top_frames(cam, 3)) == 3 and top_frames(cam, 3) == sorted(top_frames(cam, 3))
    m2 = load_member("seresnext50_2d", "cpu").module
    seen2, cam2 = frame_cam(m2, tube[0], flipped=True)
    assert seen2.shape[:2] == cam2.shape == (m2.spec.res, m2.spec.res)


# ----------------------------------------------------------------------------------------------
# The folder


def test_report_folder_checks(tmp_path):
    from dfdc_cli.errors import UserError

    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        R.check_out(tmp_path / "f.txt")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a deepfake report"):
        R.check_out(tmp_path / "d")
    assert (tmp_path / "d" / "mine.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="does not exist"):
        R.check_out(tmp_path / "missing" / "r")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not JSON"):
        R.load_scan_json(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match="not the --json output"):
        R.load_scan_json(tmp_path / "other.json")


def test_unsure_band_and_order():
    assert R.unsure_band({"unsure": [0.4, 0.6]}) == (0.4, 0.6)
    assert R.unsure_band({"unsure_band": [1 / 3, 2 / 3], "threshold": 2 / 3}) == (1 / 3, 2 / 3)  # what scan writes
    assert R.unsure_band({"unsure_band": None}) is None
    assert R.unsure_band({}, {"unsure": {"low": 0.3, "high": 0.7}}) == (0.3, 0.7)
    assert R.unsure_band({"unsure": [0.7, 0.3]}) is None and R.unsure_band({}) is None
    vs = [{"name": "a", "verdict": "REAL", "p_fake": 0.2}, {"name": "b", "status": "no_face", "p_fake": 0.5},
          {"name": "c", "verdict": "FAKE", "p_fake": 0.9}, {"name": "d", "status": "error", "p_fake": 0.5}]
    assert R.ordered(vs) == [2, 0, 1, 3]


def test_timeline_shows_the_unsure_band_only_when_there_is_one(tmp_path):
    import cv2

    v = {"n_frames": 100, "fps": 25, "frames_read": [[0, 99]],
         "faces": [{"tube_id": 0, "first_frame": 0, "last_frame": 99, "members": {"a": 0.7},
                    "frame_scores": {"a": list(np.linspace(0.2, 0.9, 32))}}]}

    def yellow(band):
        R.draw_timeline(tmp_path / "t.png", v, ["a"], 0.5, band)
        img = cv2.imread(str(tmp_path / "t.png"))[:, :, ::-1].astype(int)
        return int(((img[..., 0] > 230) & (img[..., 1] > 200) & (img[..., 2] < 200)).sum())

    assert yellow((0.4, 0.6)) > 1000 and yellow(None) == 0


@pytest.mark.slow
def test_scan_report_of_a_generated_clip_and_carphone(monkeypatch, capsys, tmp_path, gen_videos, carphone,
                                                       tiny_members):
    out, js = tmp_path / "report", tmp_path / "scan.json"
    clip = gen_videos / "two_faces.mp4"
    code, _, err = run_cli(monkeypatch, capsys, "scan", clip, carphone, "--workers", "1", "--json", js,
                           "--report", out)
    assert code == 0, err
    doc = json.loads(js.read_text())
    assert (out / "index.html").is_file() and (out / R.MARKER).is_file()
    pages = sorted((out / "v").glob("*.html"))
    assert len(pages) == 2  # one page per video
    parsed = assert_self_contained(out)
    # The index lists the videos by p(fake), highest first, each linking to its page.
    idx = parsed[out / "index.html"]
    by_p = sorted(doc["videos"], key=lambda v: -v["p_fake"])
    page_links = [h for h in idx.links if h.startswith("v/")]
    assert [Path(h).name.split("-", 1)[1][: -len(".html")] for h in page_links[::2]] == [v["name"] for v in by_p]
    assert len(idx.imgs) == 2  # thumbnails
    for v in doc["videos"]:
        page = next(p for p in pages if p.name.endswith(f"-{v['name']}.html"))
        text = page.read_text()
        imgs = parsed[page].imgs
        assert any(i.endswith("/timeline.png") for i in imgs)
        assert sum(i.split("/")[-1].startswith("strip-") for i in imgs) == len(v["faces"])
        # heatmaps beside plain crops, for the frame model and for both 3D members, for every face
        for m in tiny_members:
            heat = [i for i in imgs if f"-{m}-" in i and i.endswith("-cam.png")]
            plain = [i for i in imgs if f"-{m}-" in i and not i.endswith("-cam.png")]
            assert len(heat) == len(plain) == 3 * len(v["faces"]), m
        assert "saliency map" in text and "not a mask of manipulated pixels" in text
        for m, mid in doc["models"].items():
            assert m in text and mid in text  # the models and their ids
        assert "frames read" in text and "long_side=480" in text
    assert len(doc["videos"][0]["faces"]) == 2 or len(doc["videos"][1]["faces"]) == 2  # the two-face clip
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 3_000_000  # thumbnails, not frames

    # Rebuilt from the JSON alone: the same files.
    again = tmp_path / "again"
    code, _, err = run_cli(monkeypatch, capsys, "report", js, "--out", again)
    assert code == 0, err
    rel = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert rel(again) == rel(out)
    assert (again / "index.html").read_text() == (out / "index.html").read_text()
    # An earlier report is replaced; a folder that is not a report is refused.
    code, _, err = run_cli(monkeypatch, capsys, "report", js, "--out", again, "--no-heatmaps")
    assert code == 0 and not list(again.rglob("*-cam.png"))
    code, _, err = run_cli(monkeypatch, capsys, "report", js, "--out", gen_videos)
    assert code == 2 and "not a deepfake report" in err


@pytest.mark.slow
def test_report_of_moved_videos_and_a_long_clip(monkeypatch, capsys, tmp_path, gen_videos):
    from conftest import face_frames
    from dfdc_cli.faces.video import write_video

    src = tmp_path / "late.mp4"
    write_video(src, face_frames(300, (240, 320), lambda i: [(110, 50)] if i >= 200 else []), 25)
    js = tmp_path / "scan.json"
    code, _, err = run_cli(monkeypatch, capsys, "scan", src, gen_videos / "no_face.mp4", "--workers", "1",
                           "--json", js)
    assert code == 0, err
    doc = json.loads(js.read_text())
    late = next(v for v in doc["videos"] if v["name"] == "late.mp4")
    assert late["status"] == "ok" and late["faces"][0]["first_frame"] >= 200  # auto read past frame 100
    src.rename(tmp_path / "moved.mp4")
    out = tmp_path / "r"
    code, _, err = run_cli(monkeypatch, capsys, "report", js, "--out", out, "--no-heatmaps")
    assert code == 0, err
    assert_self_contained(out)
    page = next((out / "v").glob("*-late.mp4.html")).read_text()
    assert "no pictures: the video cannot be read now" in page and "timeline.png" in page


# ----------------------------------------------------------------------------------------------
# A real browser


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def screenshot(browser: str, page: Path, png: Path, size: str = "1200,1600") -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", f"--screenshot={png}", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (Debian package `chromium`)")
def test_chromium_renders_the_index_and_a_page(monkeypatch, capsys, tmp_path, carphone, tiny_members):
    import cv2

    out, js = tmp_path / "report", tmp_path / "scan.json"
    code, _, err = run_cli(monkeypatch, capsys, "scan", carphone, "--workers", "1", "--json", js, "--report", out)
    assert code == 0, err
    page = next((out / "v").glob("*.html"))
    # The same report with its pictures removed: what a render that failed to show them looks like.
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    for png in bare.rglob("*.png"):
        png.unlink()

    def inked(html: Path, name: str) -> float:
        png = tmp_path / f"{name}.png"
        screenshot(chromium(), html, png)
        img = cv2.imread(str(png))
        assert img is not None and img.shape[:2] == (1600, 1200)
        return float((img.min(axis=2) < 230).mean())  # share of the page that is not white

    for html in (Path("index.html"), page.relative_to(out)):
        full, text_only = inked(out / html, f"full-{html.stem}"), inked(bare / html, f"bare-{html.stem}")
        assert text_only > 0.002  # the text rendered
        assert full > text_only + 0.005, html  # and the thumbnails / strips / plots / heatmaps too


def test_timeline_puts_a_calibrated_models_scores_on_the_bands_scale():
    """The JSON keeps each face's raw scores; a calibrated scan's threshold and band are on the
    calibrated scale, so the timeline maps the scores through each member's recorded calibration."""
    from dfdc_cli.report.build import score_map
    from dfdc_models.calibration import Calibration

    cal = Calibration("platt", {"a": 0.5, "b": -1.0}, 1 / 3, 2 / 3)
    doc = {"calibrated": True, "calibrations": {"m": cal.to_dict()}}
    raw = [0.1, 0.5, 0.9]
    assert score_map(doc)("m", raw) == pytest.approx([cal.apply(p) for p in raw])
    assert score_map(doc)("other", raw) == raw  # a member without one stays as it is
    assert score_map({**doc, "calibrated": False})("m", raw) == raw  # scan did not apply it


def test_a_video_page_shows_member_scores_on_the_verdicts_scale_and_faces_seen_together():
    """The faces table and the heatmap captions put each member's raw score through its calibration
    (as p(fake) is), and say so; a video read in windows counts faces seen together, not tubes."""
    from dfdc_cli.report.build import score_map
    from dfdc_cli.report.html import video_page
    from dfdc_models.calibration import Calibration

    cal = Calibration("platt", {"a": 0.5, "b": -1.0}, 1 / 3, 2 / 3)

    def face(tid, window, raw):
        return {"tube_id": tid, "window": window, "first_frame": 100 * window, "last_frame": 100 * window + 99,
                "members": {"m": raw}, "p_fake": cal.apply(raw)}

    v = {"name": "v.mp4", "status": "ok", "verdict": "REAL", "p_fake": 0.2, "n_faces": 1,
         "faces": [face(0, 0, 0.9), face(1000, 1, 0.8), face(2000, 2, 0.7)]}
    pics = {"heat": {0: [{"member": "m", "frame": 3, "p": 0.9, "plain": "a.png", "heat": "b.png"}]}}
    for calibrated in (True, False):
        doc = {"members": ["m"], "calibrated": calibrated, "calibrations": {"m": cal.to_dict()}}
        page = video_page(doc, v, "assets", pics, [], score_map(doc))
        shown = f"{cal.apply(0.9):.3f}" if calibrated else "0.900"
        assert f'<td class="num">{shown}</td>' in page
        assert f"frame 3, p(fake) {shown}" in page
        assert ("verdict&#x27;s scale" in page or "verdict's scale" in page) == calibrated
        assert "faces 1 (3 face tubes in 3 windows" in page
