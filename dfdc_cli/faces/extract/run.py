"""A batch: videos in, store entries and index rows out, each video handed over as it is done.

:func:`iter_extract` settles cache hits and unreadable files first, then runs the others in this
process or in the pool (:mod:`.pool`), or through an executor (Ray: :mod:`dfdc_cli.scale.cluster`), and
keeps the index up to date as they finish (:class:`dfdc_cli.faces.index.IndexWriter`). :func:`extract`
is that run, collected, with the summary table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

from rich.table import Table

from dfdc_cli import ui
from dfdc_cli.errors import UserError, VideoError
from dfdc_cli.faces.extract.job import FILES, MEMORY, MODES, LazyDetect, safe_process
from dfdc_cli.faces.extract.memory import plan_workers
from dfdc_cli.faces.extract.params import DEFAULT_PARAMS, ExtractParams
from dfdc_cli.faces.extract.pool import run_pool
from dfdc_cli.faces.extract.store import lookup, records_for
from dfdc_cli.faces.index import (
    STATUS_ERROR, STATUS_NO_FACE, STATUS_OK, VIDEOS_CSV, IndexWriteError, IndexWriter, TubeRecord,
    VideoRecord, table_paths,
)
from dfdc_cli.faces.inputs import VideoInput, collect_inputs
from dfdc_cli.lifecycle import Interrupted
from dfdc_cli.runtime import resolve_device
from dfdc_cli.scale.shard import select
from dfdc_cli.ui import console


class VideoDone(NamedTuple):
    """One video's outcome, as :func:`iter_extract` hands it over."""

    index: int  # position among the run's inputs (files as given, folders expanded)
    video: VideoRecord
    tubes: list[TubeRecord]
    cached: bool  # reused from the store, not detected again
    pixels: Optional[dict] = None  # memory modes: tube id -> (3D frames, 2D crops or None)


@dataclass
class ExtractResult:
    videos: list[VideoRecord]
    tubes: list[TubeRecord]
    out_dir: Path
    cached: int = 0
    seconds: float = 0.0
    frames_decoded: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. why fewer workers ran
    shard: Optional[tuple[int, int]] = None  # (K, N): the rows went to the index's part K of N

    @property
    def n_errors(self) -> int:
        return sum(v.status == STATUS_ERROR for v in self.videos)


def _out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir).expanduser().resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    return out_dir


def iter_extract(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    params: ExtractParams = DEFAULT_PARAMS,
    *,
    device: str = "cpu",
    workers: Optional[int] = None,
    fresh: bool = False,
    progress: bool = True,
    quiet: bool = False,
    write: bool = True,
    detect_in_main: Optional[bool] = None,
    default_label: str = "",
    notes: Optional[list] = None,
    shard: Optional[tuple[int, int]] = None,
    executor: Optional[Callable] = None,
    mode: str = FILES,
    need_pixels: Optional[Callable[[int, dict], bool]] = None,
) -> Iterator[VideoDone]:
    """Extract face tubes from ``paths`` into ``out_dir``, handing over each video as it is done.

    ``mode`` (:func:`process_video`): ``memory`` / ``memory+files`` hand the tubes' pixels over in
    :attr:`VideoDone.pixels`. There, a video whose entry is stored is decoded and cropped again
    only when ``need_pixels(index, result)`` says so (default: always); otherwise it is handed over
    at once, without pixels (e.g. every member's scores of it are cached).

    Yields one :class:`VideoDone` per input video in completion order: cache hits and unreadable
    files first (settled without starting a worker), then the others as the workers finish them.
    Failed videos are yielded too (status error, with the reason); a bad video never raises.
    The rows handed over are merged into ``out_dir``'s index as the videos finish (at most every
    ``INDEX_EVERY_S`` seconds, :class:`IndexWriter`) and when the iteration ends or stops early
    (``close()``, Ctrl-C, an exception in the consumer), unless ``write=False``; close the iterator
    (``contextlib.closing``) to have that happen at once when stopping early. Stopped by
    :class:`~dfdc_cli.lifecycle.Interrupted` (the CLI's Ctrl-C / SIGTERM), it stops the workers at
    once and raises it again with a line saying what was done and how to resume.

    The bad folder or device is reported (UserError) by this call, before any iteration.
    ``workers``, ``device``, ``detect_in_main``, ``fresh``: as :func:`extract`. ``progress``:
    a progress bar; one line per failed video unless ``quiet`` (which also hides the bar).
    ``notes``: a list the run appends remarks to (why fewer workers ran than asked by default).
    ``shard`` (K, N): only the inputs of job-array task K of N (:mod:`dfdc_cli.scale.shard`), whose rows
    go to the index's part K of N. ``executor``: runs the jobs elsewhere instead of the local
    cache lookup and workers (:mod:`dfdc_cli.scale.cluster`): called with the jobs, it yields
    (job index, result, error) as each finishes; ``device`` is then the executor's business.
    """
    out_dir = _out_dir(out_dir)
    if executor is None:
        device = resolve_device(device)
    jobs = select(collect_inputs(paths, exclude=out_dir, default_label=default_label,
                                 on_note=(lambda _line: None) if quiet else None), shard, lambda j: j.name)
    auto = workers is None
    if workers is None:
        cores = os.cpu_count() or 1
        # GPU: the main process detects, the workers decode/crop/encode.
        workers = min(cores if device == "cpu" else max(1, cores - 1), max(1, len(jobs)))
    workers = max(1, int(workers))
    remote = (device != "cpu") if detect_in_main is None else bool(detect_in_main)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode != FILES and executor is not None:
        raise ValueError("an executor's jobs write files: mode must be 'files'")
    return _iter_jobs(
        jobs, out_dir, params, device, workers, remote, fresh, progress and not quiet, quiet, write,
        auto_workers=auto, notes=notes, shard=shard, executor=executor, mode=mode, need_pixels=need_pixels,
    )


