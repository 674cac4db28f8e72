"""--ray: extraction and scans on a local Ray cluster (two CPUs, started once for the module),
compared with local runs; worker deaths; the install hint without Ray."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from dfdc_cli.faces.extract import cluster as XC
from dfdc_cli.scale import cluster as C
from dfdc_cli.faces import extract as X
from dfdc_cli.faces.index import Track, read_tubes

from cli_util import run_cli
from index_util import assert_same_index

TRAIN = X.PRESETS["train"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # Test-module functions (the dying job below) travel to the workers by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with C.local_cluster() as temp_dir:  # loopback ports and a temporary folder, as `--ray local`
        for attempt in range(2):  # Ray gives its processes 30 s to start, which a busy CI box can miss
            try:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                         _node_ip_address=C.LOOPBACK, _temp_dir=str(temp_dir))
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
    res = X.extract([small_batch], out, TRAIN, progress=False, quiet=True, executor=XC.ExtractExecutor(out, TRAIN))
    assert res.cached == 3 and res.n_errors == 1


def test_detector_actor_gives_the_same_index(ray_cluster, tmp_path, small_batch, small_batch_index):
    """The GPU path's detector actor (here on the CPU: no GPU in CI) gives the same tubes."""
    out = tmp_path / "actor"
    ex = XC.ExtractExecutor(out, TRAIN, detect_actors=1, actor_device="cpu")
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
    return XC._extract_job(path, out_dir, params, detectors)


def test_a_dying_worker_is_retried_then_reported(ray_cluster, tmp_path, small_batch):
    out = tmp_path / "out"
    out.mkdir()
    ex = XC.ExtractExecutor(out, TRAIN, max_retries=1, job=_dying_job)
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


# ----------------------------------------------------------------------------------------------
# A local cluster is private: loopback ports, its own temporary folder, removed at the end

LOCAL_RUN = """
import os, sys
sys.path.insert(0, {repo!r})
from dfdc_cli.scale import cluster as C
def worker_pid():
    return os.getpid()
with C.connect("local", 1) as ray:
    pid = ray.get(ray.remote(worker_pid).remote())  # a worker has started and listens too
    print("running", pid, flush=True)
    sys.stdin.readline()
print("stopped", flush=True)
"""


def _listening_sockets() -> dict[int, str]:
    """inode -> address of every TCP socket listening on this machine (from /proc/net)."""
    import ipaddress

    out = {}
    for name, v6 in (("tcp", False), ("tcp6", True)):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            hexip = f[1].split(":")[0]
            # the address is stored as 32-bit words in the host's (little-endian) byte order
            raw = b"".join(bytes.fromhex(hexip[i:i + 8])[::-1] for i in range(0, len(hexip), 8))
            out[int(f[9])] = str(ipaddress.ip_address(raw))
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _is_loopback(addr: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from /proc (Linux)")
def test_local_cluster_listens_on_loopback_only_and_removes_its_temp_folder(tmp_path):
    import subprocess
    import time

    pytest.importorskip("ray")
    repo = Path(__file__).resolve().parents[1]
    import shutil
    import tempfile

    # a short folder of its own (a socket path has at most 107 bytes), watched for what Ray leaves
    tmp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp" if os.path.isdir("/tmp") else None))
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_RUN.format(repo=str(repo))], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line.startswith("running"), proc.stderr.read()[-3000:]
        worker = int(line.split()[1])
        ray_procs = _descendants(proc.pid)
        assert worker in ray_procs
        listening = _listening_sockets()
        ours = {inode: listening[inode] for p in ray_procs | {proc.pid} for inode in _socket_inodes(p)
                if inode in listening}
        # the GCS, the raylet and the worker at least, each on a loopback address only
        assert len(ours) >= 3, ours
        assert all(_is_loopback(a) for a in ours.values()), sorted(set(ours.values()))
        # Ray's session files are in this run's own folder
        (private,) = list(tmp.iterdir())
        assert private.name.startswith("deepfake-ray-") and list(private.glob("session_*/logs"))
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "stopped" in out, err[-3000:]
        t0 = time.time()
        while (set(ray_procs) & _descendants(1)) and time.time() - t0 < 30:
            ray_procs = {p for p in ray_procs if Path(f"/proc/{p}").exists()}
            time.sleep(0.5)
        assert list(tmp.iterdir()) == []  # nothing left behind in the temporary folder
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(tmp, ignore_errors=True)  # (the test's own folder, checked empty above)


def test_a_long_temp_folder_falls_back_on_a_short_one(monkeypatch, tmp_path):
    import tempfile

    long = tmp_path / ("x" * 60)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    with C.local_cluster() as temp_dir:
        assert temp_dir.is_dir() and len(str(temp_dir)) + 64 <= 107 and long not in temp_dir.parents
        (temp_dir / "session_x" / "logs").mkdir(parents=True)
        (temp_dir / "session_x" / "logs" / "raylet.out").write_text("log")
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert not temp_dir.exists()  # removed with what Ray wrote in it
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") is None  # the environment as it was
