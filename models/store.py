"""The weights store: ``paths.models_dir()/<member>/<model_id>/`` holds ``weights.pt`` (a plain state_dict in
the seed's layout) and ``manifest.json``; ``paths.models_dir()/<member>/ACTIVE`` names the model a member
uses. Every entry was verified to load strictly before it was written, and is written atomically.

API (what ``train``, ``scan``, ``eval`` and ``deepfake models`` use):

* :func:`register` - store a state_dict (or a checkpoint file) for a member, make it active;
* :func:`import_checkpoint` - the same for a user's file, with the file's hash as provenance;
* :func:`checkpoint_files`, :func:`import_files` - a whole release (files and folders), each file's
  member recognised by :func:`identify`;
* :func:`list_entries`, :func:`members`, :func:`active`, :func:`get_entry`;
* :func:`load` - a ready :class:`~dfdc_models.registry.MemberModel` (eval mode) of a member's active model;
* :func:`activate`, :func:`remove`;
* :func:`calibration`, :func:`set_calibration` - the entry's calibrated p(fake) and UNSURE band
  (:mod:`dfdc_models.calibration`), recorded in its manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

import torch

from . import calibration as C, paths
from .archs import get_arch
from .atomic import atomic_dir, write_text
from .calibration import Calibration
from .checkpoint import extract_state_dict, read_bytes, read_checkpoint, save_checkpoint, sha256_file
from .errors import UserError
from .registry import check_layout, load_strict, match_layouts, normalize_keys
from .specs import MEMBERS, MemberSpec, get_spec, named_as_released

WEIGHTS = "weights.pt"
MANIFEST = "manifest.json"
ACTIVE = "ACTIVE"


@dataclass
class Entry:
    """One registered model (the contents of its ``manifest.json`` plus where it lives)."""

    member: str
    model_id: str
    arch: str
    res: int
    source: str  # e.g. "import:/path/file.model" or "train:<run dir>"
    sha256: str  # of the stored weights.pt
    source_sha256: str  # of the file it came from ("" when registered from memory)
    val_loss: Optional[float]
    date: str  # ISO 8601 UTC
    parameter_count: int
    kind: str = ""
    scaling: str = ""
    output: str = ""
    extra: dict = field(default_factory=dict)
    calibration: Optional[dict] = None  # dfdc_models.calibration.Calibration.to_dict(); None: uncalibrated
    path: Path = field(default=Path(), compare=False)  # the entry's folder
    active: bool = False

    @property
    def id(self) -> str:
        return self.model_id

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    def manifest(self) -> dict:
        d = asdict(self)
        d.pop("path")
        d.pop("active")
        return d


def _member_dir(member: str) -> Path:
    return paths.models_dir() / member


def _spec(member: Union[str, MemberSpec]) -> MemberSpec:
    if isinstance(member, MemberSpec):
        return member
    try:
        return get_spec(member)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None


def _read_entry(folder: Path, active_id: Optional[str]) -> Optional[Entry]:
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not (folder / WEIGHTS).is_file():
        return None
    known = {f for f in Entry.__dataclass_fields__ if f not in ("path", "active")}
    extra = {k: v for k, v in m.items() if k not in known}
    kwargs = {k: v for k, v in m.items() if k in known}
    kwargs.setdefault("extra", {})
    kwargs["extra"] = {**extra, **(kwargs["extra"] or {})}
    try:
        e = Entry(**kwargs, path=folder)
    except TypeError:
        return None
    e.active = e.model_id == active_id
    return e


def _active_id(member: str) -> Optional[str]:
    try:
        text = (_member_dir(member) / ACTIVE).read_text().strip()
    except OSError:
        return None
    return text or None


@dataclass
class Damage:
    """A part of the registry that cannot be read: which member, which file, and why."""

    member: str
    path: Path
    reason: str

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


def _entry_problem(folder: Path) -> Optional[tuple[Path, str]]:
    """Which file of a registered model's folder makes it unusable, and why (None when usable)."""
    manifest = folder / MANIFEST
    try:
        m = json.loads(manifest.read_text())
    except FileNotFoundError:
        return manifest, "is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return manifest, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    except ValueError as exc:
        return manifest, f"is not valid JSON ({exc})"
    if not isinstance(m, dict):
        return manifest, "is not a JSON object"
    if m.get("model_id") != folder.name or m.get("member") != folder.parent.name:
        return manifest, f"names {m.get('member')!r}/{m.get('model_id')!r}, not its own folder"
    if _read_entry(folder, None) is None and (folder / WEIGHTS).is_file():
        return manifest, "lacks fields of a registry entry"
    if not (folder / WEIGHTS).is_file():
        return folder / WEIGHTS, "is missing"
    return None


