"""`deepfake train`: one recipe-driven trainer for every ensemble member.

Where things live
    :mod:`dfdc_cli.train.recipe` (what to train: layers, validation, ``recipe.toml``; defaults in
    ``recipes/defaults.toml``), :mod:`dfdc_cli.runtime` (device, precision, DDP),
    :mod:`dfdc_cli.train.model_adapter` (starting weights, the model, registration), :mod:`dfdc_cli.train.optim`
    (optimiser, schedule), :mod:`dfdc_cli.train.loop` (the step and the epoch loop),
    :mod:`dfdc_cli.train.hooks` (validation, checkpoints, log, registration). This module puts them
    together: :func:`train`.

Run folder (``paths.runs_dir()/<member>-<UTC timestamp>``)
    ``recipe.toml``, ``split.json`` (which tubes sat on which side), ``log.csv`` (one row per epoch:
    train loss, val loss/AUC, clips/s, data share, ...), ``last.pt`` (everything needed to resume: model,
    optimiser, scheduler, grad scaler, RNG states, epoch, sampler state, history) and ``best.pt``
    (the weights of the epoch with the lowest validation loss, registered in the model registry at
    the end).

Reproducibility
    Everything random is derived from ``train.seed``: the split, the sampler (a pure function of
    seed and epoch), each sample's window/augmentation/self-blend (a per-sample seed), the batch-level
    CutMix/mixup draws and torch's global RNG (both reseeded at every epoch start). A run resumed from
    epoch k therefore replays epochs k+1.. exactly: on CPU the final weights equal an uninterrupted
    run's bit for bit.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch.utils.data import DataLoader

from dfdc_cli.atomic import write_text
from dfdc_cli.errors import UserError
from dfdc_cli.paths import runs_dir
from dfdc_cli.runtime import Runtime, setup_runtime
from dfdc_cli.train import data, sampling
from dfdc_cli.train.hooks import Checkpointer, EpochLog, Registration, StopAfter, Validation
from dfdc_cli.train.loop import Stepper, TrainLoop, seed_all
from dfdc_cli.train.model_adapter import build_model, freeze, resolve_init
from dfdc_cli.train.optim import make_optimizer, make_scheduler
from dfdc_cli.train.recipe import dumps_toml
from dfdc_models.archs import get_arch
from dfdc_models.specs import get_spec


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_val_loss: float
    history: list[dict]
    registered: Any = None
    stopped_early: bool = False
    is_main: bool = True  # rank 0 (the process that wrote and registered)


def new_run_dir(member: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = runs_dir() / f"{member}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


@dataclass
class _Data:
    """The run's data: the split, the training sampler and the loaders."""

    split: Any
    sampler: Any
    train_loader: Any
    val_loader: Any
    workers: int


