"""Extraction and scans across the machines of a Ray cluster (``--ray local|auto|ADDRESS``).

Ray (an optional extra: ``pip install "deepfake[ray]"``) schedules the work; this module only maps
the tool's per-video jobs onto it:

* ``extract``: each video is one Ray task running the local path's per-video job
  (:func:`dfdc_cli.faces.extract.job.safe_process`: cache lookup, decode, detect, crop, write the store
  entry). The driver gets each video's result as it finishes and settles it exactly as a local
  run does (same progress bar, same index rows, index written atomically by the driver), so an
  interrupted cluster run resumes like a local one. A task whose worker dies is retried
  (``max_retries``), then reported as that video's error; the batch goes on. With
  ``--device cuda`` the face detector runs in GPU actors, one per GPU of the cluster, which batch
  the frames of all the videos being extracted at once (as the local CUDA path does in its main
  process); the tasks decode and crop on any node's CPUs.
* ``scan``: scan actors (one per GPU, or one per few CPUs on a CPU cluster) each run a
  :class:`dfdc_cli.scan.scanner.Scanner` over chunks of the videos; the members are loaded once by the
  driver and shipped to the actors, so every node scores with the same weights.

The tube store (``--out``) and the cache folder must be on a filesystem every node mounts at the
same path (NFS, Lustre, ...): tasks write the store entries there and the driver indexes them.
The GPU path cannot be exercised without GPUs; the tests run the actor path with the detector on
the CPU.
"""

from __future__ import annotations

import collections
import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from dfdc_cli.errors import UserError
from dfdc_cli.runtime import one_thread

INSTALL = 'Ray is not installed: pip install "deepfake[ray]"  (needed for --ray)'


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


@contextlib.contextmanager
def connect(address: str, num_cpus: Optional[int] = None) -> Iterator[object]:
    """Join (or start) the Ray cluster for one command: ``local`` starts a cluster on this
    machine (``num_cpus`` of its cores; all by default) and stops it afterwards; ``auto`` joins
    the cluster that ``ray start`` runs here; anything else is a cluster address
    (``HOST:6379``, ``ray://HOST:10001``). A driver already connected (a test, a notebook) is
    used as it is.

    A local cluster is this command's own: its ports listen on the loopback address only, its
    session files (logs, sockets, spilled objects) go to a private temporary folder that is
    removed when it stops, and its workers run at this process's priority."""
    if address is not None and address.strip() == "local":
        with local_cluster() as temp_dir:
            with _connect("local", num_cpus, temp_dir) as ray:
                yield ray
        return
    with _connect(address, num_cpus, None) as ray:
        yield ray