def _member_folders(member: Optional[str] = None) -> list[tuple[str, Path]]:
    """(member name, its registry folder) of one member, or of every member with a folder."""
    root = paths.models_dir()
    if member is not None:
        names = [_spec(member).name]
    else:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
    return [(name, root / name) for name in names if (root / name).is_dir()]


def damaged(member: Optional[str] = None) -> list[Damage]:
    """Everything in the registry (of one member, or all) that cannot be read: a model folder whose
    manifest is missing, unreadable or wrong, or whose weights are missing; an ``ACTIVE`` pointer
    that cannot be read or names no usable model. Such damage is an error for whoever would use
    that member, never a reason to quietly use something else."""
    out: list[Damage] = []
    for name, folder in _member_folders(member):
        ok: set[str] = set()
        bad: set[str] = set()
        for d in sorted(folder.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            problem = _entry_problem(d)
            if problem is None:
                ok.add(d.name)
            else:
                bad.add(d.name)
                out.append(Damage(name, *problem))
        pointer = folder / ACTIVE
        if pointer.exists() or pointer.is_symlink():
            try:
                text = pointer.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                out.append(Damage(name, pointer, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"))
                continue
            if not text:
                out.append(Damage(name, pointer, "is empty (it should name the active model)"))
            elif text not in ok and text not in bad:  # (a damaged entry it names is reported already)
                shown = text if len(text) <= 40 and text.isprintable() else repr(text[:40])
                out.append(Damage(name, pointer, f"names model {shown}, which is not a usable entry of {name}"))
    return out


def check_intact(member_names: Optional[Iterable[str]] = None) -> None:
    """A one-line :class:`UserError` naming the damaged file when the registry of these members
    (None: of every member) is damaged (:func:`damaged`)."""
    found: list[Damage] = []
    for n in (member_names if member_names is not None else [None]):
        found.extend(damaged(n))
    if found:
        more = f" (and {len(found) - 1} more: `deepfake models list` shows them)" if len(found) > 1 else ""
        raise UserError(f"the model registry is damaged: {found[0].line()}{more}; repair or remove it, or "
                        "import the model again")


def list_entries(member: Optional[str] = None) -> list[Entry]:
    """Registered models (of one member, or all), seed members first, oldest first within a member."""
    out: list[Entry] = []
    for name, folder in _member_folders(member):
        aid = _active_id(name)
        entries = [e for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                   if (e := _read_entry(d, aid)) is not None]
        if aid is None and entries:  # no pointer (e.g. removed): the newest is active
            newest = max(entries, key=lambda e: e.date)
            newest.active = True
        out.extend(sorted(entries, key=lambda e: (e.date, e.model_id)))
    order = {m: i for i, m in enumerate(MEMBERS)}
    return sorted(out, key=lambda e: (order.get(e.member, len(order)), e.member))


def members() -> list[str]:
    """Names of the members that have at least one registered model (seed order first)."""
    seen: dict[str, None] = {}
    for e in list_entries():
        seen.setdefault(e.member, None)
    return list(seen)


def active(member: str) -> Optional[Entry]:
    """The entry a member uses, or None when nothing is registered for it."""
    return next((e for e in list_entries(member) if e.active), None)


def get_entry(member: str, model_id: Optional[str] = None) -> Entry:
    """A member's entry by id (a unique prefix is enough), or its active one."""
    spec = _spec(member)
    if model_id is None:
        e = active(spec.name)
        if e is None:
            raise UserError(f"no model is registered for {spec.name}; import one with "
                            f"`deepfake models import FILE --as {spec.name}` or train one with `deepfake train`")
        return e
    matches = [e for e in list_entries(spec.name) if e.model_id.startswith(model_id)]
    if len(matches) != 1:
        ids = ", ".join(e.model_id for e in list_entries(spec.name)) or "none"
        what = "no" if not matches else "more than one"
        raise UserError(f"{what} model of {spec.name} matches id {model_id!r} (registered: {ids})")
    return matches[0]


def load(member: str, model_id: Optional[str] = None, device: Optional[Union[str, torch.device]] = None):
    """The member's active (or ``model_id``) model as a :class:`MemberModel` in eval mode."""
    from .registry import build_net, MemberModel, normalize_keys

    entry = get_entry(member, model_id)
    spec = _spec(member)
    if spec.arch != entry.arch:
        raise UserError(f"registry entry {entry.path} is a {entry.arch} model, but {spec.name} is {spec.arch}")
    net = build_net(spec.arch)
    sd = extract_state_dict(read_checkpoint(entry.weights), source=str(entry.weights))
    load_strict(net, normalize_keys(sd), str(entry.weights), f"member {spec.name} ({spec.arch})")
    model = MemberModel(spec, net)
    model.source = entry.source
    model.model_id = entry.model_id
    model.calibration = calibration(entry)
    if device is not None:
        model = model.to(device)
    return model.eval()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_finite(sd: Mapping[str, torch.Tensor], what: str) -> None:
    """A one-line :class:`UserError` when a floating tensor holds NaN or Inf: such weights give NaN
    scores (a broken training run, a damaged file), never a verdict."""
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            n = int((~torch.isfinite(v)).sum())
            raise UserError(f"{what}: tensor {k} holds {n} NaN/Inf value(s); weights must be finite numbers")


def register(
    member: Union[str, MemberSpec],
    weights: Union[Mapping[str, torch.Tensor], str, os.PathLike],
    *,
    source: str = "",
    val_loss: Optional[float] = None,
    extra: Optional[Mapping[str, Any]] = None,
    activate: bool = True,
    _loaded: Any = None,
    _data: Optional[bytes] = None,
) -> Entry:
    """Verify that ``weights`` (a state_dict, a trainer checkpoint dict, or a checkpoint file) loads
    strictly into ``member``'s network, store it and (by default) make it the member's active model.

    Registering identical weights twice gives the same entry (the id is a content hash)."""
    from .registry import build_net, normalize_keys, parameter_count

    spec = _spec(member)
    source_sha = ""
    keep: Optional[bytes] = None
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        data = read_bytes(path) if _data is None else _data
        obj = read_checkpoint(path, data) if _loaded is None else _loaded
        sd = normalize_keys(extract_state_dict(obj, source=str(path)))
        source_sha = hashlib.sha256(data).hexdigest()
        source = source or f"file:{path.resolve()}"
        # The seed's files are already plain state_dicts: keep their bytes (and hash) as they are.
        if isinstance(obj, Mapping) and list(obj.keys()) == list(sd.keys()):
            keep = data
        what = str(path)
    else:
        sd = normalize_keys(extract_state_dict(weights, source="state_dict"))
        what = "state_dict"
    # The check needs shapes only: a network on the meta device costs no memory and no random init
    # (seconds for the 224 members).
    with torch.device("meta"):
        net = build_net(spec.arch)
    check_layout(net, sd, what, f"member {spec.name} ({spec.arch})")
    check_finite(sd, what)
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}

    root = _member_dir(spec.name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".staging-{os.getpid()}-{id(sd)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        staged = tmp / WEIGHTS
        if keep is not None:
            staged.write_bytes(keep)
            sha = source_sha
        else:
            save_checkpoint(sd, staged)
            sha = sha256_file(staged)
        model_id = sha[:12]
        entry = Entry(
            member=spec.name, model_id=model_id, arch=spec.arch, res=spec.res, source=source,
            sha256=sha, source_sha256=source_sha,
            val_loss=None if val_loss is None else float(val_loss), date=_now(),
            parameter_count=parameter_count(net), kind=spec.kind, scaling=spec.scaling, output=spec.output,
            extra=dict(extra or {}), path=root / model_id,
        )
        with atomic_dir(root / model_id) as folder:
            shutil.move(str(staged), folder / WEIGHTS)
            (folder / MANIFEST).write_text(json.dumps(entry.manifest(), indent=2, default=str) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if activate or _active_id(spec.name) is None:
        write_text(root / ACTIVE, model_id + "\n")
    return get_entry(spec.name, model_id)


# Files a folder import picks up (the seed's .model / .PTH, our .pt, common others); any file named on
# the command line is tried whatever its name.
WEIGHT_SUFFIXES = (".model", ".pth", ".pt", ".ckpt", ".bin", ".tar")


class AmbiguousCheckpoint(UserError):
    """A checkpoint whose layout fits more than one member and whose name does not tell which."""

    def __init__(self, message: str, candidates: tuple[str, ...]):
        super().__init__(message)
        self.candidates = candidates


@dataclass
class ImportResult:
    """What importing one file did: a new entry, an entry that was already there, or a failure."""

    path: Path
    entry: Optional[Entry] = None
    new: bool = False
    reason: str = ""  # why it failed (one line, naming the file)
    candidates: tuple[str, ...] = ()  # the members an ambiguous file could be

    @property
    def ok(self) -> bool:
        return self.entry is not None


def checkpoint_files(paths: Iterable[Union[str, os.PathLike]]) -> tuple[list[Path], list[Path]]:
    """(files to import, files skipped): files as given, and in folders (recursively, hidden ones left
    out) the files named like weights (:data:`WEIGHT_SUFFIXES`); the others are returned as skipped."""
    files: list[Path] = []
    skipped: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.is_dir():
            files.append(p)  # a missing file fails with its own reason
            continue
        for f in sorted(p.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
                continue
            (files if f.suffix.lower() in WEIGHT_SUFFIXES else skipped).append(f)
    unique: dict[Path, Path] = {}  # a file named twice (or inside a folder also given) imports once
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values()), skipped


def identify(path: Union[str, os.PathLike], obj: Any, sd: Mapping[str, torch.Tensor]) -> MemberSpec:
    """The member a checkpoint belongs to: its layout (keys and shapes) names the architecture; of the
    members that share one (i3d, mc3, r2plus1d pairs), the seed's released file name - or another epoch
    of the same run - or the member a `deepfake train` checkpoint records tells which. Raises
    :class:`AmbiguousCheckpoint` (with the candidates) when nothing does, :class:`UserError` when no
    layout fits."""
    path = Path(path)
    archs, closest, why = match_layouts(sd)
    if not archs:
        hint = f"; closest is {closest}: {why}" if closest else ""
        raise UserError(f"{path} matches no member's layout{hint}")
    recorded = obj.get("member") if isinstance(obj, Mapping) else None
    if isinstance(recorded, str):
        try:
            spec = get_spec(recorded)
        except KeyError:
            spec = None
        if spec is not None and spec.arch in archs:
            return spec
    candidates = [m for m in MEMBERS.values() if m.arch in archs]
    if len(candidates) == 1:
        return candidates[0]
    by_name = [m for m in candidates if named_as_released(m, path.name)]
    if len(by_name) == 1:
        return by_name[0]
    arch = "/".join(archs)
    if not candidates:  # an architecture no seed member uses: the weights do not say the resolution
        names = tuple(f"{archs[0]}_{r}" for r in get_arch(archs[0]).resolutions)
        raise AmbiguousCheckpoint(
            f"{path} has the {arch} layout, which no seed member uses, and its input size is not in the "
            f"weights: import it with --as {' or --as '.join(names)}", names)
    names = tuple(m.name for m in candidates)
    which = " or ".join(f"{m.name} (released as {m.released_file})" for m in candidates)
    raise AmbiguousCheckpoint(
        f"{path} has the {arch} layout, which fits {which}, and its name does not say which: import it "
        f"with --as {' or --as '.join(names)}", names)


def _import(path: Union[str, os.PathLike], member: Optional[str], val_loss: Optional[float],
            activate: bool) -> tuple[Entry, bool]:
    path = Path(path).expanduser()
    data = read_bytes(path)
    obj = read_checkpoint(path, data)
    spec = _spec(member) if member else identify(path, obj, normalize_keys(extract_state_dict(obj, str(path))))
    source_sha = hashlib.sha256(data).hexdigest()
    # The same file again (by content, not name) registers nothing: the entry is already verified.
    old = next((e for e in list_entries(spec.name) if source_sha in (e.source_sha256, e.sha256)), None)
    if old is not None:
        if activate and not old.active:
            write_text(_member_dir(spec.name) / ACTIVE, old.model_id + "\n")
            old = get_entry(spec.name, old.model_id)
        return old, False
    if val_loss is None:
        val_loss = _val_loss_of(path, obj)
    extra: dict[str, Any] = {"file_name": path.name}
    if isinstance(obj, Mapping):
        for k in ("epoch", "arch", "member", "recipe", "run"):
            if k in obj and isinstance(obj[k], (str, int, float)):
                extra[k] = obj[k]
    entry = register(spec, path, source=f"import:{path.resolve()}", val_loss=val_loss, extra=extra,
                     activate=activate, _loaded=obj, _data=data)
    return entry, True


def import_checkpoint(path: Union[str, os.PathLike], member: Optional[str] = None, *,
                      val_loss: Optional[float] = None, activate: bool = True) -> Entry:
    """Import a checkpoint file (the seed's ``.model``/``.PTH`` files, or one written by ``deepfake
    train``) as a model of ``member`` (default: recognised by :func:`identify`): safe load
    (weights_only), strict key/shape check, hash, store. A file already registered for the member
    returns its entry unchanged (made active when ``activate``).

    A validation loss found in the file name (``..._l0.1374.model``, ``...VM-0.2504.PTH``) or in a trainer
    checkpoint (``val_loss``) is recorded unless ``val_loss`` is given."""
    return _import(path, member, val_loss, activate)[0]


def import_files(files: Iterable[Union[str, os.PathLike]], member: Optional[str] = None, *,
                 val_loss: Optional[float] = None, activate: bool = True) -> Iterator[ImportResult]:
    """Import each file (see :func:`import_checkpoint`), one :class:`ImportResult` per file; a file
    that fails gets its reason and the others still register."""
    for f in files:
        path = Path(f)
        try:
            entry, new = _import(path, member, val_loss, activate)
        except AmbiguousCheckpoint as exc:
            yield ImportResult(path, reason=str(exc), candidates=exc.candidates)
        except UserError as exc:
            yield ImportResult(path, reason=str(exc))
        except OSError as exc:  # e.g. disk full while storing: this file fails, the batch goes on
            yield ImportResult(path, reason=f"{path}: {exc.strerror or exc}")
        else:
            yield ImportResult(path, entry, new)


def _val_loss_of(path: Path, obj: Any) -> Optional[float]:
    if isinstance(obj, Mapping):
        v = obj.get("val_loss")
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            return float(v)
    m = re.search(r"(?:_l|VM-)(\d+\.\d+)", path.name)
    return float(m.group(1)) if m else None


def activate(member: str, model_id: str) -> Entry:
    """Make a registered model its member's active one."""
    e = get_entry(member, model_id)
    write_text(_member_dir(e.member) / ACTIVE, e.model_id + "\n")
    return get_entry(e.member, e.model_id)


def remove(member: str, model_id: str) -> Entry:
    """Delete a registered model. If it was active, the newest remaining one becomes active."""
    e = get_entry(member, model_id)
    was_active = e.active
    shutil.rmtree(e.path)
    if was_active:
        rest = list_entries(e.member)
        pointer = _member_dir(e.member) / ACTIVE
        if rest:
            write_text(pointer, max(rest, key=lambda x: x.date).model_id + "\n")
        elif pointer.exists():
            pointer.unlink()
    return e


def calibration(entry: Entry):
    """The entry's :class:`~dfdc_models.calibration.Calibration`, or None when it records none; a damaged
    one is an error naming the manifest (never silently ignored: it changes the verdicts)."""
    try:
        return C.read({"calibration": entry.calibration}, str(entry.path / MANIFEST))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def set_calibration(member: str, model_id: str, record: Optional[Mapping[str, Any]]) -> Entry:
    """Record (or, with None, drop) a calibration in a registered model's manifest (checked first;
    the weights and the id are unchanged)."""
    if record is not None:
        Calibration.from_dict(record)
    e = get_entry(member, model_id)
    e.calibration = None if record is None else dict(record)
    write_text(e.path / MANIFEST, json.dumps(e.manifest(), indent=2, default=str) + "\n")
    return get_entry(e.member, e.model_id)
