"""The weights store: ``paths.models_dir()/<member>/<model_id>/`` holds ``weights.pt`` (a plain state_dict in
the seed's layout) and ``manifest.json``; ``paths.models_dir()/<member>/ACTIVE`` names the model a member
uses. Every entry was verified to load strictly before it was written, and is written atomically.

API (what ``train``, ``scan``, ``eval`` and ``deepfake models`` use):

* :func:`register` - store a state_dict (or a checkpoint file) for a member, make it active;
* :func:`import_checkpoint` - the same for a user's file, with the file's hash as provenance;
* :func:`list_entries`, :func:`members`, :func:`active`, :func:`get_entry`;
* :func:`load` - a ready :class:`~models.registry.MemberModel` (eval mode) of a member's active model;
* :func:`activate`, :func:`remove`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from dfdc_cli import paths
from dfdc_cli.atomic import atomic_dir, write_text
from dfdc_cli.errors import UserError

from .checkpoint import extract_state_dict, load_strict, read_checkpoint, sha256_file
from .specs import MEMBERS, MemberSpec, get_spec

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


def list_entries(member: Optional[str] = None) -> list[Entry]:
    """Registered models (of one member, or all), seed members first, oldest first within a member."""
    root = paths.models_dir()
    if member is not None:
        names = [_spec(member).name]
    else:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if root.is_dir() else []
    out: list[Entry] = []
    for name in names:
        folder = root / name
        if not folder.is_dir():
            continue
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
    if device is not None:
        model = model.to(device)
    return model.eval()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def register(
    member: Union[str, MemberSpec],
    weights: Union[Mapping[str, torch.Tensor], str, os.PathLike],
    *,
    source: str = "",
    val_loss: Optional[float] = None,
    extra: Optional[Mapping[str, Any]] = None,
    activate: bool = True,
    _loaded: Any = None,
) -> Entry:
    """Verify that ``weights`` (a state_dict, a trainer checkpoint dict, or a checkpoint file) loads
    strictly into ``member``'s network, store it and (by default) make it the member's active model.

    Registering identical weights twice gives the same entry (the id is a content hash)."""
    from .registry import build_net, normalize_keys, parameter_count

    spec = _spec(member)
    source_sha = ""
    copy_from: Optional[Path] = None
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        obj = read_checkpoint(path) if _loaded is None else _loaded
        sd = normalize_keys(extract_state_dict(obj, source=str(path)))
        source_sha = sha256_file(path)
        source = source or f"file:{path.resolve()}"
        # The seed's files are already plain state_dicts: keep their bytes (and hash) as they are.
        if isinstance(obj, Mapping) and list(obj.keys()) == list(sd.keys()):
            copy_from = path
        what = str(path)
    else:
        sd = normalize_keys(extract_state_dict(weights, source="state_dict"))
        what = "state_dict"
    net = build_net(spec.arch)
    load_strict(net, sd, what, f"member {spec.name} ({spec.arch})")
    sd = {k: v.detach().cpu().contiguous() for k, v in sd.items()}

    root = _member_dir(spec.name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".staging-{os.getpid()}-{id(sd)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        staged = tmp / WEIGHTS
        if copy_from is not None:
            shutil.copyfile(copy_from, staged)
        else:
            torch.save(sd, staged)
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


def import_checkpoint(path: Union[str, os.PathLike], member: str, *, val_loss: Optional[float] = None,
                      activate: bool = True) -> Entry:
    """Import a checkpoint file (the seed's ``.model``/``.PTH`` files, or one written by ``deepfake
    train``) as a model of ``member``: safe load (weights_only), strict key/shape check, hash, store.

    A validation loss found in the file name (``..._l0.1374.model``, ``...VM-0.2504.PTH``) or in a trainer
    checkpoint (``val_loss``) is recorded unless ``val_loss`` is given."""
    path = Path(path).expanduser()
    spec = _spec(member)
    obj = read_checkpoint(path)
    if val_loss is None:
        val_loss = _val_loss_of(path, obj)
    extra: dict[str, Any] = {"file_name": path.name}
    if isinstance(obj, Mapping):
        for k in ("epoch", "arch", "member", "recipe", "run"):
            if k in obj and isinstance(obj[k], (str, int, float)):
                extra[k] = obj[k]
    return register(spec, path, source=f"import:{path.resolve()}", val_loss=val_loss, extra=extra,
                    activate=activate, _loaded=obj)


def _val_loss_of(path: Path, obj: Any) -> Optional[float]:
    import re

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
