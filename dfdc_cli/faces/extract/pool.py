"""The process pool: worker processes that run the per-video job, and the detection they share.

With ``workers > 1`` each worker process runs the whole per-video job (:func:`.job.safe_process`)
on CPU, one torch thread each. With detection in the main process (``remote``: a GPU), the workers
decode, resize and crop, and send the frames to be detected to the main process, which batches
them across videos (:func:`detect_batched`).

Parent and workers talk in the typed messages below, one queue per worker for what the parent
sends (so a detection answer reaches the worker that asked) and one shared queue for what the
workers send::

    parent -> worker   Job, DetectAnswer, Stop
    worker -> parent   Ready, DetectRequest, Done
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
import time
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, Union

from dfdc_cli.faces.detectors import DetectSettings, load as load_detector
from dfdc_cli.faces.extract.job import FILES, LazyDetect, safe_process
from dfdc_cli.faces.extract.params import ExtractParams
from dfdc_cli.faces.inputs import VideoInput
from dfdc_cli.lifecycle import GRACE_S, forkserver_preload, watch_parent
from dfdc_cli.runtime import one_thread


class Job(NamedTuple):
    """Parent -> worker: extract this video."""

    job_id: int
    path: str


class Stop(NamedTuple):
    """Parent -> worker: no more jobs; exit after the current one."""


class DetectAnswer(NamedTuple):
    """Parent -> worker: the faces of a DetectRequest's images, or why its batch failed."""

    req_id: int
    faces: Union[list, str]


class Ready(NamedTuple):
    """Worker -> parent: started."""

    wid: int


class DetectRequest(NamedTuple):
    """Worker -> parent: detect faces on these (detection-sized RGB) images."""

    wid: int
    req_id: int
    images: list
    settings: DetectSettings


class Outcome(NamedTuple):
    """A job's outcome as the pool (or an executor) hands it over: the entry's result, or why not."""

    index: int  # the job's position in the run
    result: Optional[dict]
    error: Optional[str]


class Done(NamedTuple):
    """Worker -> parent: a job's outcome (in the memory modes the pixels travel pickled in it)."""

    wid: int
    job_id: int
    result: Optional[dict]
    error: Optional[str]


def _worker_main(wid: int, tasks, results, out_dir: str, params: ExtractParams, remote: bool,
                 mode: str = FILES) -> None:
    """Worker loop: a Job in, a Done out, until Stop. ``remote``: detection goes to the parent as
    a DetectRequest, whose DetectAnswer comes back on this worker's task queue."""
    watch_parent()  # never outlive the main process, however it dies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business

    def stopped(signum, _frame):
        # Stopped (the run was interrupted, or the main process died): nobody reads a message
        # any more, so the exit must not wait for this worker's queue thread, which can block
        # for ever on a full pipe or on the queue's lock left held by a worker killed while
        # sending. finally blocks still run (half-written store entries are removed).
        results.cancel_join_thread()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    one_thread()
    counter = [0]

    def remote_detect(images, settings: DetectSettings):
        counter[0] += 1
        req = counter[0]
        results.put(DetectRequest(wid, req, images, settings))
        while True:
            msg = tasks.get()
            if isinstance(msg, DetectAnswer) and msg.req_id == req:
                if isinstance(msg.faces, str):
                    raise RuntimeError(f"detection failed in the main process: {msg.faces}")
                return msg.faces

    detect = remote_detect if remote else LazyDetect("cpu")
    results.put(Ready(wid))
    while True:
        msg = tasks.get()
        if isinstance(msg, Stop):
            return
        if not isinstance(msg, Job):
            continue
        res, err = safe_process(msg.path, out_dir, params, detect, mode)
        results.put(Done(wid, msg.job_id, res, err))


