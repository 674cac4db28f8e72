"""The extractor's decoder: probe, sequential decode into I420 buffers, rotation, colour, errors."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from dfdc_cli.errors import VideoError
from dfdc_cli.faces.video import decode, decode_count, probe, read_video, write_video


def pyav_rgb(path, k: int = 0) -> list[np.ndarray]:
    """PyAV's own rgb24 conversion of every frame, rotated by k quarter turns (CCW)."""
    with av.open(str(path)) as c:
        return [np.rot90(f.to_ndarray(format="rgb24"), k) for f in c.decode(video=0)]


def test_probe_carphone(carphone):
    info = probe(carphone)
    assert (info.width, info.height, info.rotation) == (176, 144, 0)
    assert info.fps == pytest.approx(29.97, abs=0.01)
    assert info.n_frames == 120 and info.codec == "h264"


def test_decode_matches_pyav_rgb24(carphone):
    frames = decode(carphone)
    ref = pyav_rgb(carphone)
    assert len(frames) == len(ref) == 120
    assert (frames.width, frames.height) == (176, 144)
    for i in (0, 57, 119):
        d = np.abs(frames.rgb(i).astype(int) - ref[i])
        assert d.max() <= 4 and d.mean() < 2.0, (i, d.max(), d.mean())
    # I420 storage: 1.5 bytes per pixel, half of RGB
    assert frames.nbytes == 120 * 176 * 144 * 3 // 2


def test_first_n_frames_only(carphone):
    frames = decode(carphone, max_frames=100)
    assert len(frames) == 100
    assert decode_count(carphone, max_frames=30) == 30


def test_crop_and_resize_agree_with_full_frame(carphone):
    frames = decode(carphone, max_frames=3)
    full = frames.rgb(2).astype(int)
    for x1, y1, x2, y2 in [(0, 0, 176, 144), (13, 7, 101, 88), (1, 1, 2, 2), (100, 51, 175, 143)]:
        crop = frames.crop_rgb(2, x1, y1, x2, y2).astype(int)
        assert crop.shape == (y2 - y1, x2 - x1, 3)
        # odd offsets share chroma with their even neighbours: within a few levels
        assert np.abs(crop - full[y1:y2, x1:x2]).max() <= 3
    # outside the frame is black
    crop = frames.crop_rgb(2, -10, -5, 20, 30)
    assert crop.shape == (35, 30, 3)
    assert not crop[:5].any() and not crop[:, :10].any()
    assert np.abs(crop[5:, 10:].astype(int) - full[:30, :20]).max() <= 3
    assert frames.crop_rgb(2, 200, 200, 220, 210).shape == (10, 20, 3)
    small = frames.rgb_resized(2, 88, 72).astype(int)
    ref = cv2.resize(frames.rgb(2), (88, 72), interpolation=cv2.INTER_LINEAR).astype(int)
    assert small.shape == (72, 88, 3) and np.abs(small - ref).mean() < 2.5
    odd = frames.rgb_resized(2, 61, 47)
    assert odd.shape == (47, 61, 3)


def test_rotated_video_is_decoded_upright(gen_videos):
    path = gen_videos / "rotated.mp4"
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (90, 240, 320)
    frames = decode(path)
    assert (frames.width, frames.height, len(frames)) == (240, 320, 40)
    ref = pyav_rgb(path, k=1)  # PyAV gives the stored (landscape) frames; rotate 90 CCW for display
    assert ref[0].shape == (320, 240, 3)
    assert np.abs(frames.rgb(10).astype(int) - ref[10]).max() <= 4


def test_odd_size_and_yuv444(gen_videos):
    path = gen_videos / "odd_size.mp4"
    frames = decode(path)
    assert (frames.width, frames.height, len(frames)) == (175, 143, 40)
    ref = pyav_rgb(path)
    img = frames.rgb(5)
    assert img.shape == (143, 175, 3)
    d = np.abs(img.astype(int) - ref[5])
    assert d.mean() < 3  # 4:4:4 -> 4:2:0 loses chroma detail at edges only
    crop = frames.crop_rgb(5, 170, 140, 175, 143)
    assert crop.shape == (3, 5, 3)


def test_write_read_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    clip = np.repeat(rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8), 12, axis=0)
    clip = cv2.GaussianBlur(clip.reshape(-1, 64, 3), (0, 0), 3).reshape(12, 64, 64, 3)
    write_video(tmp_path / "t.mp4", clip, 25)
    back = read_video(tmp_path / "t.mp4")
    assert back.shape == clip.shape
    assert np.abs(back.astype(int) - clip).mean() < 4
    frames = decode(tmp_path / "t.mp4")
    assert np.abs(frames.rgb(3).astype(int) - back[3]).max() <= 4


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.mp4", "file not found"),
        ("empty.mp4", "empty file"),
        ("text.mp4", "not a video"),
        ("truncated.mp4", "truncated or corrupt"),
        ("audio_only.mp4", "no video stream (only audio)"),
    ],
)
def test_bad_inputs_raise_video_error(bad_videos, name, message):
    with pytest.raises(VideoError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(bad_videos / name)
    with pytest.raises(VideoError):
        probe(bad_videos / name)


def test_folder_is_not_a_video(tmp_path):
    with pytest.raises(VideoError, match="folder"):
        decode(tmp_path)


def test_stream_truncated_after_frames_keeps_decoded_frames(tmp_path, carphone):
    """A 'fast start' MP4 (index first) cut in the middle: the frames before the cut are kept."""
    src = tmp_path / "fs.mp4"
    with av.open(str(carphone)) as inp, av.open(str(src), "w", format="mp4", options={"movflags": "faststart"}) as out:
        ins = inp.streams.video[0]
        outs = out.add_stream_from_template(ins)
        for pkt in inp.demux(ins):
            if pkt.dts is None:
                continue
            pkt.stream = outs
            out.mux(pkt)
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    frames = decode(cut)
    assert 10 <= len(frames) < 120
    tiny = tmp_path / "tiny.mp4"
    tiny.write_bytes(data[: int(len(data) * 0.06)])
    with pytest.raises(VideoError):
        decode(tiny)