def _iter_jobs(
    jobs: list[VideoInput], out_dir: Path, params: ExtractParams, device: str, workers: int, remote: bool,
    fresh: bool, progress: bool, quiet: bool, write: bool, auto_workers: bool = False,
    notes: Optional[list] = None, shard: Optional[tuple[int, int]] = None, executor: Optional[Callable] = None,
    mode: str = FILES, need_pixels: Optional[Callable[[int, dict], bool]] = None,
) -> Iterator[VideoDone]:
    index = IndexWriter(out_dir, fresh=fresh, shard=shard) if write else None
    counts = {STATUS_OK: 0, STATUS_NO_FACE: 0, STATUS_ERROR: 0}
    n_cached = 0
    bar = ui.progress() if (progress and jobs) else None
    task = None

    settled: set[int] = set()

    def settle(j: int, res: Optional[dict], err: Optional[str]) -> VideoDone:
        nonlocal n_cached
        settled.add(j)
        pixels = res.pop("pixels", None) if res is not None else None
        vrec, trecs = records_for(jobs[j], res, err, params)
        if index is not None:
            index.add(j, vrec, trecs)
        cached = bool(res is not None and res.get("cached"))
        counts[vrec.status] = counts.get(vrec.status, 0) + 1
        n_cached += cached
        if err is not None and not quiet:
            ui.fail_line(jobs[j].path, err)
        if bar is not None:
            bar.update(task, advance=1, status=_status_text(counts, n_cached))
        return VideoDone(j, vrec, trecs, cached, pixels)

    stop: Optional[Interrupted] = None
    todo: list[int] = []
    started: set[int] = set()  # jobs handed to a worker (or begun here)
    try:
        if bar is not None:
            bar.start()
            task = bar.add_task("extract", total=len(jobs), status="")
        if executor is not None:
            with contextlib.closing(executor(jobs)) as run:
                for j, res, err in run:
                    yield settle(j, res, err)
        for j, inp in enumerate(jobs if executor is None else []):
            if inp.error:
                yield settle(j, None, inp.error)
                continue
            try:
                _, _, res = lookup(inp.path, out_dir, params, need_files=mode != MEMORY)
            except VideoError as exc:
                yield settle(j, None, str(exc))
                continue
            wants = (mode != FILES and res is not None and res.get("status") == STATUS_OK
                     and (need_pixels is None or need_pixels(j, res)))
            if res is not None and not wants:
                yield settle(j, res, None)
            else:
                todo.append(j)  # to extract, or (memory modes) to decode and crop again
        if auto_workers and workers > 1 and len(todo) > 1:
            workers, note = plan_workers([jobs[j].path for j in todo], params, min(workers, len(todo)))
            if note and notes is not None:
                notes.append(note)
        if workers <= 1 or len(todo) <= 1:
            detect = LazyDetect(device)
            for j in todo:
                started.add(j)
                res, err = safe_process(jobs[j].path, str(out_dir), params, detect, mode)
                yield settle(j, res, err)
        else:
            sub = [jobs[j] for j in todo]
            # closing(): the workers stop as soon as this run is closed, not when it is collected.
            with contextlib.closing(run_pool(sub, str(out_dir), params, device, min(workers, len(todo)), remote,
                                              mode, on_start=lambda k: started.add(todo[k]))) as pool:
                for k, res, err in pool:
                    yield settle(todo[k], res, err)
    except Interrupted as exc:
        stop = exc
        raise
    finally:
        if stop is not None and index is not None:
            _settle_stored(sorted(started - settled), jobs, out_dir, params, mode, settle)
        if bar is not None:
            bar.stop()
        if index is not None:
            try:
                index.close()
            except IndexWriteError as exc:
                if stop is None:
                    raise
                ui.warn(str(exc))  # the interruption's own line follows
        if stop is not None:
            # What was done and how to go on, for the one line the CLI prints.
            done = sum(counts.values())
            line = f"{done} of {len(jobs)} videos done"
            if done:
                line += (f" (ok {counts[STATUS_OK]}, no_face {counts[STATUS_NO_FACE]}, error {counts[STATUS_ERROR]}, "
                         f"cached {n_cached})" + (f", in {out_dir / VIDEOS_CSV}" if write else ""))
            line += ". Run the same command to resume" + (": finished videos are not processed again." if done else ".")
            raise Interrupted(line, stop.signum) from None