def _loader_workers(d: Mapping, rt: Runtime) -> int:
    workers = int(d["workers"])
    if workers < 0:  # auto: the cores this process may use, shared with the other local ranks, minus one
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(rt.world_size)))
        workers = max(1, cores // max(1, local_world) - 1)
    return workers


def _make_data(r: Mapping, spec, rt: Runtime, say: Callable[[str], None]) -> _Data:
    d, o, a, t = r["data"], r["optim"], r["augment"], r["train"]
    seed = int(t["seed"])
    kind = "3d" if spec.is_3d else "2d"
    res = int(d["input_res"]) or int(spec.res)
    tubes = data.load_tubes(d["index"] or None)
    if d.get("groups_csv"):
        tubes = data.apply_groups(tubes, d["groups_csv"], str(d.get("group_column") or "identity"))
    split = data.split_tubes(tubes, d["val_parts"] or None, float(d["val_fraction"]), int(d["split_seed"]),
                             val_groups=[str(g) for g in d.get("val_groups") or []])
    say(split.summary())
    if len(split.train) == 0:
        raise UserError("the training side of the split is empty")
    sampler = sampling.BalancedSampler(
        split.train["y"].to_numpy(), seed=seed, fakes=d["fakes"],
        selfblend_fraction=float(d["selfblend_fraction"]), rank=rt.rank, world_size=rt.world_size,
        repeat=int(d.get("repeat") or 1), paired=bool(d.get("paired", False)),
    )
    common = dict(clip_frames=int(d["clip_frames"]) or int(spec.clip_frames), res=res, kind=kind, aug=a,
                  pad=d["pad"], selfblend=r.get("selfblend") or {}, frames_2d=int(d["frames_2d"]),
                  interpolation=get_arch(spec.arch).interpolation if kind == "2d" else "bilinear")
    if kind == "2d" and int(d.get("preload_every") or 0) > 0:
        t_load = time.perf_counter()
        train_ds = data.FrameBank(split.train, res=res, every=int(d["preload_every"]),
                                  store_res=int(d.get("preload_res") or 0), aug=a, selfblend=r.get("selfblend") or {},
                                  interpolation=common["interpolation"])
        say(f"preloaded {train_ds.n_frames} frames of {len(train_ds)} training tubes "
            f"({train_ds.nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t_load:.0f} s")
    else:
        train_ds = data.ClipDataset(split.train, train=True, **common)
    val_ds = data.ClipDataset(split.val, train=False, **common)
    val_list = sampling.shard(sampling.val_items(split.val["y"].to_numpy(), d["fakes"], seed), rt.rank, rt.world_size)
    workers = _loader_workers(d, rt)
    loader_kw = dict(num_workers=workers, pin_memory=rt.device.type == "cuda", worker_init_fn=data.worker_init)
    if workers > 0:
        loader_kw.update(persistent_workers=True, prefetch_factor=max(1, int(d["prefetch"])))
        if d.get("start_method"):
            loader_kw["multiprocessing_context"] = str(d["start_method"])
    bs = int(o["batch_size"])
    train_loader = DataLoader(train_ds, batch_size=bs, sampler=sampler, drop_last=False, **loader_kw)
    # (built on every rank when there is a validation side, even for a rank whose shard is empty:
    # all ranks must take part in gathering the predictions)
    val_bs = int(t["val_batch_size"]) or bs
    if kind == "2d" and not int(t["val_batch_size"]):
        # A 2D validation item is a stack of frames_2d frames (scored like scan: median over frames),
        # so batch_size of them would put frames_2d times a training batch through one forward. By
        # default take as many tubes as make about one training batch of frames; an explicit
        # train.val_batch_size counts tubes and is taken as given.
        val_bs = max(1, bs // max(1, int(d["frames_2d"])))
    val_loader = (DataLoader(val_ds, batch_size=val_bs, sampler=val_list, **loader_kw)
                  if len(split.val) else None)
    return _Data(split, sampler, train_loader, val_loader, workers)


def _start_runtime(t: Mapping) -> Runtime:
    """The process's runtime (:mod:`dfdc_cli.runtime`), with every RNG seeded from ``train.seed``."""
    rt = setup_runtime(t["device"], t["precision"])
    seed_all(int(t["seed"]))
    if t.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = not t.get("deterministic")
    return rt


def _make_stepper(spec, r: Mapping, rt: Runtime, init: Any, steps_per_epoch: int) -> tuple[Stepper, str]:
    """The model (wrapped in DDP under torchrun), its optimiser, schedule and grad scaler, as the
    :class:`Stepper` that drives them; and how the weights were initialised."""
    o = r["optim"]
    model, init_how = build_model(spec, init, rt.device)
    frozen = freeze(model, r["model"].get("freeze") or [])
    if frozen:
        init_how += f"; {frozen} parameter tensors frozen (model.freeze)"
    if rt.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], o)
    sched = make_scheduler(opt, o, int(o["epochs"]) * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.amp_dtype == torch.float16)
    stepper = Stepper(model, opt, sched, scaler, rt, "3d" if spec.is_3d else "2d", r["augment"], float(o["grad_clip"]))
    return stepper, init_how


def _check_init(spec, init: Any, rt: Runtime, echo: Callable[[str], None]) -> None:
    """Fail fast (a missing pretrained file) before reading any data. Under torchrun the first
    process of each machine resolves (and downloads) first; the others then find the file."""
    first_here = rt.local_rank == 0
    if rt.distributed and not first_here:
        torch.distributed.barrier()
    resolve_init(spec, init, echo=echo if first_here else None)
    if rt.distributed and first_here:
        torch.distributed.barrier()


