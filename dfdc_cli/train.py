"""`deepfake train`: one recipe-driven trainer for every ensemble member.

Recipes
    TOML files, built in layers (later wins): ``recipes/defaults.toml`` -> ``recipes/<member>.toml``
    -> ``--recipe FILE`` -> command-line options (``--set section.key=value`` for anything). The
    resolved recipe is written to the run folder as ``recipe.toml``; a resumed run reads it back.

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

import csv
import io
import json
import math
import os
import random
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from . import augment
from .atomic import atomic_path, write_text
from .errors import UserError
from .runtime import Runtime, check_precision, setup_runtime

RECIPE_SECTIONS = ("model", "data", "optim", "augment", "selfblend", "train")
OPTIMIZERS = ("adam", "adamw", "ranger")

# ==============================================================================================
# Recipes


def _recipes_dir():
    return resources.files("dfdc_cli") / "recipes"


def available_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in _recipes_dir().iterdir() if p.name.endswith(".toml") and p.name != "defaults.toml")


def _load_toml_text(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML ({exc})") from None


def load_recipe_file(path: str | Path) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"recipe file not found: {p}")
    recipe = _load_toml_text(p.read_text(), str(p))
    train_t = recipe.get("train")
    if isinstance(train_t, dict) and "amp" in train_t:  # runs saved before train.precision (same values)
        train_t.setdefault("precision", train_t.pop("amp"))
        train_t.pop("amp", None)
    return recipe


def builtin_recipe(name: str) -> dict:
    f = _recipes_dir() / f"{name}.toml"
    if not f.is_file():
        raise UserError(f"no built-in recipe {name!r}; built-in: {', '.join(available_recipes())}")
    return _load_toml_text(f.read_text(), f"recipes/{name}.toml")


def deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (numbers, true/false, [lists], "strings"), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str]) -> dict:
    """``["optim.lr=3e-4", "augment.crop_scale=[0.4, 1]"]`` -> nested dict."""
    out: dict = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or "." not in key:
            raise UserError(f"--set expects section.key=value (e.g. optim.lr=3e-4), got {item!r}")
        section, _, name = key.partition(".")
        node = out.setdefault(section, {})
        parts = name.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(val.strip())
    return out


def _check_keys(recipe: Mapping, defaults: Mapping, source: str) -> None:
    """Unknown sections/keys are errors: a typo must not pass silently ([selfblend] is checked by
    the self-blend module, which knows its parameters)."""
    for section, table in recipe.items():
        if section not in RECIPE_SECTIONS:
            raise UserError(f"{source}: unknown recipe section [{section}]; known: {', '.join(RECIPE_SECTIONS)}")
        if section == "selfblend":
            continue
        if not isinstance(table, Mapping):
            raise UserError(f"{source}: [{section}] must be a table")
        for key in table:
            if key not in defaults[section]:
                raise UserError(f"{source}: unknown key {section}.{key}; known: {', '.join(defaults[section])}")


def resolve_recipe(
    member: Optional[str] = None,
    arch: Optional[str] = None,
    res: Optional[int] = None,
    recipe_file: Optional[str | Path] = None,
    overrides: Optional[Mapping] = None,
) -> dict:
    """Build the run's recipe: defaults -> member recipe -> recipe file -> overrides; validated."""
    from models.specs import MEMBERS, get_spec, spec_for

    defaults = builtin_recipe("defaults")
    user = load_recipe_file(recipe_file) if recipe_file else {}
    over = dict(overrides or {})
    _check_keys(user, defaults, str(recipe_file))
    _check_keys(over, defaults, "command line")
    top = deep_merge(user, over)
    model = dict(top.get("model", {}))
    if member:
        model["member"] = member
    if arch:
        model["arch"] = arch
    if res:
        model["res"] = int(res)
    try:
        if model.get("arch") and (arch or res or not model.get("member")):
            if not model.get("res"):
                raise UserError("--arch needs --res (112, 224 or 256)")
            spec = spec_for(str(model["arch"]), int(model["res"]))
        elif model.get("member"):
            spec = get_spec(str(model["member"]))
        else:
            raise UserError("say what to train: --member NAME (" + ", ".join(MEMBERS) + ") or --arch A --res R")
    except KeyError as exc:
        raise UserError(str(exc.args[0] if exc.args else exc)) from None
    layers = [defaults]
    if spec.name in available_recipes():
        layers.append(builtin_recipe(spec.name))
    layers += [user, over]
    recipe: dict = {}
    for layer in layers:
        recipe = deep_merge(recipe, layer)
    recipe["model"].update(member=spec.name, arch=spec.arch, res=int(spec.res))
    validate_recipe(recipe)
    return recipe


