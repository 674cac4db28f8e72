"""Scan scores the face crops in memory (no H.264 round trip), stays resumable, and keeps a large
folder's crops from piling up."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_scan import Brightness3d, member

from dfdc_cli.scan import scanner as S
from dfdc_cli.scan import inputs as SI
from dfdc_cli.faces.index import STATUS_OK


def forbid(monkeypatch, module, name: str, why: str) -> None:
    def boom(*a, **k):
        pytest.fail(why)

    monkeypatch.setattr(module, name, boom)


@pytest.mark.slow
def test_scan_in_memory_is_resumable_and_keeps_tubes_on_request(tmp_path, monkeypatch, carphone,
                                                                 tiny_members):
    import dfdc_cli.faces.extract as X
    import dfdc_cli.faces.extract.job as XJ
    import dfdc_cli.faces.video as V
    from dfdc_cli.paths import scan_tubes_dir

    scores = tmp_path / "scores"

    def scan(members, **kw):
        return S.Scanner(members=members, device="cpu", workers=1, score_dir=scores, **kw).scan([carphone])[0]

    with monkeypatch.context() as mp:  # one video: extracted in this process, where these patches apply
        forbid(mp, V, "write_video", "scan must not write tube MP4s")
        forbid(mp, V, "VideoWriter", "scan must not write tube MP4s")
        forbid(mp, V, "read_video", "scan must not decode tube MP4s")
        first = scan(["mc3_112"])
    assert first.status == STATUS_OK and first.n_faces == 1 and first.cached_members == []
    assert not list(scan_tubes_dir().rglob("*.mp4"))
    assert list(scan_tubes_dir().rglob("result.json")) and list(scan_tubes_dir().rglob("tube0.npz"))

    # What the member saw: the crops of the decoded frames, exactly.
    face = first.faces[0]
    frames = V.decode(carphone, max_frames=100)
    crops = X.tube_frames(frames, face.box, face.first_frame, face.last_frame)
    sc = S.Scanner(members=["mc3_112"], device="cpu")
    (direct,) = sc.score_tubes([SI.LoadedTube(0, 0, crops, None)])
    assert first.members["mc3_112"] == direct["mc3_112"]
    # ... and not what an H.264 round trip of them gives.
    V.write_video(tmp_path / "t.mp4", crops, 25.0)
    (mp4,) = sc.score_tubes([SI.LoadedTube(0, 0, V.read_video(tmp_path / "t.mp4"), None)])
    assert mp4["mc3_112"] != direct["mc3_112"]

    # A rerun: every score is cached, so the video is not even decoded.
    with monkeypatch.context() as mp:
        forbid(mp, V, "decode", "a fully cached video must not be decoded")
        forbid(mp, V, "decode_iter", "a fully cached video must not be decoded")
        again = scan(["mc3_112"])
    assert again.cached_members == ["mc3_112"] and again.p_fake == first.p_fake

    # One more member: decoded and cropped again (the geometry is cached: no detection); only
    # the new member runs.
    calls = {"n": 0}
    real_decode = V.decode_iter

    def counted_decode(*a, **k):
        calls["n"] += 1
        return real_decode(*a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(V, "decode_iter", counted_decode)
        forbid(mp, XJ, "_find", "the tube geometry is cached: no detection")
        forbid(mp, XJ, "_detect_pass", "the tube geometry is cached: no detection")
        both = scan(["mc3_112", "seresnext50_2d"])
    assert calls["n"] == 1 and both.cached_members == ["mc3_112"]
    assert both.members["mc3_112"] == first.members["mc3_112"] and both.members["seresnext50_2d"] is not None

    # --keep-tubes writes the MP4s to look at; the members still score the crops in memory.
    kept = scan(["mc3_112"], keep_tubes=True, reuse_scores=False)
    assert kept.members["mc3_112"] == first.members["mc3_112"]
    tube = kept.faces[0].tube_path
    assert tube.endswith("tube0.mp4") and V.read_video(tube).shape == crops.shape


def test_extraction_waits_for_the_models(tmp_path):
    """A large folder: the extractor is held back by a bounded queue, so at most a few videos'
    crops are in memory at once, however fast the extraction is."""
    n_videos, handed, scored = 40, [0], [0]
    worst = [0]
    lock = threading.Lock()

    def extractor(paths, device, workers, on_video):
        for i, p in enumerate(paths):
            px = np.full((30, 256, 256, 3), 100 + i, np.uint8)
            rows = [dict(tube_id=0, first_frame=0, last_frame=29, n_frames=30, x1=0, y1=0, x2=50, y2=50,
                         mean_prob=0.99, tube_path="", tube2d_path="")]
            with lock:
                handed[0] += 1
                worst[0] = max(worst[0], handed[0] - scored[0])
            on_video(i, SI.Extracted(str(p), p.name, STATUS_OK, "", 0.0, rows, pixels={0: (px, None)}, key=f"k{i}"))

    m = member(Brightness3d(), "mc3_112", "bright")
    inner = m.predict

    def slow_predict(x):
        time.sleep(0.01)
        out = inner(x)
        with lock:
            scored[0] += int(x.shape[0])
        return out

    m.predict = slow_predict
    sc = S.Scanner(members=[m], device="cpu", extractor=extractor, chunk_size=2)
    res = sc.scan([tmp_path / f"v{i}.mp4" for i in range(n_videos)])
    assert [r.status for r in res] == [STATUS_OK] * n_videos
    assert res[0].p_fake < res[-1].p_fake  # each video's own pixels
    # in flight: the queue (chunk size), the chunk being scored, the next chunk, the one being handed
    assert worst[0] <= 3 * 2 + 1, worst[0]