@contextlib.contextmanager
def _connect(address: str, num_cpus: Optional[int], temp_dir: Optional[Path]) -> Iterator[object]:
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = (address or "").strip()
    if not address:
        raise UserError("--ray: give local, auto or a cluster address")
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, _node_ip_address=LOOPBACK, _temp_dir=str(temp_dir), **kw)
        else:
            ray.init(address=address, **kw)
    except Exception as exc:  # noqa: BLE001 -- Ray raises bare Exceptions (e.g. a node start timeout)
        ray.shutdown()  # (what a half-started local cluster started, before its folder goes)
        hint = " (start one with `ray start --head`)" if address == "auto" else ""
        raise UserError(f"--ray {address}: cannot join the Ray cluster{hint}: {_first_line(exc)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


LOOPBACK = "127.0.0.1"
# Ray's servers (GCS, raylet, object manager, workers, agents) listen on the node's address, which
# is the machine's outward address unless Ray takes clusters to be off (its default on Windows and
# macOS): then it is the loopback address. Ray reads this when it is imported.
_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def local_cluster() -> Iterator[Path]:
    """The settings of a local cluster while it runs (:func:`connect`): loopback-only ports,
    workers at this process's priority (:func:`local_priority`), and a private temporary folder
    for Ray's session files, yielded, and removed (with a warning if it cannot be) at the end.
    The process's environment and Ray's setting are restored afterwards."""
    import tempfile

    saved = {k: os.environ.get(k) for k in (_CLUSTERS_ENV, "RAY_worker_niceness")}
    local_priority()
    os.environ[_CLUSTERS_ENV] = "0"
    constants = _ray_constants()
    was = constants.ENABLE_RAY_CLUSTER if constants is not None else None
    if constants is not None:  # Ray imported before: the setting was read then
        constants.ENABLE_RAY_CLUSTER = False
    temp_dir = Path(tempfile.mkdtemp(prefix="deepfake-ray-", dir=_short_temp_root()))
    try:
        yield temp_dir
    finally:
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = was
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _remove_tree(temp_dir)


# Ray's Unix sockets live in <temp>/session_<date>_<time>_<pid>/sockets/plasma_store: about 64 bytes
# below the temporary folder, of the 107 a socket path may have.
_SOCKET_PATH_MAX, _SESSION_SUFFIX = 107, 64 + len("/deepfake-ray-12345678")


def _short_temp_root() -> Optional[str]:
    """The temporary folder (TMPDIR, ...) unless Ray's socket paths under it would be too long;
    then /tmp."""
    import tempfile

    root = tempfile.gettempdir()
    if len(root.encode()) + _SESSION_SUFFIX > _SOCKET_PATH_MAX and os.path.isdir("/tmp"):
        return "/tmp"
    return None


def _ray_constants():
    """Ray's constants module when Ray is imported already, else None (read on import)."""
    import sys

    return sys.modules.get("ray._private.ray_constants")


def _remove_tree(path: Path, tries: int = 5) -> None:
    """Remove ``path``; Ray's processes may still be closing their logs just after shutdown, so
    a failure is retried for a moment, then reported in one line."""
    import shutil
    import time

    err: Optional[OSError] = None
    for i in range(tries):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            err = exc
            time.sleep(0.2 * (i + 1))
    from rich.markup import escape

    from dfdc_cli.ui import warn

    warn(escape(f"could not remove Ray's temporary folder {path}: {err.strerror or err}"))


def local_priority() -> None:
    """Ray starts its workers at niceness 15 (to keep its own daemons responsive): on a machine
    shared with other work they then get a fraction of the CPU that this command's local workers
    would. A local cluster is this command's own, so its workers run at the driver's priority
    (``RAY_worker_niceness`` set by the user wins)."""
    os.environ.setdefault("RAY_worker_niceness", "0")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _describe_failure(exc: BaseException, tries: int) -> str:
    """One line for a task or actor that Ray gave up on."""
    ray = require_ray()
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, UserError):
        raise exc.cause
    what = type(exc).__name__
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.RayActorError)):
        return f"Ray worker died ({what}) in {tries} tries"
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return f"Ray worker killed for memory ({what}) in {tries} tries"
    return f"Ray: {what}: {_first_line(exc)}"


# ----------------------------------------------------------------------------------------------
# Extraction

_local_detect = None  # per Ray worker process: MTCNN loaded once, reused by the tasks it runs


def _extract_job(path: str, out_dir: str, params, detectors: Sequence) -> tuple:
    """One video, on a Ray worker: the local path's per-video job; detection in this process or,
    given detector actors, in one of them (picked by the path, so retries go to the same one)."""
    global _local_detect
    from dfdc_cli.faces.extract.job import LazyDetect, safe_process

    one_thread()
    if detectors:
        ray = require_ray()
        actor = detectors[sum(path.encode()) % len(detectors)]

        def detect(images, thresholds, factor, min_face_size):
            return ray.get(actor.detect.remote(images, tuple(thresholds), factor, min_face_size))
    else:
        if _local_detect is None:
            _local_detect = LazyDetect("cpu")
        detect = _local_detect
    return safe_process(path, out_dir, params, detect)