def _settle_stored(unsettled: list[int], jobs: list[VideoInput], out_dir: Path, params: ExtractParams,
                   mode: str, settle: Callable) -> None:
    """On an interruption, index the started videos whose store entry is complete although their
    outcome had not reached this process (it was in the pipe, or the worker was stopped just after
    its entry was in place), so that every finished video is in the index."""
    for j in unsettled:
        try:
            _, _, res = lookup(jobs[j].path, out_dir, params, need_files=mode != MEMORY)
        except VideoError:
            continue  # not finished: extracted again next time
        if res is not None:
            settle(j, dict(res, cached=False), None)


def extract(paths: Sequence[str | Path], out_dir: str | Path, params: ExtractParams = DEFAULT_PARAMS, *,
            summary: bool = True, **options) -> ExtractResult:
    """Extract face tubes from ``paths`` (files and folders) into ``out_dir``: :func:`iter_extract`'s
    run (``options``: its keywords, but for ``notes``, ``mode`` and ``need_pixels``), collected.

    Returns this run's index rows (in input order); also merges them into ``out_dir``'s
    ``videos.csv`` / ``tubes.csv`` (unless ``write=False``; ``fresh`` drops the rows already
    there). ``workers``: processes (default: min(CPU cores, videos); 1 runs in this process).
    ``device``: where MTCNN runs ("cpu", "cuda", "cuda:1"...); with several workers and a GPU,
    the workers decode and crop while the main process detects, batched across videos
    (``detect_in_main`` forces that split on or off). Never raises for a bad video:
    its row has status error and the reason. Terminal output: ``progress`` bar, one line per failed
    video, ``summary`` table; ``quiet`` silences all three.
    """
    unknown = {"notes", "mode", "need_pixels"} & options.keys()
    if unknown:
        raise TypeError(f"extract() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    t0 = time.time()
    out_dir = _out_dir(out_dir)
    done: list[VideoDone] = []
    notes: list[str] = []
    run = iter_extract(paths, out_dir, params, notes=notes, **options)
    unindexed: Optional[IndexWriteError] = None
    try:
        with contextlib.closing(run):
            done.extend(run)
    except IndexWriteError as exc:
        # Raised as the run closes, every video settled: the summary of what was done still shows,
        # and the one line of why the index is not up to date follows it.
        unindexed = exc
    done.sort(key=lambda d: d.index)
    out = ExtractResult(
        videos=[d.video for d in done],
        tubes=[t for d in done for t in d.tubes],
        out_dir=out_dir,
        cached=sum(d.cached for d in done),
        seconds=time.time() - t0,
        frames_decoded=sum(d.video.n_frames for d in done if not d.cached),
        notes=notes,
        shard=options.get("shard"),
    )
    if summary and not options.get("quiet"):
        _summary(out, indexed=unindexed is None)
    if unindexed is not None:
        raise unindexed
    return out


def _status_text(counts: dict, cached: int) -> str:
    return f"ok {counts.get(STATUS_OK, 0)}  no_face {counts.get(STATUS_NO_FACE, 0)}  error {counts.get(STATUS_ERROR, 0)}  cached {cached}"


def _summary(res: ExtractResult, indexed: bool = True) -> None:
    by = {s: [v for v in res.videos if v.status == s] for s in (STATUS_OK, STATUS_NO_FACE, STATUS_ERROR)}
    table = Table(title="deepfake extract", show_header=True, header_style="bold")
    table.add_column("status")
    table.add_column("videos", justify="right")
    table.add_column("tubes", justify="right")
    table.add_row("ok", str(len(by[STATUS_OK])), str(len(res.tubes)))
    table.add_row("no_face", str(len(by[STATUS_NO_FACE])), "0")
    table.add_row("[red]error[/red]" if by[STATUS_ERROR] else "error", str(len(by[STATUS_ERROR])), "0")
    table.add_row("total", str(len(res.videos)), str(len(res.tubes)), end_section=True)
    rate = len(res.videos) / res.seconds if res.seconds > 0 else 0.0
    videos_csv, tubes_csv = table_paths(res.out_dir, res.shard)
    console.print(table)
    for note in res.notes:
        console.print(note, highlight=False, soft_wrap=True)
    where = f"index: {videos_csv}\n       {tubes_csv}" if indexed else f"index: {videos_csv} not brought up to date"
    console.print(
        f"{res.cached} cached, {len(res.videos) - res.cached} processed in {res.seconds:.1f} s "
        f"({rate:.2f} videos/s)\n{where}",
        highlight=False,
        soft_wrap=True,
    )
