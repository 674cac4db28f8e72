"""Training recipes: what a run trains and how, as TOML in layers.

Layers, later ones winning: ``recipes/defaults.toml`` -> ``recipes/<member>.toml`` -> ``--recipe FILE``
-> command-line options (``--set section.key=value`` for anything). The resolved recipe is written to
the run folder as ``recipe.toml`` (:func:`dumps_toml`); a resumed run reads it back
(:func:`resume_recipe`).

The schema is ``recipes/defaults.toml``: it names every section and key, gives each its default and its
type (a value of another type is an error; a number given for a text key is read as that text), and
its comments say what each key does. Its sections, and who reads them:

    [model]     member / arch + res, init               -> dfdc_cli.train.model_adapter
    [data]      index, split, sampler, loader workers   -> dfdc_cli.train.data (via dfdc_cli.train.trainer)
    [optim]     optimiser, schedule, epochs, batch size -> dfdc_cli.train.optim
    [augment]   clip augmentation, CutMix / mixup       -> dfdc_cli.train.augment
    [selfblend] self-blend generator parameters         -> dfdc_cli.train.selfblend (checks its own keys)
    [train]     seed, device, precision, validation     -> dfdc_cli.train.trainer / dfdc_cli.train.loop
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional

import tomli_w

from dfdc_cli.errors import UserError
from dfdc_cli.runtime import check_precision
from dfdc_models.specs import MEMBERS, get_spec, spec_for

RECIPE_SECTIONS = ("model", "data", "optim", "augment", "selfblend", "train")
OPTIMIZERS = ("adam", "adamw", "ranger")
SCHEDULES = ("onecycle", "constant")
SELECT_BY = ("val_loss", "val_auc", "last")  # train.select: what makes an epoch the best

# What a resumed run may change: how it computes, never what (the replayed epochs stay exact).
RESUME_OK = {("data", "workers"), ("data", "prefetch"), ("data", "start_method"), ("train", "device"),
             ("train", "stop_after"), ("data", "index")}


# ----------------------------------------------------------------------------------------------
# Load


def _recipes_dir():
    return resources.files("dfdc_cli.train") / "recipes"


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


def defaults() -> dict:
    """``recipes/defaults.toml``: every key with its default (the schema)."""
    return builtin_recipe("defaults")


# ----------------------------------------------------------------------------------------------
# Merge


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


def _type_name(v: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(v), type(v).__name__)


def _typed(value: Any, default: Any, where: str) -> Any:
    """``value`` checked against the type of its default; a number given for a text key (``--set
    data.val_parts=45``) becomes that text."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = True
    if not ok:
        raise UserError(f"{where} must be {_type_name(default)}, got {value!r}")
    return value


def _check_keys(recipe: dict, schema: Mapping, source: str) -> None:
    """Unknown sections/keys are errors: a typo must not pass silently ([selfblend] is checked by
    the self-blend module, which knows its parameters). Values take their default's type."""
    for section, table in recipe.items():
        if section not in RECIPE_SECTIONS:
            raise UserError(f"{source}: unknown recipe section [{section}]; known: {', '.join(RECIPE_SECTIONS)}")
        if section == "selfblend":
            continue
        if not isinstance(table, Mapping):
            raise UserError(f"{source}: [{section}] must be a table")
        for key in table:
            if key not in schema[section]:
                raise UserError(f"{source}: unknown key {section}.{key}; known: {', '.join(schema[section])}")
            table[key] = _typed(table[key], schema[section][key], f"{source}: {section}.{key}")


# ----------------------------------------------------------------------------------------------
# Resolve, validate


