"""The parts of a training run that act at an epoch's end, as :class:`~dfdc_cli.train.loop.Hook`\\ s,
in the order the trainer calls them:

- :class:`Validation`: validation loss / AUC / accuracy on the held-out tubes, and the best epoch;
- :class:`Checkpointer`: ``best.pt`` (the best epoch's weights) and ``last.pt`` (all a resume needs),
  and the resume from ``last.pt``;
- :class:`EpochLog`: ``log.csv`` and the epoch line;
- :class:`StopAfter`: ``train.stop_after``, an interruption on purpose (to test ``--resume``);
- :class:`Registration`: the best checkpoint into the model registry, when the run finished.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from dfdc_cli.atomic import write_text
from dfdc_cli.errors import UserError
from dfdc_cli.evaluate.metrics import log_loss, roc_auc
from dfdc_cli.runtime import Runtime, autocast
from dfdc_cli.train.loop import Hook, Progress, Stepper, TrainLoop, to_input, rate, rng_state, set_rng_state
from dfdc_cli.train.model_adapter import register_best, unwrap, weights_state_dict
from dfdc_models.checkpoint import numpy_globals, read_checkpoint, save_checkpoint

# ----------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def evaluate(model, loader, rt: Runtime,
             on_batch: Optional[Callable[[int, int], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """p(fake) and labels over a (sharded) loader, gathered from all ranks.

    The 2D member's items are frame stacks, scored by its test-time rule
    (:meth:`dfdc_models.registry.MemberModel.p_fake_2d`, the one scan's predict applies), so that its
    validation loss measures what scan will do. ``on_batch(batches, items)`` follows the progress.

    Runs the bare model (not the DDP wrapper, whose forward would broadcast buffers: a collective
    that ranks with different numbers of validation batches would not match)."""
    model = unwrap(model)
    model.eval()
    two_d = model.kind == "2d"
    ys, ps, n_items = [], [], 0
    for x, y in loader:
        x = to_input(x, rt.device)
        with autocast(rt.device.type, rt.amp_dtype):
            out = model.p_fake_2d(x) if two_d else model(x)  # 2D: p(fake) already, in float32
        p = out if two_d else torch.sigmoid(out.float().reshape(-1))
        ps.append(p.cpu().numpy())
        ys.append(y.numpy())
        n_items += len(y)
        if on_batch is not None:
            on_batch(len(ys), n_items)
    y_all = np.concatenate(ys) if ys else np.zeros(0)
    p_all = np.concatenate(ps) if ps else np.zeros(0)
    parts = rt.gather((y_all, p_all))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def balanced_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean of the per-class log losses (each class weighs half): the validation loss."""
    losses = [log_loss(y[y == c], p[y == c]) for c in (0, 1) if np.any(y == c)]
    return float(np.mean(losses)) if losses else math.nan


class Validation(Hook):
    """Every ``every`` epochs and after the last: the validation columns of the epoch's row. Then the
    best epoch, by ``select``: the lowest validation loss, the highest validation AUC, or simply the
    latest epoch (every epoch counts as best when there is no validation side, ``loader`` None).

    ``last`` is for runs whose validation loss says little about the goal: a self-blend detector's
    loss on held-out self-blends climbs while it grows confident, though its AUC still improves."""

    def __init__(self, loader, every: int, select: str = "val_loss"):
        self.loader, self.every, self.select = loader, max(1, int(every)), str(select)

    def after_epoch(self, loop: TrainLoop) -> None:
        row, n = loop.row, loop.epoch + 1
        if self.loader is not None and (n % self.every == 0 or n == loop.epochs):
            self._validate(loop, row)
        if self.loader is None or self.select == "last":
            is_best = True
        elif self.select == "val_auc":
            auc = row.get("val_auc", math.nan)
            is_best = not math.isnan(auc) and auc > loop.best.get("val_auc", -math.inf)
        else:
            is_best = not math.isnan(row["val_loss"]) and row["val_loss"] < loop.best["val_loss"]
        if is_best:
            loop.best = {"epoch": n, "val_loss": float(row["val_loss"]), "val_auc": float(row.get("val_auc", math.nan))}
            row["best"] = True

    def _validate(self, loop: TrainLoop, row: dict) -> None:
        rt = loop.rt
        v0 = time.perf_counter()
        prog = Progress(loop.show_progress, f"epoch {loop.epoch + 1}/{loop.epochs} validation", len(self.loader))
        ys, ps = evaluate(loop.model, self.loader, rt, on_batch=lambda k, n: prog.advance(
            k, f"{rate(n * rt.world_size / max(time.perf_counter() - v0, 1e-9))} clips/s"))
        prog.close()
        if len(ys):
            row["val_loss"] = balanced_log_loss(ys, ps)
            row["val_logloss"] = log_loss(ys, ps)
            row["val_auc"] = roc_auc(ys, ps)
            row["val_acc"] = float(np.mean((ps >= 0.5) == (ys == 1)))
        row["val_s"] = time.perf_counter() - v0


# ----------------------------------------------------------------------------------------------
# Checkpoints


class Checkpointer(Hook):
    """``best.pt``: the plain weights of a best epoch (the seed's layout, what gets registered).
    ``last.pt``: after every epoch, everything a resumed run needs to replay the next epochs exactly:
    model, optimiser, scheduler, grad scaler, sampler, RNG states, the loop's history and best.
    Only the main process writes (``enabled``)."""

    def __init__(self, run_dir: Path, stepper: Stepper, sampler, steps_per_epoch: int, member: str,
                 enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.model, self.opt, self.sched, self.scaler = stepper.model, stepper.opt, stepper.sched, stepper.scaler
        self.sampler, self.steps_per_epoch, self.member, self.enabled = sampler, int(steps_per_epoch), member, enabled

    def after_epoch(self, loop: TrainLoop) -> None:
        if not self.enabled:
            return
        if loop.row["best"]:
            save_checkpoint(weights_state_dict(self.model), self.run_dir / "best.pt")
        ck = {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "epoch": loop.epoch + 1,
            "steps_per_epoch": self.steps_per_epoch,
            "best": loop.best,
            "history": loop.history,
            "member": self.member,
        }
        save_checkpoint(ck, self.run_dir / "last.pt")

    def resume(self, loop: TrainLoop, folder: Path) -> None:
        """Restore ``folder/last.pt`` into the run's parts and ``loop`` (which continues after its epoch)."""
        # A run folder is a file the user hands over: a safe load, never a pickle that runs code.
        ck = read_checkpoint(Path(folder) / "last.pt", allow=tuple(numpy_globals()))
        unwrap(self.model).load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.sampler.load_state_dict(ck["sampler"])
        set_rng_state(ck["rng"])
        loop.history, loop.best, loop.start_epoch = list(ck["history"]), dict(ck["best"]), int(ck["epoch"])
        if ck.get("steps_per_epoch") not in (None, self.steps_per_epoch):
            raise UserError(
                f"--resume: the data changed ({ck['steps_per_epoch']} -> {self.steps_per_epoch} steps per epoch); "
                "resume needs the same index, split and batch size"
            )


# ----------------------------------------------------------------------------------------------
# The log


# data_share: the fraction of the training pass spent waiting for the next batch (the data
# pipeline's share of the step time; near 0 when the model is the bottleneck).
LOG_COLUMNS = [
    "epoch", "lr", "train_loss", "val_loss", "val_logloss", "val_auc", "val_acc",
    "clips_per_s", "data_share", "train_s", "data_s", "val_s", "best",
]


def write_log(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def epoch_line(row: Mapping, epochs: int) -> str:
    def f(v, fmt=".4f"):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    return (f"epoch {row['epoch']}/{epochs}: train loss {f(row['train_loss'])}  val loss {f(row['val_loss'])}  "
            f"val AUC {f(row['val_auc'], '.3f')}  {rate(row['clips_per_s'])} clips/s  "
            f"data {f(row.get('data_share', math.nan), '.0%')}"
            + ("  *best" if row.get("best") else ""))


class EpochLog(Hook):
    """``log.csv`` (one row per epoch, :data:`LOG_COLUMNS`) rewritten after every epoch, and the
    epoch line said; by the main process only (``enabled``)."""

    def __init__(self, run_dir: Path, say: Callable[[str], None], enabled: bool = True):
        self.path, self.say, self.enabled = Path(run_dir) / "log.csv", say, bool(enabled)

    def after_epoch(self, loop: TrainLoop) -> None:
        if self.enabled:
            write_log(self.path, loop.history)
            self.say(epoch_line(loop.row, loop.epochs))


# ----------------------------------------------------------------------------------------------
# Stopping, registration


class StopAfter(Hook):
    """``train.stop_after``: end the run after that many epochs as if interrupted (no registration)."""

    def __init__(self, epochs: int, run_dir: Path, say: Callable[[str], None]):
        self.epochs, self.run_dir, self.say = int(epochs), run_dir, say

    def after_epoch(self, loop: TrainLoop) -> None:
        n = loop.epoch + 1
        if self.epochs and n >= self.epochs and n < loop.epochs:
            loop.stopped = True
            self.say(f"stopped after epoch {n} (train.stop_after); continue with --resume {self.run_dir}")


class Registration(Hook):
    """When the run finished (not stopped early): ``best.pt`` registered as the member's active model,
    with the recipe and the log beside it; ``entry`` is the registry entry. Main process only."""

    def __init__(self, recipe: Mapping, run_dir: Path, split_how: str, say: Callable[[str], None],
                 enabled: bool = True):
        self.recipe, self.run_dir, self.split_how, self.say, self.enabled = recipe, Path(run_dir), split_how, say, enabled
        self.entry: Any = None

    def after_train(self, loop: TrainLoop) -> None:
        if not self.enabled or loop.stopped:
            return
        best = loop.best
        best_row = next((h for h in loop.history if h["epoch"] == best["epoch"]), {})
        extra = {"epoch": best["epoch"], "val_auc": best_row.get("val_auc"), "epochs": loop.epochs,
                 "split": self.split_how, "fakes": self.recipe["data"]["fakes"]}
        self.entry = register_best(self.recipe, self.run_dir, self.run_dir / "best.pt", float(best["val_loss"]), extra)
        self.say(f"best epoch {best['epoch']}: val loss {best['val_loss']:.4f}; "
                 f"registered {self.recipe['model']['member']} from {self.run_dir}")
