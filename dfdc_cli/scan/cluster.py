"""Scans on a Ray cluster (``deepfake scan --ray``): scan actors (one per GPU, or one per few CPUs on a
CPU cluster) each run a :class:`dfdc_cli.scan.scanner.Scanner` over chunks of the videos; the members
are loaded once by the driver and shipped to the actors, so every node scores with the same weights.

The cache folder must be on a filesystem every node mounts at the same path (NFS, Lustre, ...).
Joining the cluster and describing its failures: :mod:`dfdc_cli.scale.cluster`.
"""

from __future__ import annotations

import collections
import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import STATUS_ERROR
from dfdc_cli.paths import ENV_CACHE, cache_dir
from dfdc_cli.runtime import resolve_device
from dfdc_cli.scale.cluster import describe_failure, require_ray
from dfdc_cli.scan.ensemble import aggregate_video
from dfdc_cli.scan.inputs import items_extractor
from dfdc_cli.scan.results import VideoScan
from dfdc_cli.scan.scanner import Scanner


class ScanActor:
    """A :class:`dfdc_cli.scan.scanner.Scanner` on one node (one GPU, or a few CPUs)."""

    def __init__(self, members: list, options: dict, cache_dir: str):
        # The scan's tube cache and score cache live in the driver's cache folder (shared).
        os.environ[ENV_CACHE] = cache_dir
        device = resolve_device(options.get("device"))
        for m in members:
            _to_device(m, device)
        self.options = {**options, "device": device}
        self.members = members

    def scan(self, paths: list, items: Optional[list] = None) -> list:
        extractor = items_extractor(items) if items is not None else None
        scanner = Scanner(members=self.members, extractor=extractor, **self.options)
        return list(scanner.scan_iter([Path(p) for p in paths]))


def _to_device(member, device: str) -> None:
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
                        reason = describe_failure(exc, self.max_restarts + 1)
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