def mp_context():
    """Worker processes start from a fork server that has imported torch and the extractor once
    (per main process): starting a worker then takes milliseconds instead of seconds, and no
    worker is forked from a process whose torch/OpenMP threads are running (which can hang)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(forkserver_preload(["torch", "cv2", "av", "scipy.ndimage", "dfdc_cli.faces.extract", "dfdc_cli.faces.detectors.mtcnn"]))
    return ctx


REAP_S = 10.0  # how long a killed worker may take to be reaped (a loaded machine)


class Dead(NamedTuple):
    """A worker that died: the job it held (None when idle) and its exit code."""

    wid: int
    job_id: Optional[int]
    exitcode: Optional[int]


class Pool:
    """Worker processes with their own task queues (so detection answers reach the right one)."""

    def __init__(self, n: int, out_dir: str, params: ExtractParams, remote: bool, mode: str = FILES):
        self.ctx = mp_context()
        self.results = self.ctx.Queue()
        self.args = (out_dir, params, remote, mode)
        self.procs: dict[int, object] = {}
        self.tasks: dict[int, object] = {}
        self.busy: dict[int, Optional[int]] = {}
        self.next_wid = 0
        for _ in range(n):
            self.spawn()

    def spawn(self) -> int:
        wid = self.next_wid
        self.next_wid += 1
        q = self.ctx.Queue()
        p = self.ctx.Process(target=_worker_main, args=(wid, q, self.results, *self.args), daemon=True)
        p.start()
        self.procs[wid], self.tasks[wid], self.busy[wid] = p, q, None
        return wid

    def idle(self) -> list[int]:
        return [w for w, j in self.busy.items() if j is None]

    def submit(self, wid: int, job_id: int, path: str) -> None:
        self.busy[wid] = job_id
        self.tasks[wid].put(Job(job_id, path))

    def dead(self) -> list[Dead]:
        """Workers that died; they are replaced."""
        out = []
        for wid, p in list(self.procs.items()):
            if not p.is_alive():
                out.append(Dead(wid, self.busy.get(wid), p.exitcode))
                del self.procs[wid], self.tasks[wid], self.busy[wid]
                if threading.main_thread().is_alive():  # (at exit, multiprocessing ends them: let it)
                    self.spawn()
        return out

    def close(self, abort: bool = False) -> None:
        """Stop the workers: after their current job, or (``abort``: the run was interrupted or
        given up) at once, SIGTERM letting them remove half-written entries; SIGKILL for any
        worker still there after that."""
        if abort:
            for p in self.procs.values():
                if p.is_alive():
                    p.terminate()
        else:
            for wid, q in self.tasks.items():
                try:
                    q.put(Stop())
                except (OSError, ValueError):
                    pass  # that worker's queue is gone with it; the join below settles it
        deadline = time.time() + (GRACE_S + 1 if abort else 5)
        for p in self.procs.values():
            p.join(timeout=max(0.1, deadline - time.time()))
        for p in self.procs.values():
            if p.is_alive() and not abort:
                p.terminate()
                p.join(timeout=GRACE_S)
            if p.is_alive():
                p.kill()
        reaped = time.time() + REAP_S
        for p in self.procs.values():
            # A killed worker is gone once the fork server has reaped it; until then
            # multiprocessing's exit handler would wait for it without a time limit.
            p.join(timeout=max(0.0, reaped - time.time()))
        # Nothing more goes to the workers: the exit must not wait for the queue threads
        # (a Stop left in a pipe nobody reads), and the pipes close now.
        for q in [*self.tasks.values(), self.results]:
            q.cancel_join_thread()
            q.close()


def detect_batched(detector, requests: Sequence[tuple[list, DetectSettings]]) -> list:
    """Detections for several videos' frames at once. ``requests``: (images, settings); those of
    equal frame size and settings go through the detector as one batch. Per request: its
    :class:`~dfdc_cli.faces.index.Faces` per image, or the error message when its batch failed. (The
    local GPU path's main process and the Ray detector actors.)"""
    answers: list = [None] * len(requests)
    groups: dict = {}
    for i, (images, settings) in enumerate(requests):
        size = images[0].shape if images else None
        groups.setdefault((size, settings), []).append(i)
    for (size, settings), idx in groups.items():
        allimgs = [im for i in idx for im in requests[i][0]]
        try:
            faces = detector.faces(allimgs, settings) if allimgs else []
            err = None
        except Exception as exc:  # noqa: BLE001 -- reported to each video of the batch
            faces, err = None, f"{type(exc).__name__}: {exc}"
        pos = 0
        for i in idx:
            n = len(requests[i][0])
            answers[i] = err if err is not None else faces[pos : pos + n]
            pos += n
    return answers


def _serve_detections(pool: Pool, requests: list[DetectRequest], detector) -> None:
    """Answer the workers' pending detection requests, batched across videos by frame size."""
    answers = detect_batched(detector, [(r.images, r.settings) for r in requests])
    for r, answer in zip(requests, answers):
        if r.wid in pool.tasks:
            pool.tasks[r.wid].put(DetectAnswer(r.req_id, answer))


def run_pool(
    jobs: list[VideoInput], out_dir: str, params: ExtractParams, device: str, workers: int, remote: bool,
    mode: str = FILES, on_start: Optional[Callable[[int], None]] = None,
) -> Iterator[Outcome]:
    """``workers`` processes extracting ``jobs``: one :class:`Outcome` per job, in completion
    order. A worker that dies is replaced and its job retried once. ``on_start(k)``: job ``k``
    was handed to a worker."""
    detector = None
    if remote:
        detector = load_detector(device=device, batch_size=64)
    pool = Pool(max(1, workers), out_dir, params, remote, mode)
    pending = list(range(len(jobs)))[::-1]
    crashes: dict[int, int] = {}
    running = 0

    def fill() -> None:
        nonlocal running
        for wid in pool.idle():
            if not pending:
                break
            j = pending.pop()
            if on_start is not None:
                on_start(j)
            pool.submit(wid, j, jobs[j].path)
            running += 1

    completed = False
    try:
        while pending or running:
            if not threading.main_thread().is_alive():
                # The program is exiting (Ctrl-C while this runs in a side thread, as in scan);
                # a worker started now would keep multiprocessing's exit waiting for it forever.
                return
            fill()
            det_reqs: list[DetectRequest] = []
            finished: list[Outcome] = []
            try:
                msg = pool.results.get(timeout=0.2)
                while True:
                    if isinstance(msg, DetectRequest):
                        det_reqs.append(msg)
                    elif isinstance(msg, Done):
                        if msg.wid in pool.busy:
                            pool.busy[msg.wid] = None
                        running -= 1
                        finished.append(Outcome(msg.job_id, msg.result, msg.error))
                    msg = pool.results.get_nowait()
            except queue.Empty:
                pass
            # Workers blocked on detections and idle workers are served before the consumer
            # gets control: it may take a while with each result.
            if det_reqs:
                _serve_detections(pool, det_reqs, detector)
            for d in pool.dead():
                if d.job_id is None:
                    continue
                running -= 1
                crashes[d.job_id] = crashes.get(d.job_id, 0) + 1
                if crashes[d.job_id] < 2:
                    pending.append(d.job_id)  # one retry in a fresh worker
                else:
                    why = " -9: killed, out of memory?" if d.exitcode == -9 else f" {d.exitcode}"
                    finished.append(Outcome(d.job_id, None, f"worker process crashed (exit code{why})"))
            fill()
            yield from finished
        completed = True
    finally:
        pool.close(abort=not completed)

