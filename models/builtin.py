"""The built-in model: a frame model trained by this project (see the README's "Built-in model" card),
shipped inside the package in half precision so that `deepfake scan` gives verdicts right after
``pip install``.

It is used only when NO model is registered: any registered or imported model (the seed's members
first) takes precedence (:func:`dfdc_cli.scan.members.available_members`). Its files live in
``models/builtin/``: ``<member>.pt`` (a plain fp16 state_dict of the member's network, loaded
strictly) and ``builtin.json`` (which member, the validation figures, where the card is, and the
model's calibration and UNSURE band when one was fitted: :mod:`dfdc_models.calibration`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from . import calibration as C
from .atomic import write_text
from .checkpoint import extract_state_dict, read_checkpoint, save_checkpoint, sha256_file
from .errors import UserError
from .registry import build
from .specs import get_spec

CARD = "README.md#built-in-model"  # where `scan` points for the model card
META = "builtin.json"


def folder() -> Path:
    return Path(__file__).resolve().parent / "builtin"


def info(where: Optional[Path] = None) -> Optional[dict]:
    """The built-in model's description (``builtin.json``), or None when the package ships none."""
    f = (where or folder()) / META
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{f}: the built-in model's description is unreadable ({exc})") from None
    if not isinstance(meta, dict) or not meta.get("member") or not meta.get("weights"):
        raise UserError(f"{f}: the built-in model's description lacks 'member' or 'weights'")
    if not ((where or folder()) / meta["weights"]).is_file():
        return None
    return meta


def member(where: Optional[Path] = None) -> Optional[str]:
    """The member name of the built-in model, or None when there is none."""
    meta = info(where)
    return str(meta["member"]) if meta else None


def load(device: Optional[Union[str, torch.device]] = None, where: Optional[Path] = None):
    """The built-in model as a :class:`dfdc_models.registry.MemberModel` (float32, eval mode)."""
    meta = info(where)
    if meta is None:
        raise UserError("this installation ships no built-in model")
    path = (where or folder()) / meta["weights"]
    model = build(str(meta["member"]), weights=path).float()
    model.source = f"built-in:{path.name}"
    model.model_id = "builtin-" + sha256_file(path)[:8]
    model.calibration = calibration(where)
    if device is not None:
        model = model.to(device)
    return model.eval()


def model_id(where: Optional[Path] = None) -> Optional[str]:
    """The built-in model's id (``builtin-`` and its weights' hash), or None when there is none."""
    meta = info(where)
    return None if meta is None else "builtin-" + sha256_file((where or folder()) / meta["weights"])[:8]


def calibration(where: Optional[Path] = None):
    """The built-in model's :class:`~dfdc_models.calibration.Calibration`, or None when it records none;
    a damaged one is an error naming ``builtin.json``."""
    try:
        return C.read(info(where), str((where or folder()) / META))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def set_calibration(record: dict, where: Optional[Path] = None) -> Path:
    """Record a calibration (:meth:`Calibration.to_dict`, checked) in ``builtin.json``; the rest of
    the description is kept as it is."""
    C.Calibration.from_dict(record)
    meta = info(where)
    if meta is None:
        raise UserError(f"{where or folder()}: no built-in model to calibrate")
    path = (where or folder()) / META
    write_text(path, json.dumps({**meta, "calibration": record}, indent=1) + "\n")
    return path


def export(weights: Union[str, Path], member_name: str, out_dir: Union[str, Path], extra: Optional[dict] = None) -> Path:
    """Write ``weights`` (a trainer checkpoint or state_dict of ``member_name``) as the built-in model:
    ``out_dir/<member>.pt`` in half precision (after a strict load check) and ``builtin.json``."""
    from .registry import build_net, load_strict, normalize_keys

    spec = get_spec(member_name)
    sd = normalize_keys(extract_state_dict(read_checkpoint(weights), source=str(weights)))
    load_strict(build_net(spec.arch), sd, str(weights), f"member {spec.name} ({spec.arch})")
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{spec.name}.pt"
    save_checkpoint(half, target)
    meta = {"member": spec.name, "weights": target.name, "arch": spec.arch, "res": spec.res,
            "card": CARD, **dict(extra or {})}
    if meta.get("calibration") is not None:
        from .calibration import Calibration

        Calibration.from_dict(meta["calibration"])
    write_text(out / META, json.dumps(meta, indent=1) + "\n")
    return target