def validate_recipe(r: Mapping) -> None:
    o, d, t = r["optim"], r["data"], r["train"]
    if str(o["optimizer"]).lower() not in OPTIMIZERS:
        raise UserError(f"optim.optimizer must be one of {', '.join(OPTIMIZERS)}, got {o['optimizer']!r}")
    t["precision"] = check_precision(t["precision"])
    if o["schedule"] not in ("onecycle", "constant"):
        raise UserError(f"optim.schedule must be onecycle or constant, got {o['schedule']!r}")
    if int(o["epochs"]) < 1 or int(o["batch_size"]) < 1 or float(o["lr"]) <= 0:
        raise UserError("optim.epochs and optim.batch_size must be >= 1 and optim.lr > 0")
    if r["data"].get("paired") and int(o["batch_size"]) % 2:
        raise UserError(f"data.paired keeps a real frame and its self-blend in one batch: optim.batch_size "
                        f"must be even, got {o['batch_size']}")
    if d["fakes"] not in ("real", "self-blended", "mixed"):
        raise UserError(f"--fakes must be real, self-blended or mixed, got {d['fakes']!r}")
    if d["pad"] not in ("loop", "reflect", "repeat"):
        raise UserError(f"data.pad must be loop, reflect or repeat, got {d['pad']!r}")
    if int(d["workers"]) < -1:
        raise UserError("data.workers must be >= 0 (or -1: auto)")
    if d.get("start_method", "") not in ("", "fork", "forkserver", "spawn"):
        raise UserError(f"data.start_method must be fork, forkserver or spawn, got {d['start_method']!r}")
    if d["fakes"] != "real" or r.get("selfblend"):
        try:
            from .selfblend import SelfBlendParams
        except ImportError:  # pragma: no cover - the module ships with the tool
            raise UserError("self-blended fakes need dfdc_cli.selfblend, which is missing") from None
        SelfBlendParams.from_dict(r.get("selfblend") or {})


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps_toml(recipe: Mapping, header: str = "") -> str:
    """Write a recipe (tables of scalars, lists and inline tables) as TOML."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for section, table in recipe.items():
        if lines:
            lines.append("")
        lines.append(f"[{_toml_key(section)}]")
        for k, v in table.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


# ==============================================================================================
# Optimisers


class Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang et al. 2019) around any optimiser: every ``k`` steps the slow weights move
    ``alpha`` of the way to the fast weights, and the fast weights restart from there.

    It shares its ``param_groups`` with the wrapped optimiser, so learning-rate schedulers and
    gradient scalers that act on ``param_groups`` drive the inner optimiser.
    """

    def __init__(self, base: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5):
        if k < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError("Lookahead needs k >= 1 and 0 < alpha <= 1")
        self.base = base
        self.k = int(k)
        self.alpha = float(alpha)
        self.la_steps = 0
        super().__init__(base.param_groups, base.defaults)  # the same group dicts as ``base``
        self.param_groups = base.param_groups

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        for p in self._params():
            st = self.state[p]
            if "slow" not in st:
                st["slow"] = p.detach().clone()
        loss = self.base.step(closure)
        self.la_steps += 1
        if self.la_steps % self.k == 0:
            for p in self._params():
                slow = self.state[p]["slow"]
                slow.add_(p.detach() - slow, alpha=self.alpha)
                p.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        slow = [self.state[p]["slow"].clone() if "slow" in self.state[p] else None for p in self._params()]
        return {"base": self.base.state_dict(), "slow": slow, "la_steps": self.la_steps,
                "k": self.k, "alpha": self.alpha}

    def load_state_dict(self, state: Mapping) -> None:
        self.base.load_state_dict(state["base"])
        self.param_groups = self.base.param_groups
        self.la_steps = int(state["la_steps"])
        for p, s in zip(self._params(), state["slow"]):
            if s is not None:
                self.state[p]["slow"] = s.to(device=p.device, dtype=p.dtype).clone()