class DetectorActor:
    """MTCNN on one device, serving the tasks' detection requests batched across videos: the
    requests that arrive while a batch runs (or within ``wait_s`` of the first) form the next one
    (:func:`dfdc_cli.faces.extract.pool.detect_batched`, the local CUDA path's batching)."""

    def __init__(self, device: str = "cuda", batch_size: int = 64, wait_s: float = 0.005):
        from concurrent.futures import ThreadPoolExecutor

        from dfdc_cli.faces.detectors.mtcnn import FaceDetector

        one_thread()
        self.detector = FaceDetector(device=device, batch_size=batch_size)
        self.wait_s = wait_s
        self.queue: list = []
        self.flushing = False
        self.pool = ThreadPoolExecutor(1)  # the device runs one batch at a time
        self.batches = 0

    async def detect(self, images, thresholds, factor, min_face_size):
        import asyncio

        import numpy as np

        from dfdc_cli.faces.extract.pool import DetectSettings

        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        # Arrays from Ray's object store are read-only; torch wants writable ones.
        settings = DetectSettings(tuple(thresholds), factor, min_face_size)
        self.queue.append(([np.array(im) for im in images], settings, fut))
        if not self.flushing:
            self.flushing = True
            loop.create_task(self._flush())
        answer = await fut
        if isinstance(answer, str):
            raise RuntimeError(f"detection failed in the detector actor: {answer}")
        return answer

    async def _flush(self) -> None:
        import asyncio

        from dfdc_cli.faces.extract.pool import detect_batched

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
                        res, err = None, _describe_failure(exc, self.max_retries + 1)
                    yield j, res, err
        finally:
            for ref in running:  # an interrupted run stops its tasks; the finished entries stay
                ray.cancel(ref, force=True)
            for a in self.actors:
                ray.kill(a)


# ----------------------------------------------------------------------------------------------
# Scans


class ScanActor:
    """A :class:`dfdc_cli.scan.scanner.Scanner` on one node (one GPU, or a few CPUs)."""

    def __init__(self, members: list, options: dict, cache_dir: str):
        from dfdc_cli.paths import ENV_CACHE
        from dfdc_cli.runtime import resolve_device

        # The scan's tube cache and score cache live in the driver's cache folder (shared).
        os.environ[ENV_CACHE] = cache_dir
        device = resolve_device(options.get("device"))
        for m in members:
            _to_device(m, device)
        self.options = {**options, "device": device}
        self.members = members

    def scan(self, paths: list, items: Optional[list] = None) -> list:
        from dfdc_cli.scan.inputs import items_extractor
        from dfdc_cli.scan.scanner import Scanner

        extractor = items_extractor(items) if items is not None else None
        scanner = Scanner(members=self.members, extractor=extractor, **self.options)
        return list(scanner.scan_iter([Path(p) for p in paths]))


def _to_device(member, device: str) -> None:
    import torch

    if member.module is None:
        return
    member.module.to(device)
    if torch.device(device).type == "cuda" and member.kind == "3d":
        with contextlib.suppress(RuntimeError):  # cuDNN's fast 3D convolutions want channels-last
            member.module.to(memory_format=torch.channels_last_3d)