def resolve_recipe(
    member: Optional[str] = None,
    arch: Optional[str] = None,
    res: Optional[int] = None,
    recipe_file: Optional[str | Path] = None,
    overrides: Optional[Mapping] = None,
) -> dict:
    """Build the run's recipe: defaults -> member recipe -> recipe file -> overrides; validated."""
    schema = defaults()
    user = load_recipe_file(recipe_file) if recipe_file else {}
    over = deep_merge({}, overrides or {})  # (a copy: the key check types values in place)
    _check_keys(user, schema, str(recipe_file))
    _check_keys(over, schema, "command line")
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
    layers = [schema]
    if spec.name in available_recipes():
        member_recipe = builtin_recipe(spec.name)
        _check_keys(member_recipe, schema, f"recipes/{spec.name}.toml")
        layers.append(member_recipe)
    layers += [user, over]
    recipe: dict = {}
    for layer in layers:
        recipe = deep_merge(recipe, layer)
    recipe["model"].update(member=spec.name, arch=spec.arch, res=int(spec.res))
    validate_recipe(recipe)
    return recipe


def resume_recipe(run_dir: str | Path, overrides: Optional[Mapping] = None, *, named: bool = False) -> dict:
    """The recipe of a run continued with ``--resume``: the saved ``recipe.toml`` with only the
    :data:`RESUME_OK` keys changed. ``named``: the command also named a member, an architecture or
    a recipe file, which a resumed run cannot take."""
    if named:
        raise UserError("--resume continues a run with its saved recipe; leave out --member/--arch/--res/--recipe")
    saved = Path(run_dir).expanduser() / "recipe.toml"
    if not saved.is_file():
        raise UserError(f"--resume {run_dir}: no recipe.toml there (not a run folder)")
    over = deep_merge({}, overrides or {})
    changed = [f"{s}.{k}" for s, t in over.items() for k in t if (s, k) not in RESUME_OK]
    if changed:
        raise UserError("--resume continues the saved recipe exactly; only --workers, --device and --index "
                        f"may change (got {', '.join(changed)})")
    _check_keys(over, defaults(), "command line")
    resolved = load_recipe_file(saved)
    resolved.setdefault("train", {})["stop_after"] = 0  # a resumed run goes to the end unless told
    resolved = deep_merge(resolved, over)
    validate_recipe(resolved)
    return resolved


def run_recipe(resume: Optional[str | Path] = None, **choice: Any) -> dict:
    """The recipe `deepfake train` runs: a new run's (:func:`resolve_recipe` of ``choice``: member,
    arch, res, recipe_file, overrides) or, with ``resume``, the saved one (:func:`resume_recipe`)."""
    if resume is not None:
        named = any(choice.get(k) for k in ("member", "arch", "res", "recipe_file"))
        return resume_recipe(resume, choice.get("overrides"), named=named)
    return resolve_recipe(**choice)


def validate_recipe(r: Mapping) -> None:
    o, d, t = r["optim"], r["data"], r["train"]
    if str(o["optimizer"]).lower() not in OPTIMIZERS:
        raise UserError(f"optim.optimizer must be one of {', '.join(OPTIMIZERS)}, got {o['optimizer']!r}")
    t["precision"] = check_precision(t["precision"])
    if o["schedule"] not in SCHEDULES:
        raise UserError(f"optim.schedule must be onecycle or constant, got {o['schedule']!r}")
    if int(o["epochs"]) < 1 or int(o["batch_size"]) < 1 or float(o["lr"]) <= 0:
        raise UserError("optim.epochs and optim.batch_size must be >= 1 and optim.lr > 0")
    if str(t.get("select", "val_loss")) not in SELECT_BY:
        raise UserError(f"train.select must be one of {', '.join(SELECT_BY)}, got {t['select']!r}")
    if d.get("paired") and int(o["batch_size"]) % 2:
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
        from dfdc_cli.train.selfblend import SelfBlendParams

        SelfBlendParams.from_dict(r.get("selfblend") or {})


# ----------------------------------------------------------------------------------------------
# Write


def dumps_toml(recipe: Mapping, header: str = "") -> str:
    """A recipe as TOML (``recipe.toml``, ``--print-recipe``), under an optional comment header."""
    head = "".join(f"# {line}\n" for line in header.splitlines())
    return head + ("\n" if head else "") + tomli_w.dumps(recipe)