def _shared_run_dir(run_dir: Optional[Path], member: str, rt: Runtime) -> Path:
    """The run folder (a new one unless given); under torchrun every rank takes rank 0's name."""
    if run_dir is None:
        run_dir = new_run_dir(member)
    if rt.distributed:
        holder = [str(run_dir)]
        torch.distributed.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
    return Path(run_dir)


def _start_run_dir(run_dir: Path, r: Mapping, split) -> None:
    """A new run's folder with its resolved recipe and its split."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "recipe.toml", dumps_toml(r, header=f"deepfake train: resolved recipe of {run_dir.name}"))
    split_info = {"how": split.how, "sizes": split.sizes(),
                  "val_tubes": split.val["tube_path"].tolist(), "train_tubes": split.train["tube_path"].tolist()}
    write_text(run_dir / "split.json", json.dumps(split_info, indent=1) + "\n")


def _summary(spec, r: Mapping, rt: Runtime, steps_per_epoch: int, workers: int, init_how: str) -> str:
    d, o = r["data"], r["optim"]
    res = int(d["input_res"]) or int(spec.res)
    kind = "3d" if spec.is_3d else "2d"
    shape = (f"clips {int(d['clip_frames']) or int(spec.clip_frames)} x {res} x {res}" if kind == "3d"
             else f"frames {res} x {res}")
    return (f"{spec.name}: {kind.upper()}, {shape}, {steps_per_epoch} steps/epoch x {int(o['epochs'])} epochs, "
            f"batch {int(o['batch_size'])} x {rt.world_size} process(es), {workers} loader worker(s), "
            f"{o['optimizer']} lr {o['lr']}, device {rt.device}"
            + (f", precision {str(rt.amp_dtype).replace('torch.', '')}" if rt.amp_dtype else "") + f", {init_how}")


def train(
    recipe: dict,
    run_dir: Optional[Path] = None,
    resume: Optional[Path] = None,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
) -> TrainResult:
    """Train one member as the (resolved) recipe says; resume from ``resume`` (a run folder)."""
    if resume is not None:
        resume = Path(resume).expanduser()
        if not (resume / "last.pt").is_file():
            raise UserError(f"--resume {resume}: no last.pt there (not a run folder, or no epoch finished)")
        run_dir = resume
    r = recipe
    m, o, t = r["model"], r["optim"], r["train"]
    rt = _start_runtime(t)
    main = rt.is_main
    say = echo if main else (lambda _s: None)
    spec = get_spec(m["member"])
    if resume is None:
        _check_init(spec, m["init"], rt, echo)
    data = _make_data(r, spec, rt, say)
    steps_per_epoch = len(data.train_loader)
    # (a resumed run takes its weights from the checkpoint: no need for the init file any more)
    stepper, init_how = _make_stepper(spec, r, rt, "scratch" if resume is not None else m["init"], steps_per_epoch)

    run_dir = _shared_run_dir(run_dir, spec.name, rt)
    checkpoints = Checkpointer(run_dir, stepper, data.sampler, steps_per_epoch, spec.name, enabled=main)
    registration = Registration(r, run_dir, data.split.how, say, enabled=main)
    loop = TrainLoop(stepper, data.train_loader, data.sampler, rt, seed=int(t["seed"]),
                     epochs=int(o["epochs"]), show_progress=show_progress, hooks=[
                         Validation(data.val_loader, int(t["val_every"]), str(t.get("select", "val_loss"))),
                         checkpoints,
                         EpochLog(run_dir, say, enabled=main),
                         StopAfter(int(t["stop_after"]), run_dir, say),
                         registration,
                     ])
    if resume is not None:
        checkpoints.resume(loop, resume)
        say(f"resumed {run_dir} after epoch {loop.start_epoch}/{loop.epochs}")
    if main and resume is None:
        _start_run_dir(run_dir, r, data.split)
    say(f"run folder: {run_dir}")
    say(_summary(spec, r, rt, steps_per_epoch, data.workers, init_how))

    loop.run()

    if rt.owns_process_group:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return TrainResult(run_dir, len(loop.history), int(loop.best["epoch"]), float(loop.best["val_loss"]),
                       loop.history, registered=registration.entry, stopped_early=loop.stopped, is_main=main)