class RayScanner:
    """The scan of :class:`dfdc_cli.scan.scanner.Scanner` (same ``scan_iter``, ``names``, ``members``,
    ``describe``), its videos split into chunks that scan actors across the cluster run.

    ``base``: a Scanner built on this machine's CPU, which loaded the members (they are shipped
    to the actors) and holds the weights and threshold. ``options``: the Scanner options the
    actors use (device, workers, batch_size, precision, score_dir, reuse_scores). ``items``:
    index items (``scan --index``) instead of extracting. ``actors``: how many (default: one per
    GPU when the device is cuda/auto and the cluster has GPUs, else one per ``cpus_per_actor``
    CPUs)."""

    def __init__(self, base, options: dict, items: Optional[Sequence] = None, actors: Optional[int] = None,
                 cpus_per_actor: Optional[int] = None, chunk_size: Optional[int] = None, max_restarts: int = 1):
        self.base = base
        self.members, self.names = base.members, base.names
        self.weights, self.threshold, self.rule = base.weights, base.threshold, base.rule
        self.options = dict(options)
        self.items = list(items) if items is not None else None  # aligned with scan_iter's paths
        self.n_actors, self.cpus_per_actor = actors, cpus_per_actor
        self.chunk_size = chunk_size
        self.max_restarts = int(max_restarts)
        self.device = str(self.options.get("device") or "auto")

    def describe(self) -> dict:
        return {**self.base.describe(), "device": self.device}

    def judged_by(self) -> str:
        return self.base.judged_by()

    def _actor_class(self, ray):
        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
        dev = self.device.lower()
        if dev.startswith("cuda") and gpus == 0:
            raise UserError("--device cuda with --ray: the Ray cluster has no GPU")
        use_gpu = gpus > 0 and dev != "cpu"
        if use_gpu:
            n = self.n_actors or gpus
            per = {"num_gpus": 1, "num_cpus": 1}
            self.options["device"] = "cuda"
            self.options["workers"] = self.options.get("workers") or self.cpus_per_actor or 4
            self.chunk = self.chunk_size or 16
        else:
            c = min(cpus, self.cpus_per_actor or 4)
            n = self.n_actors or max(1, cpus // c)
            per = {"num_cpus": c}
            self.options["device"] = "cpu"
            self.options["workers"] = self.options.get("workers") or c
            self.chunk = self.chunk_size or 4
        self.device = self.options["device"]
        return ray.remote(ScanActor).options(max_restarts=self.max_restarts, max_task_retries=self.max_restarts, **per), n

    def scan_iter(self, paths: Sequence[str | Path]) -> Iterator:
        from dfdc_cli.paths import cache_dir
        from dfdc_cli.scan.ensemble import aggregate_video
        from dfdc_cli.faces.index import STATUS_ERROR
        from dfdc_cli.scan.results import VideoScan

        ray = require_ray()
        paths = [Path(p) for p in paths]
        if not paths:
            return
        cls, n = self._actor_class(ray)
        members = ray.put(self.members)
        cache = str(cache_dir().resolve())
        actors: list = []

        def make():
            actors.append(cls.remote(members, self.options, cache))
            return actors[-1]

        idle = [make() for _ in range(min(n, len(paths)))]
        spare = len(idle)  # dead actors replaced at most this many times in a run
        chunks = collections.deque(
            list(range(i, min(i + self.chunk, len(paths)))) for i in range(0, len(paths), self.chunk))
        running: dict = {}
        results: list = [None] * len(paths)
        emitted = 0

        def failed(i: int, reason: str):
            r = VideoScan(video=str(paths[i]), name=paths[i].name, status=STATUS_ERROR, reason=reason)
            return aggregate_video(r, {}, self.names, self.weights, self.rule)

        try:
            while chunks or running:
                while chunks and idle:
                    idx = chunks.popleft()
                    actor = idle.pop()
                    chunk_paths = [str(paths[i]) for i in idx]
                    items = None if self.items is None else [self.items[i] for i in idx]
                    running[actor.scan.remote(chunk_paths, items)] = (actor, idx)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in ready:
                    actor, idx = running.pop(ref)
                    try:
                        for i, r in zip(idx, ray.get(ref)):
                            results[i] = r
                        idle.append(actor)
                    except ray.exceptions.RayError as exc:
                        reason = _describe_failure(exc, self.max_restarts + 1)
                        for i in idx:
                            results[i] = failed(i, reason)
                        if isinstance(exc, ray.exceptions.RayActorError) and spare > 0:
                            spare -= 1
                            idle.append(make())
                        elif not isinstance(exc, ray.exceptions.RayActorError):
                            idle.append(actor)
                    if not idle and not running and chunks:
                        raise UserError(f"--ray: every scan actor died ({reason})")
                while emitted < len(paths) and results[emitted] is not None:
                    yield results[emitted]
                    emitted += 1
        finally:
            for a in actors:  # stops the chunks they were scanning (finished scores are cached)
                ray.kill(a)


def run_with(address: Optional[str], num_cpus: Optional[int], fn: Callable):
    """``fn()`` inside :func:`connect` when ``address`` is given, else as it is."""
    if address is None:
        return fn()
    with connect(address, num_cpus):
        return fn()
