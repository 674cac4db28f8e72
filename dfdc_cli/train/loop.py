"""The training loop: epochs of optimisation steps, and hooks that act around them.

:class:`TrainLoop` runs the epochs; each epoch is one pass of :class:`Stepper` over the training
loader, which yields a row of the run's log. Everything else a run does at an epoch's end
(validation, checkpoints, the log, stopping, registration: :mod:`dfdc_cli.train.hooks`) is a
:class:`Hook`, called in order with the loop, whose ``row``, ``history`` and ``best`` it reads and
fills in (the layout of Detectron2's ``engine/train_loop.py``).

Reproducibility: at every epoch start the sampler is set to the epoch and torch's global RNG and the
batch-level draws (CutMix / mixup) are reseeded from ``train.seed``, the epoch and the rank, so an
epoch computes the same whether the run started at epoch 0 or resumed before it.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from dfdc_cli import ui
from dfdc_cli.runtime import Runtime, autocast
from dfdc_cli.train import augment


def to_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 clips to the device (moved as uint8: 4x less traffic; the model scales them)."""
    return x.to(device, non_blocking=True)


class Stepper:
    """One optimisation step: batch-level mixing (3D CutMix / 2D mixup-cutmix), forward under
    autocast, the (mixed) BCE loss, backward with the grad scaler, gradient clipping, optimiser and
    scheduler step. Shared by the trainer and bench/bench_train.py."""

    def __init__(self, model, opt, sched, scaler, rt: Runtime, kind: str, aug: Mapping, grad_clip: float):
        self.model, self.opt, self.sched, self.scaler, self.rt = model, opt, sched, scaler, rt
        self.kind = kind
        self.aug = aug
        self.cutmix = bool(aug.get("cutmix")) and kind == "3d"
        self.grad_clip = float(grad_clip)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        rt = self.rt
        x = to_input(x, rt.device)
        y = y.to(rt.device, non_blocking=True).float()
        y2, lam = y, None
        if self.cutmix and rng.random() < float(self.aug.get("cutmix_p", 1.0)):
            x, y2, lam, _perm, _boxes = augment.cutmix3d(x, y, rng, float(self.aug.get("cutmix_alpha", 1.0)))
        elif self.kind == "2d":
            x, y2, lam, _k = augment.mix2d(x.float(), y, rng, self.aug)
        with autocast(rt.device.type, rt.amp_dtype):
            logits = self.model(x)
        logits = logits.float().reshape(-1)
        if lam is None:
            loss = augment.bce_per_sample(logits, y).mean()
        else:
            loss = augment.mixed_loss(augment.bce_per_sample, logits, y, y2, lam)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.sched is not None:
            self.sched.step()
        return loss.detach()


# ----------------------------------------------------------------------------------------------
# Seeds and RNG state


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, tag: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, tag, epoch]).generate_state(1)[0])


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Mapping) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        # (a machine with fewer GPUs takes the states it has room for: epochs reseed anyway)
        torch.cuda.set_rng_state_all(st["cuda"][: torch.cuda.device_count()])


# ----------------------------------------------------------------------------------------------
# The loop


class Hook:
    """A part of the run called at fixed points of :class:`TrainLoop`; override what it needs."""

    def before_train(self, loop: "TrainLoop") -> None:
        pass

    def after_epoch(self, loop: "TrainLoop") -> None:
        pass

    def after_train(self, loop: "TrainLoop") -> None:
        pass