def make_optimizer(params, o: Mapping) -> torch.optim.Optimizer:
    name = str(o["optimizer"]).lower()
    lr, wd = float(o["lr"]), float(o["weight_decay"])
    betas = tuple(float(b) for b in o["betas"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd)
    if name == "ranger":
        base = torch.optim.RAdam(params, lr=lr, betas=betas, weight_decay=wd, decoupled_weight_decay=True)
        return Lookahead(base, k=int(o["lookahead_k"]), alpha=float(o["lookahead_alpha"]))
    raise UserError(f"unknown optimizer {name!r}")


def make_scheduler(opt: torch.optim.Optimizer, o: Mapping, total_steps: int):
    if o["schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=float(o["lr"]),
        total_steps=max(1, int(total_steps)),
        pct_start=float(o["pct_start"]),
        div_factor=float(o["div_factor"]),
        final_div_factor=float(o["final_div_factor"]),
    )


# ==============================================================================================
# Model adapter (models.registry / models.store)


# Where `init = "pretrained"` looks for the seed's starting weights: the data folder's ``pretrained/``
# and torch hub's checkpoint cache, under these file names. torchvision's three (mc3, r2plus1d, r3d18;
# the names its weights API gives) are downloaded into that cache when found in neither; the others
# are never downloaded.
PRETRAINED_FILES: dict[str, tuple[str, ...]] = {
    "mc3": ("mc3_18-a90a0ba3.pth",),
    "r2plus1d": ("r2plus1d_18-91a641e6.pth",),
    "r3d18": ("r3d_18-b3b3357e.pth",),
    "i3d": ("rgb_charades.pt", "rgb_imagenet.pt"),
    "r3d34": ("resnet-34-kinetics.pth",),
    "seresnext50": ("se_resnext50_32x4d-a260b3a4.pth", "seresnext50_32x4d.safetensors", "seresnext50_32x4d.pth"),
}


def pretrained_dirs() -> list[Path]:
    from models.pretrained import hub_checkpoints_dir

    from .paths import data_dir

    return [data_dir() / "pretrained", hub_checkpoints_dir()]


def resolve_init(spec, init: Any, echo: Optional[Callable[[str], None]] = None) -> tuple[Optional[Path], str]:
    """``model.init`` -> (weights file to start from, or None for random init; a description).

    scratch | pretrained (the seed's Kinetics/Charades/ImageNet file, found locally, or torchvision's
    Kinetics-400 file downloaded into torch hub's cache) | a weights file | a registry member
    (``mc3_112`` or ``mc3_112:<id>``: its active / given model). ``echo`` hears about a download.
    """
    s = str(init or "").strip()
    if s.lower() in ("", "scratch", "none", "random"):
        return None, "random init"
    if s.lower() == "pretrained":
        from models.pretrained import fetch_torchvision_weights, torchvision_weights

        names = PRETRAINED_FILES.get(spec.arch, ())
        for d in pretrained_dirs():
            for n in names:
                if (d / n).is_file():
                    return d / n, f"pretrained {d / n}"
        if torchvision_weights(spec.arch) is not None:
            from .ui import err_console

            path = fetch_torchvision_weights(spec.arch, progress=err_console.is_terminal, echo=echo)
            return path, f"pretrained {path}"
        where = " or ".join(str(d) for d in pretrained_dirs())
        raise UserError(
            f"{spec.name} starts from pretrained weights ({' / '.join(names)}), not found in {where}; "
            "put the file there, pass --init FILE, or --init scratch"
        )
    p = Path(s).expanduser()
    if p.is_file():
        return p, f"file {p}"
    name, _, model_id = s.partition(":")
    try:
        from models.specs import get_spec

        other = get_spec(name)
    except KeyError:
        raise UserError(f"--init {s}: not a file, a registry member, 'pretrained' or 'scratch'") from None
    from models import store

    entry = store.get_entry(other.name, model_id or None)
    if other.arch != spec.arch:
        raise UserError(f"--init {s}: a {other.arch} model cannot initialise {spec.name} ({spec.arch})")
    return entry.weights, f"registry {other.name}:{entry.model_id}"


def build_model(spec, init: Any, device: torch.device):
    """The member's model via the registry (forward: RGB 0..255 clips -> FAKE logit (B,))."""
    from models import registry

    path, how = resolve_init(spec, init)
    model = registry.build(spec, init=path) if path is not None else registry.build(spec)
    return model.to(device), how


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def weights_state_dict(model) -> dict:
    """The plain state_dict (the seed's layout: ``member.net``) that goes into ``best.pt``."""
    m = _unwrap(model)
    net = getattr(m, "net", m)
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def register_best(recipe: Mapping, run_dir: Path, weights: Path, val_loss: float, extra: Mapping) -> Any:
    """Register ``best.pt`` in the model registry (made active), with the resolved recipe and the
    log copied beside the stored weights."""
    import shutil

    from models import store
    from models.specs import get_spec

    spec = get_spec(recipe["model"]["member"])
    entry = store.register(
        spec, weights, source=f"train:{run_dir}",
        val_loss=None if val_loss is None or math.isnan(val_loss) else float(val_loss),
        extra={**dict(extra), "run_dir": str(run_dir), "recipe": _jsonable(recipe)},
    )
    for name in ("recipe.toml", "log.csv"):
        if (run_dir / name).is_file():
            try:
                shutil.copyfile(run_dir / name, Path(entry.path) / name)
            except OSError:  # pragma: no cover - the registry entry stands without the copies
                pass
    return entry


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj


# ==============================================================================================
# The training run


class Stepper:
    """One optimisation step: batch-level mixing (3D CutMix / 2D mixup-cutmix), forward under
    autocast, the (mixed) BCE loss, backward with the grad scaler, gradient clipping, optimiser and
    scheduler step. Shared by the trainer and bench/bench_train.py."""

    def __init__(self, model, opt, sched, scaler, rt: "Runtime", kind: str, aug: Mapping, grad_clip: float):
        self.model, self.opt, self.sched, self.scaler, self.rt = model, opt, sched, scaler, rt
        self.kind = kind
        self.aug = aug
        self.cutmix = bool(aug.get("cutmix")) and kind == "3d"
        self.grad_clip = float(grad_clip)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        rt = self.rt
        x = _to_input(x, rt.device)
        y = y.to(rt.device, non_blocking=True).float()
        y2, lam = y, None
        if self.cutmix and rng.random() < float(self.aug.get("cutmix_p", 1.0)):
            x, y2, lam, _perm, _boxes = augment.cutmix3d(x, y, rng, float(self.aug.get("cutmix_alpha", 1.0)))
        elif self.kind == "2d":
            x, y2, lam, _k = augment.mix2d(x.float(), y, rng, self.aug)
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32, enabled=rt.amp_dtype is not None):
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


