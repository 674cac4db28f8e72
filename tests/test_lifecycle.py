"""How batches end: workers never outlive a killed `deepfake extract` (SIGKILL included), Ctrl-C
stops a batch with the finished videos indexed and exit code 130, and the index is kept up to date
while a batch runs. The CLI runs as a real subprocess on small generated videos."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfdc_cli import lifecycle
from dfdc_cli.faces.index import read_videos

from conftest import astronaut_face, face_frames

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Processes, from /proc


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text[text.rindex(")") + 2 :].split()
    return int(f[1]), f[0], f[19]


def descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every live process below ``pid``."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (s := _stat(int(d))) is not None:
            children.setdefault(s[0], []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            s = _stat(c)
            if s is not None and s[1] not in "ZX":
                out.add((c, s[2]))
                todo.append(c)
    return out


def survivors(procs: set[tuple[int, str]]) -> set[int]:
    """Those of ``procs`` still running (a zombie has ended; a reused pid is another process)."""
    left = set()
    for pid, start in procs:
        s = _stat(pid)
        if s is not None and s[1] not in "ZX" and s[2] == start:
            left.add(pid)
    return left


def wait_for(cond, timeout: float, what: str, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (exit code {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def gone_within(procs: set, timeout: float) -> set[int]:
    t0 = time.time()
    while survivors(procs) and time.time() - t0 < timeout:
        time.sleep(0.1)
    return survivors(procs)


# ----------------------------------------------------------------------------------------------
# A batch that runs long enough to be stopped in the middle


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory) -> Path:
    """Twelve small, distinct videos (160x120, 40 frames, a face moving its own way)."""
    from dfdc_cli.faces.video import write_video

    d = tmp_path_factory.mktemp("many")
    face = astronaut_face(48)
    for k in range(12):
        frames = face_frames(40, (120, 160), lambda i, k=k: [(10 + 6 * k + i // 2, 20 + (i * k) % 30)],
                             face=face, background=60 + 10 * k)
        write_video(d / f"v{k:02d}.mp4", frames, 25)
    return d


def explain(procs: set) -> str:
    """What each live process of ``procs`` is and where the kernel has it waiting."""
    lines = []
    for pid in sorted(survivors(procs)):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:120]
            wchan = Path(f"/proc/{pid}/wchan").read_text()
        except OSError:
            continue
        lines.append(f"{pid} state {_stat(pid)[1]} waiting in {wchan or '-'}: {cmd}")
    return "\n".join(lines)


def communicate_or_explain(proc: subprocess.Popen, procs: set, timeout: float) -> tuple[str, str]:
    """proc.communicate(timeout); past it, fail saying whether the main process ended and which
    processes are still there."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        state = "still running" if proc.poll() is None else f"ended (exit code {proc.returncode})"
        pytest.fail(f"not ended within {timeout:.0f} s: the main process {state}; alive:\n{explain(procs | {(proc.pid, _stat(proc.pid)[2] if _stat(proc.pid) else '')})}")