class TrainLoop:
    """Epochs ``start_epoch .. epochs-1`` of ``stepper`` over ``loader``, each followed by the hooks.

    State the hooks read and set: ``epoch`` (0-based, the one just trained), ``row`` (its log row:
    the training columns filled, the validation ones NaN, ``best`` False), ``history`` (every row so
    far, ``row`` last), ``best`` (``{"epoch", "val_loss"}``), ``stopped`` (set to end the run early).
    """

    def __init__(self, stepper: Stepper, loader, sampler, rt: Runtime, *, seed: int, epochs: int,
                 hooks: list[Hook], show_progress: bool = True):
        self.model, self.stepper, self.loader, self.sampler, self.rt = stepper.model, stepper, loader, sampler, rt
        self.seed, self.epochs, self.hooks = int(seed), int(epochs), list(hooks)
        self.show_progress = bool(show_progress) and rt.is_main
        self.start_epoch = 0
        self.epoch = -1
        self.row: dict[str, Any] = {}
        self.history: list[dict] = []
        self.best: dict[str, Any] = {"epoch": 0, "val_loss": math.inf}
        self.stopped = False

    def run(self) -> None:
        for h in self.hooks:
            h.before_train(self)
        for epoch in range(self.start_epoch, self.epochs):
            self.epoch = epoch
            self.row = self.train_epoch(epoch)
            self.history.append(self.row)
            for h in self.hooks:
                h.after_epoch(self)
            if self.stopped:
                break
        if self.rt.distributed:
            torch.distributed.barrier()
        for h in self.hooks:
            h.after_train(self)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training loader; its row of the log (validation columns empty)."""
        rt = self.rt
        self.sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(self.seed, epoch, 11) + rt.rank)
        batch_rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 12, epoch, rt.rank])
        self.model.train()
        t0 = time.perf_counter()
        n_seen, data_s = 0, 0.0
        prog = Progress(self.show_progress, f"epoch {epoch + 1}/{self.epochs}", len(self.loader))
        loss_acc = torch.zeros((), dtype=torch.float64, device=rt.device)
        w0 = t0  # the wait for each batch: from the end of the previous step to the batch's arrival
        for i, (x, y) in enumerate(self.loader):
            data_s += time.perf_counter() - w0
            loss = self.stepper(x, y, batch_rng)
            loss_acc += loss.double() * len(y)
            n_seen += len(y)
            if rt.device.type == "cuda":
                # Let the queued GPU work finish: else the next wait would count compute time as
                # data time (a step returns before the GPU has run it).
                torch.cuda.synchronize(rt.device)
            if prog.enabled:
                elapsed = time.perf_counter() - t0
                prog.advance(i + 1, f"loss {float(loss_acc) / n_seen:.4f}  "
                                    f"{rate(n_seen * rt.world_size / elapsed)} clips/s  data {data_s / elapsed:.0%}")
            w0 = time.perf_counter()
        prog.close()
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        train_s = time.perf_counter() - t0
        # (data time: the mean over the processes, each of which waits for its own loader)
        loss_sum, n_all, data_s = rt.all_reduce_sum([float(loss_acc), float(n_seen), data_s])
        data_s /= rt.world_size
        return {
            "epoch": epoch + 1,
            "lr": float(self.stepper.opt.param_groups[0]["lr"]),
            "train_loss": loss_sum / max(n_all, 1.0),
            "clips_per_s": n_all / max(train_s, 1e-9),
            "data_share": data_s / max(train_s, 1e-9),
            "train_s": train_s,
            "data_s": data_s,
            "val_loss": math.nan, "val_logloss": math.nan, "val_auc": math.nan, "val_acc": math.nan, "val_s": 0.0,
            "best": False,
        }


# ----------------------------------------------------------------------------------------------
# Progress


def rate(per_s: float) -> str:
    """Clips per second to three significant digits (0.182 on a CPU, 143 on a GPU)."""
    return "-" if per_s is None or math.isnan(per_s) else f"{per_s:.3g}"


def _clock(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# Off a terminal (a log file, a pipe), how often a progress line is written.
PLAIN_PROGRESS_EVERY_S = 60.0


class Progress:
    """Progress of one pass (an epoch's training or validation) on stderr, or nothing.

    On a terminal: a rich bar with the steps, elapsed time, ETA and a status (loss, clips/s, the
    data pipeline's share). Elsewhere (a log file, a pipe, tests) a plain line every ``every_s``
    seconds, without control characters, so that an hour-long CPU epoch can be followed with
    ``tail -f``. The ETA is the mean step time so far times the steps left: rich's own estimate
    needs several updates within 30 s, which a CPU step of tens of seconds never gives.
    """

    def __init__(self, enabled: bool, desc: str, total: int, every_s: float = PLAIN_PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.perf_counter):
        self.console = ui.err_console
        self.enabled = bool(enabled) and total > 0
        self.desc, self.total, self.every_s, self.clock = desc, int(total), float(every_s), clock
        self.t0 = self.last_line = clock()
        self.bar = None
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn

            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[status]}"),
                console=self.console, transient=True, refresh_per_second=2,  # (the clock ticks in seconds)
            )
            self.bar.start()
            self.task = self.bar.add_task(desc, total=total, status="", eta=_clock(None))

    def advance(self, completed: int, status: str) -> None:
        if not self.enabled:
            return
        now = self.clock()
        elapsed = now - self.t0
        eta = elapsed / completed * (self.total - completed) if completed else None
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, status=status, eta=_clock(eta))
        elif now - self.last_line >= self.every_s and completed < self.total:
            self.last_line = now
            self.console.print(f"{self.desc}: {completed}/{self.total} ({completed / self.total:.0%}) "
                               f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}  {status}",
                               markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