# data_share: the fraction of the training pass spent waiting for the next batch (the data
# pipeline's share of the step time; near 0 when the model is the bottleneck).
LOG_COLUMNS = [
    "epoch", "lr", "train_loss", "val_loss", "val_logloss", "val_auc", "val_acc",
    "clips_per_s", "data_share", "train_s", "data_s", "val_s", "best",
]


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


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, tag: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, tag, epoch]).generate_state(1)[0])


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Mapping) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(st["cuda"])
        except Exception:  # a different GPU count: not needed for exactness (epochs reseed)
            pass


def new_run_dir(member: str) -> Path:
    from .paths import runs_dir

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = runs_dir() / f"{member}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _balanced_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean of the per-class log losses (each class weighs half): the validation loss."""
    from .metrics import log_loss

    losses = [log_loss(y[y == c], p[y == c]) for c in (0, 1) if np.any(y == c)]
    return float(np.mean(losses)) if losses else math.nan


def _write_log(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def _to_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 clips to the device (moved as uint8: 4x less traffic; the model scales them)."""
    return x.to(device, non_blocking=True)


def train(
    recipe: dict,
    run_dir: Optional[Path] = None,
    resume: Optional[Path] = None,
    echo: Callable[[str], None] = print,
    show_progress: bool = True,
) -> TrainResult:
    """Train one member as the (resolved) recipe says; resume from ``resume`` (a run folder)."""
    from torch.utils.data import DataLoader

    from . import data
    from .metrics import roc_auc
    from models.specs import get_spec

    if resume is not None:
        resume = Path(resume).expanduser()
        if not (resume / "last.pt").is_file():
            raise UserError(f"--resume {resume}: no last.pt there (not a run folder, or no epoch finished)")
        run_dir = resume

    r = recipe
    m, d, o, a, t = r["model"], r["data"], r["optim"], r["augment"], r["train"]
    rt = setup_runtime(t["device"], t["precision"])
    main = rt.is_main
    say = echo if main else (lambda _s: None)
    seed = int(t["seed"])
    _seed_all(seed)
    if t.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = not t.get("deterministic")

    spec = get_spec(m["member"])
    kind = "3d" if spec.is_3d else "2d"
    T = int(d["clip_frames"]) or int(spec.clip_frames)
    res = int(d["input_res"]) or int(spec.res)

    if resume is None:
        # Fail fast (a missing pretrained file) before reading any data. Under torchrun the first
        # process of each machine resolves (and downloads) first; the others then find the file.
        first_here = rt.local_rank == 0
        if rt.distributed and not first_here:
            torch.distributed.barrier()
        resolve_init(spec, m["init"], echo=echo if first_here else None)
        if rt.distributed and first_here:
            torch.distributed.barrier()

    # -- data ---------------------------------------------------------------------------------
    tubes = data.load_tubes(d["index"] or None)
    if d.get("groups_csv"):
        tubes = data.apply_groups(tubes, d["groups_csv"], str(d.get("group_column") or "identity"))
    split = data.split_tubes(tubes, d["val_parts"] or None, float(d["val_fraction"]), int(d["split_seed"]),
                             val_groups=[str(g) for g in d.get("val_groups") or []])
    say(split.summary())
    if len(split.train) == 0:
        raise UserError("the training side of the split is empty")
    sampler = data.BalancedSampler(
        split.train["y"].to_numpy(), seed=seed, fakes=d["fakes"],
        selfblend_fraction=float(d["selfblend_fraction"]), rank=rt.rank, world_size=rt.world_size,
        repeat=int(d.get("repeat") or 1), paired=bool(d.get("paired", False)),
    )
    common = dict(clip_frames=T, res=res, kind=kind, aug=a, pad=d["pad"], selfblend=r.get("selfblend") or {},
                  frames_2d=int(d["frames_2d"]))
    if kind == "2d" and int(d.get("preload_every") or 0) > 0:
        t_load = time.perf_counter()
        train_ds = data.FrameBank(split.train, res=res, every=int(d["preload_every"]),
                                  store_res=int(d.get("preload_res") or 0), aug=a, selfblend=r.get("selfblend") or {})
        say(f"preloaded {train_ds.n_frames} frames of {len(train_ds)} training tubes "
            f"({train_ds.nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t_load:.0f} s")
    else:
        train_ds = data.ClipDataset(split.train, train=True, **common)
    val_ds = data.ClipDataset(split.val, train=False, **common)
    val_list = data.shard(data.val_items(split.val["y"].to_numpy(), d["fakes"], seed), rt.rank, rt.world_size)
    workers = int(d["workers"])
    if workers < 0:  # auto: the cores this process may use, shared with the other local ranks, minus one
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(rt.world_size)))
        workers = max(1, cores // max(1, local_world) - 1)
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
    steps_per_epoch = len(train_loader)
    epochs = int(o["epochs"])

    # -- model, optimiser ----------------------------------------------------------------------
    # (a resumed run takes its weights from the checkpoint: no need for the init file any more)
    model, init_how = build_model(spec, "scratch" if resume is not None else m["init"], rt.device)
    if rt.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], o)
    sched = make_scheduler(opt, o, epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.amp_dtype == torch.float16)

    history: list[dict] = []
    best = {"epoch": 0, "val_loss": math.inf}
    start_epoch = 0
    if resume is not None:
        ck = torch.load(resume / "last.pt", map_location="cpu", weights_only=False)
        _unwrap(model).load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        sampler.load_state_dict(ck["sampler"])
        _set_rng_state(ck["rng"])
        history, best, start_epoch = list(ck["history"]), dict(ck["best"]), int(ck["epoch"])
        if ck.get("steps_per_epoch") not in (None, steps_per_epoch):
            raise UserError(
                f"--resume: the data changed ({ck['steps_per_epoch']} -> {steps_per_epoch} steps per epoch); "
                "resume needs the same index, split and batch size"
            )
        say(f"resumed {run_dir} after epoch {start_epoch}/{epochs}")
    if run_dir is None:
        run_dir = new_run_dir(spec.name)
    if rt.distributed:  # every rank uses rank 0's folder name (only rank 0 writes)
        holder = [str(run_dir)]
        torch.distributed.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
    run_dir = Path(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:
            write_text(run_dir / "recipe.toml", dumps_toml(r, header=f"deepfake train: resolved recipe of {run_dir.name}"))
            split_info = {"how": split.how, "sizes": split.sizes(),
                          "val_tubes": split.val["tube_path"].tolist(), "train_tubes": split.train["tube_path"].tolist()}
            write_text(run_dir / "split.json", json.dumps(split_info, indent=1) + "\n")
        say(f"run folder: {run_dir}")
        shape = f"clips {T} x {res} x {res}" if kind == "3d" else f"frames {res} x {res}"
        say(f"{spec.name}: {kind.upper()}, {shape}, {steps_per_epoch} steps/epoch x {epochs} epochs, "
            f"batch {bs} x {rt.world_size} process(es), {workers} loader worker(s), {o['optimizer']} lr {o['lr']}, "
            f"device {rt.device}"
            + (f", precision {str(rt.amp_dtype).replace('torch.', '')}" if rt.amp_dtype else "") + f", {init_how}")

    stepper = Stepper(model, opt, sched, scaler, rt, kind, a, float(o["grad_clip"]))
    stop_after = int(t["stop_after"])
    val_every = max(1, int(t["val_every"]))
    stopped = False
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(seed, epoch, 11) + rt.rank)
        batch_rng = np.random.default_rng([seed & 0xFFFFFFFF, 12, epoch, rt.rank])
        model.train()
        t0 = time.perf_counter()
        loss_sum, n_seen, data_s = 0.0, 0, 0.0
        prog = _Progress(main and show_progress, f"epoch {epoch + 1}/{epochs}", steps_per_epoch)
        loss_acc = torch.zeros((), dtype=torch.float64, device=rt.device)
        w0 = t0  # the wait for each batch: from the end of the previous step to the batch's arrival
        for i, (x, y) in enumerate(train_loader):
            data_s += time.perf_counter() - w0
            loss = stepper(x, y, batch_rng)
            loss_acc += loss.double() * len(y)
            n_seen += len(y)
            if rt.device.type == "cuda":
                # Let the queued GPU work finish: else the next wait would count compute time as
                # data time (a step returns before the GPU has run it).
                torch.cuda.synchronize(rt.device)
            if prog.enabled:
                elapsed = time.perf_counter() - t0
                prog.advance(i + 1, f"loss {float(loss_acc) / n_seen:.4f}  "
                                    f"{_rate(n_seen * rt.world_size / elapsed)} clips/s  data {data_s / elapsed:.0%}")
            w0 = time.perf_counter()
        loss_sum = float(loss_acc)
        prog.close()
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        train_s = time.perf_counter() - t0
        # (data time: the mean over the processes, each of which waits for its own loader)
        loss_sum, n_seen, data_s = rt.all_reduce_sum([loss_sum, float(n_seen), data_s])
        data_s /= rt.world_size
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": float(opt.param_groups[0]["lr"]),
            "train_loss": loss_sum / max(n_seen, 1.0),
            "clips_per_s": n_seen / max(train_s, 1e-9),
            "data_share": data_s / max(train_s, 1e-9),
            "train_s": train_s,
            "data_s": data_s,
            "val_loss": math.nan, "val_logloss": math.nan, "val_auc": math.nan, "val_acc": math.nan, "val_s": 0.0,
            "best": False,
        }
        if val_loader is not None and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
            v0 = time.perf_counter()
            vprog = _Progress(main and show_progress, f"epoch {epoch + 1}/{epochs} validation", len(val_loader))
            ys, ps = evaluate(model, val_loader, rt, on_batch=lambda k, n: vprog.advance(
                k, f"{_rate(n * rt.world_size / max(time.perf_counter() - v0, 1e-9))} clips/s"))
            vprog.close()
            if len(ys):
                from .metrics import log_loss

                row["val_loss"] = _balanced_log_loss(ys, ps)
                row["val_logloss"] = log_loss(ys, ps)
                row["val_auc"] = roc_auc(ys, ps)
                row["val_acc"] = float(np.mean((ps >= 0.5) == (ys == 1)))
            row["val_s"] = time.perf_counter() - v0
        # Best: the lowest validation loss (every epoch counts as best when there is no validation set).
        if val_loader is None:
            is_best = True
        else:
            is_best = not math.isnan(row["val_loss"]) and row["val_loss"] < best["val_loss"]
        if is_best:
            best = {"epoch": epoch + 1, "val_loss": float(row["val_loss"])}
            row["best"] = True
        history.append(row)
        if main:
            if is_best:
                with atomic_path(run_dir / "best.pt") as tmp:
                    torch.save(weights_state_dict(model), tmp)
            ck = {
                "model": _unwrap(model).state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "sampler": sampler.state_dict(),
                "rng": _rng_state(),
                "epoch": epoch + 1,
                "steps_per_epoch": steps_per_epoch,
                "best": best,
                "history": history,
                "member": spec.name,
            }
            with atomic_path(run_dir / "last.pt") as tmp:
                torch.save(ck, tmp)
            _write_log(run_dir / "log.csv", history)
            say(_epoch_line(row, epochs))
        if stop_after and epoch + 1 >= stop_after and epoch + 1 < epochs:
            stopped = True
            say(f"stopped after epoch {epoch + 1} (train.stop_after); continue with --resume {run_dir}")
            break
    if rt.distributed:
        torch.distributed.barrier()

    result = TrainResult(run_dir, len(history), int(best["epoch"]), float(best["val_loss"]), history,
                         stopped_early=stopped, is_main=main)
    if main and not stopped:
        best_row = next((h for h in history if h["epoch"] == best["epoch"]), {})
        extra = {"epoch": best["epoch"], "val_auc": best_row.get("val_auc"), "epochs": epochs,
                 "split": split.how, "fakes": d["fakes"]}
        result.registered = register_best(r, run_dir, run_dir / "best.pt", float(best["val_loss"]), extra)
        say(f"best epoch {best['epoch']}: val loss {best['val_loss']:.4f}; registered {spec.name} from {run_dir}")
    if rt.owns_process_group:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _epoch_line(row: Mapping, epochs: int) -> str:
    def f(v, fmt=".4f"):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    return (f"epoch {row['epoch']}/{epochs}: train loss {f(row['train_loss'])}  val loss {f(row['val_loss'])}  "
            f"val AUC {f(row['val_auc'], '.3f')}  {_rate(row['clips_per_s'])} clips/s  "
            f"data {f(row.get('data_share', math.nan), '.0%')}"
            + ("  *best" if row.get("best") else ""))


@torch.no_grad()
def evaluate(model, loader, rt: Runtime,
             on_batch: Optional[Callable[[int, int], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """p(fake) and labels over a (sharded) loader, gathered from all ranks.

    The 2D member's items are frame stacks, scored by its test-time rule
    (:meth:`models.registry.MemberModel.p_fake_2d`, the one scan's predict applies), so that its
    validation loss measures what scan will do. ``on_batch(batches, items)`` follows the progress.

    Runs the bare model (not the DDP wrapper, whose forward would broadcast buffers: a collective
    that ranks with different numbers of validation batches would not match)."""
    model = _unwrap(model)
    model.eval()
    two_d = model.kind == "2d"
    ys, ps, n_items = [], [], 0
    for x, y in loader:
        x = _to_input(x, rt.device)
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32, enabled=rt.amp_dtype is not None):
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


def _rate(per_s: float) -> str:
    """Clips per second to three significant digits (0.182 on a CPU, 143 on a GPU)."""
    return "-" if per_s is None or math.isnan(per_s) else f"{per_s:.3g}"


def _clock(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# Off a terminal (a log file, a pipe), how often a progress line is written.
PLAIN_PROGRESS_EVERY_S = 60.0


class _Progress:
    """Progress of one pass (an epoch's training or validation) on stderr, or nothing.

    On a terminal: a rich bar with the steps, elapsed time, ETA and a status (loss, clips/s, the
    data pipeline's share). Elsewhere (a log file, a pipe, tests) a plain line every ``every_s``
    seconds, without control characters, so that an hour-long CPU epoch can be followed with
    ``tail -f``. The ETA is the mean step time so far times the steps left: rich's own estimate
    needs several updates within 30 s, which a CPU step of tens of seconds never gives.
    """

    def __init__(self, enabled: bool, desc: str, total: int, every_s: float = PLAIN_PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.perf_counter):
        from . import ui

        self.console = ui.err_console
        self.enabled = bool(enabled) and total > 0
        self.desc, self.total, self.every_s, self.clock = desc, int(total), float(every_s), clock
        self.t0 = self.last_line = clock()
        self.bar = None
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
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
