"""Extraction on a Ray cluster (``deepfake extract --ray``): each video is one Ray task running the local
path's per-video job (:func:`dfdc_cli.faces.extract.job.safe_process`: cache lookup, decode, detect, crop,
write the store entry). The driver gets each video's result as it finishes and settles it exactly as a
local run does (same progress bar, same index rows, index written atomically by the driver), so an
interrupted cluster run resumes like a local one. A task whose worker dies is retried (``max_retries``),
then reported as that video's error; the batch goes on. With ``--device cuda`` the face detector runs
in GPU actors, one per GPU of the cluster, which batch the frames of all the videos being extracted at
once (as the local CUDA path does in its main process); the tasks decode and crop on any node's CPUs.

Joining the cluster and describing its failures: :mod:`dfdc_cli.scale.cluster`.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from dfdc_cli.errors import UserError
from dfdc_cli.faces.detectors import DetectSettings, load as load_detector
from dfdc_cli.faces.extract.job import LazyDetect, safe_process
from dfdc_cli.faces.extract.pool import detect_batched
from dfdc_cli.runtime import one_thread
from dfdc_cli.scale.cluster import describe_failure, require_ray


_local_detect = None  # per Ray worker process: MTCNN loaded once, reused by the tasks it runs


def _extract_job(path: str, out_dir: str, params, detectors: Sequence) -> tuple:
    """One video, on a Ray worker: the local path's per-video job; detection in this process or,
    given detector actors, in one of them (picked by the path, so retries go to the same one)."""
    global _local_detect

    one_thread()
    if detectors:
        ray = require_ray()
        actor = detectors[sum(path.encode()) % len(detectors)]

        def detect(images, settings: DetectSettings):
            return ray.get(actor.detect.remote(images, settings))
    else:
        if _local_detect is None:
            _local_detect = LazyDetect("cpu")
        detect = _local_detect
    return safe_process(path, out_dir, params, detect)


class DetectorActor:
    """The face detector on one device, serving the tasks' detection requests batched across videos: the
    requests that arrive while a batch runs (or within ``wait_s`` of the first) form the next one
    (:func:`dfdc_cli.faces.extract.pool.detect_batched`, the local CUDA path's batching)."""

    def __init__(self, device: str = "cuda", batch_size: int = 64, wait_s: float = 0.005):
        one_thread()
        self.detector = load_detector(device=device, batch_size=batch_size)
        self.wait_s = wait_s
        self.queue: list = []
        self.flushing = False
        self.pool = ThreadPoolExecutor(1)  # the device runs one batch at a time
        self.batches = 0

    async def detect(self, images, settings: DetectSettings):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        # Arrays from Ray's object store are read-only; torch wants writable ones.
        self.queue.append(([np.array(im) for im in images], settings, fut))
        if not self.flushing:
            self.flushing = True
            loop.create_task(self._flush())
        answer = await fut
        if isinstance(answer, str):
            raise RuntimeError(f"detection failed in the detector actor: {answer}")
        return answer

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(self.wait_s)
            while self.queue:
                reqs, self.queue = self.queue, []
                answers = await loop.run_in_executor(
                    self.pool, detect_batched, self.detector, [(ims, kw) for ims, kw, _ in reqs])
                self.batches += 1
                for (_, _, fut), a in zip(reqs, answers):
                    fut.set_result(a)
        finally:
            self.flushing = False

    def stats(self) -> dict:
        return {"batches": self.batches}


class ExtractExecutor:
    """Runs extraction jobs as Ray tasks; the ``executor`` of :func:`dfdc_cli.faces.extract.iter_extract`.

    ``device``: ``cpu`` (detection in the tasks) or ``cuda`` (one detector actor per GPU of the
    cluster). ``detect_actors``: that many detector actors on ``actor_device`` whatever the
    device (tests run the actor path on the CPU). ``window``: tasks in flight (default: 2 per
    cluster CPU), so the driver never holds the whole batch's futures. ``max_retries``: Ray's
    retries of a task whose worker died. ``job``: the per-video function a task runs (tests make
    one that kills its worker)."""

    def __init__(self, out_dir: str | Path, params, device: str = "cpu", detect_actors: Optional[int] = None,
                 actor_device: Optional[str] = None, window: Optional[int] = None, max_retries: int = 2,
                 job: Callable = None):
        self.out_dir = str(Path(out_dir).expanduser().resolve())
        self.params = params
        self.device = (device or "cpu").strip().lower()
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise UserError(f"unknown device {device!r} (cpu, cuda)")
        self.detect_actors = detect_actors
        self.actor_device = actor_device
        self.window = window
        self.max_retries = int(max_retries)
        self.actors: list = []
        self.job = job or _extract_job

    def _start_actors(self, ray) -> list:
        if self.detect_actors is not None:
            n, gpus, dev = int(self.detect_actors), 0, self.actor_device or self.device
        elif self.device.startswith("cuda"):
            n = int(ray.cluster_resources().get("GPU", 0))
            if n == 0:
                raise UserError("--device cuda with --ray: the Ray cluster has no GPU (start the GPU nodes with "
                                "`ray start ... --num-gpus N`, or use --device cpu)")
            gpus, dev = 1, "cuda"  # Ray gives each actor its own GPU as cuda:0
        else:
            return []
        cls = ray.remote(DetectorActor).options(num_gpus=gpus, num_cpus=0, max_restarts=2, max_task_retries=2)
        return [cls.remote(dev) for _ in range(n)]

    def __call__(self, jobs: Sequence) -> Iterator[tuple[int, Optional[dict], Optional[str]]]:
        ray = require_ray()
        self.actors = self._start_actors(ray)
        task = ray.remote(self.job).options(num_cpus=1, max_retries=self.max_retries)
        window = self.window or max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))
        out_dir, params = self.out_dir, ray.put(self.params)
        todo = collections.deque(range(len(jobs)))
        running: dict = {}
        try:
            while todo or running:
                while todo and len(running) < window:
                    j = todo.popleft()
                    running[task.remote(jobs[j].path, out_dir, params, self.actors)] = j
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in ready:
                    j = running.pop(ref)
                    try:
                        res, err = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        res, err = None, describe_failure(exc, self.max_retries + 1)
                    yield j, res, err
        finally:
            for ref in running:  # an interrupted run stops its tasks; the finished entries stay
                ray.cancel(ref, force=True)
            for a in self.actors:
                ray.kill(a)