def start_extract(videos: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    # --every 1 --scale 1: detection on every full-size frame, so each video takes a while
    cmd = [sys.executable, "-m", "dfdc_cli", "extract", str(videos), "--out", str(out), "-j", "2",
           "--every", "1", "--scale", "1", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finished_entries(out: Path) -> set[str]:
    return {p.parent.name for p in (out / "store").glob("*/*/result.json")}


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def test_sigkill_leaves_no_process_and_an_up_to_date_index(tmp_path, many_videos):
    out = tmp_path / "out"
    proc = start_extract(many_videos, out)
    try:
        # workers are the main process's grandchildren (fork server -> worker)
        wait_for(lambda: any(_stat(p)[0] != proc.pid for p, _ in descendants(proc.pid) if _stat(p)),
                 180, "the workers to start", proc)
        # the index holds finished videos while the run goes on
        wait_for(lambda: (out / "videos.csv").exists(), 180, "the first index rows", proc)
        procs = descendants(proc.pid)
        assert len(procs) >= 3  # fork server, two workers (and multiprocessing's resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert gone_within(procs, 10) == set(), "processes of the killed run are still alive"
        rows = read_videos(out)
        assert 1 <= len(rows) < 12
        assert set(rows["status"]) <= {"ok", "no_face"}
        assert set(rows["key"]) <= finished_entries(out)  # rows only for finished videos
    finally:
        stop(proc)


def test_ctrl_c_indexes_the_finished_videos_and_exits_130(tmp_path, many_videos):
    out = tmp_path / "out"
    proc = start_extract(many_videos, out)
    try:
        wait_for(lambda: finished_entries(out), 180, "a finished video", proc)
        procs = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        # The main process ends, and so does every process holding its output (fork server,
        # resource tracker, workers): a caller reading the output to its end is not kept waiting.
        _, err = communicate_or_explain(proc, procs | descendants(proc.pid), 60)
        assert proc.returncode == 130, err[-2000:]
        assert "interrupted (Ctrl-C)" in err and "of 12 videos done" in err and "resume" in err
        rows = read_videos(out)
        done = finished_entries(out)
        assert set(rows["key"]) == done and 1 <= len(rows) < 12  # every finished video, no other
        assert not list((out / "store").glob("*/.*.tmp"))  # the stopped workers removed their partial entries
        assert gone_within(procs, 10) == set()
    finally:
        stop(proc)


def test_a_video_whose_entry_is_complete_when_the_run_stops_is_indexed(tmp_path, many_videos, monkeypatch):
    """Ctrl-C right after a video's store entry is in place, before its outcome is handed over
    (in the pool: still in the pipe): the video is in the index all the same."""
    from dfdc_cli.faces import extract as X
    from dfdc_cli.faces.extract import run as R

    real, finished = R.safe_process, []

    def then_ctrl_c(path, *args, **kwargs):
        real(path, *args, **kwargs)
        finished.append(path)
        raise lifecycle.Interrupted("", signal.SIGINT)
        return out

    monkeypatch.setattr(R, "safe_process", then_ctrl_c)
    out = tmp_path / "out"
    with pytest.raises(lifecycle.Interrupted) as stopped:
        X.extract(sorted(many_videos.glob("*.mp4"))[:2], out, workers=1, progress=False, summary=False)
    assert "1 of 2 videos done" in str(stopped.value) and len(finished) == 1
    rows = read_videos(out)
    assert len(rows) == 1 and set(rows["key"]) == finished_entries(out)


# ----------------------------------------------------------------------------------------------
# The watchdog and the signal handling, in isolation


WATCHED_CHILD = """
import os, sys, time
sys.path.insert(0, {repo!r})
from dfdc_cli.lifecycle import watch_parent
watch_parent({pid}, interval=0.1)
print("watching", flush=True)
time.sleep(60)
"""


def test_watch_parent_direct_parent_killed():
    """The watched process is the OS parent (as for DataLoader workers): PDEATHSIG and the poll."""
    launcher = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', sys.argv[1]]); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", launcher, WATCHED_CHILD.format(repo=str(REPO), pid=None)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "watching"
        procs = descendants(parent.pid)
        assert len(procs) == 1
        parent.kill()
        parent.wait()
        assert gone_within(procs, 5) == set()
    finally:
        stop(parent)


def test_watch_parent_other_process_killed():
    """The watched process is not the OS parent (as for workers under a fork server): the poll."""
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child = subprocess.Popen([sys.executable, "-c", WATCHED_CHILD.format(repo=str(REPO), pid=watched.pid)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "watching"
        procs = {(child.pid, _stat(child.pid)[2])}
        time.sleep(0.5)
        assert survivors(procs) == {child.pid}  # it lives while the watched process does
        watched.kill()
        watched.wait()
        assert gone_within(procs, 5) == set()
    finally:
        stop(watched)
        stop(child)


def test_second_signal_stops_at_once():
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from dfdc_cli.lifecycle import Interrupted, graceful_signals\n"
        "with graceful_signals():\n"
        "    try:\n"
        "        print('ready', flush=True); time.sleep(60)\n"
        "    except Interrupted as exc:\n"
        "        print('stopping', exc.signum, flush=True); time.sleep(60)  # a slow cleanup\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.stdout.readline().strip() == f"stopping {int(signal.SIGTERM)}"
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 130 and time.time() - t0 < 5
    assert "stopped at once" in err


def test_interrupted_exit_codes():
    assert lifecycle.Interrupted("x", signal.SIGINT).exit_code == 130
    assert lifecycle.Interrupted("", signal.SIGTERM).exit_code == 143
    assert not isinstance(lifecycle.Interrupted(), Exception)  # `except Exception` does not swallow it
