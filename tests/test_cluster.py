"""--ray: extraction and scans on a local Ray cluster (two CPUs, started once for the module),
compared with local runs; worker deaths; the install hint without Ray."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from dfdc_cli import cluster as C
from dfdc_cli import extract as X
from dfdc_cli.index import Track, read_tubes

from cli_util import run_cli
from index_util import assert_same_index

TRAIN = X.PRESETS["train"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # Test-module functions (the dying job below) travel to the workers by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    C.local_priority()
    for attempt in range(2):  # Ray gives its processes 30 s to start, which a busy CI box can miss
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception:  # noqa: BLE001 - once more, then the error
            ray.shutdown()
            if attempt:
                raise
    yield ray
    ray.shutdown()


def test_ray_extract_gives_the_local_index_and_resumes(ray_cluster, tmp_path, small_batch, small_batch_index, monkeypatch, capsys):
    out = tmp_path / "ray"
    code, stdout, err = run_cli(monkeypatch, capsys, "extract", small_batch, "--out", out, "--preset", "train",
                                "--ray", "local")
    assert code == 1, err  # bad.mp4 is not a video: reported, the batch goes on
    assert "bad.mp4" in err and "not a video" in err
    assert "total" in stdout and "4" in stdout  # the same summary as a local run
    assert_same_index(out, small_batch_index)
    for ray_t, loc_t in zip(read_tubes(out).itertuples(), read_tubes(small_batch_index).itertuples()):
        a, b = Track.load(ray_t.track_path), Track.load(loc_t.track_path)
        # float32 detections: other torch thread counts may change the last bits, not the geometry
        assert np.array_equal(a.frames, b.frames) and np.allclose(a.boxes, b.boxes, atol=1e-3)
    # A second run (e.g. after an interruption) finds every finished video in the shared store.
    res = X.extract([small_batch], out, TRAIN, progress=False, quiet=True, executor=C.ExtractExecutor(out, TRAIN))
    assert res.cached == 3 and res.n_errors == 1


def test_detector_actor_gives_the_same_index(ray_cluster, tmp_path, small_batch, small_batch_index):
    """The GPU path's detector actor (here on the CPU: no GPU in CI) gives the same tubes."""
    out = tmp_path / "actor"
    ex = C.ExtractExecutor(out, TRAIN, detect_actors=1, actor_device="cpu")
    res = X.extract([small_batch], out, TRAIN, progress=False, quiet=True, executor=ex)
    assert res.n_errors == 1
    assert_same_index(out, small_batch_index)


def _dying_job(path, out_dir, params, detectors):
    """Kills its worker: always for two_faces.mp4, once (a marker file remembers) for no_face.mp4."""
    name = Path(path).name
    marker = Path(out_dir) / f".died-{name}"
    if name == "two_faces.mp4" or (name == "no_face.mp4" and not marker.exists()):
        marker.touch()
        os._exit(3)
    return C._extract_job(path, out_dir, params, detectors)


def test_a_dying_worker_is_retried_then_reported(ray_cluster, tmp_path, small_batch):
    out = tmp_path / "out"
    out.mkdir()
    ex = C.ExtractExecutor(out, TRAIN, max_retries=1, job=_dying_job)
    res = X.extract([small_batch], out, TRAIN, progress=False, quiet=True, executor=ex)
    by = {v.name: v for v in res.videos}
    assert by["two_faces.mp4"].status == "error" and "worker died" in by["two_faces.mp4"].reason
    assert by["no_face.mp4"].status == "no_face"  # died once, retried, done
    assert by["brief_face.mp4"].status == "no_face" and by["bad.mp4"].status == "error"


@pytest.mark.slow
def test_ray_scan_equals_a_local_scan(ray_cluster, tmp_path, monkeypatch, capsys, carphone, tiny_members):
    from dfdc_cli.paths import ENV_CACHE

    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    local_js, ray_js = tmp_path / "local.json", tmp_path / "ray.json"
    code, _, err = run_cli(monkeypatch, capsys, "scan", carphone, bad, "--workers", "1", "--json", local_js)
    assert code == 1, err
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "other-cache"))  # nothing reused from the local scan
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, bad, "--ray", "local", "--json", ray_js)
    assert code == 1, err
    loc, ray = json.loads(local_js.read_text()), json.loads(ray_js.read_text())
    assert loc["members"] == ray["members"] == tiny_members
    assert [v["name"] for v in ray["videos"]] == [v["name"] for v in loc["videos"]]
    for a, b in zip(loc["videos"], ray["videos"]):
        assert (a["status"], a["n_faces"], a["verdict"]) == (b["status"], b["n_faces"], b["verdict"])
        assert a["p_fake"] == pytest.approx(b["p_fake"], abs=1e-5)
        for fa, fb in zip(a["faces"], b["faces"]):
            assert fa["box"] == fb["box"]
            assert fa["members"] == pytest.approx(fb["members"], abs=1e-5)
    # the actors used the driver's cache (scan keeps the tube geometry there: tracks, no MP4s)
    assert any((tmp_path / "other-cache" / "scan-tubes").rglob("tube0.npz"))


def test_without_ray_the_flag_says_how_to_install(monkeypatch, capsys, tmp_path, small_batch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, out, err = run_cli(monkeypatch, capsys, "extract", small_batch, "--out", tmp_path, "--ray", "local")
    assert code == 2
    assert 'pip install "deepfake[ray]"' in err and len(err.strip().splitlines()) == 1
