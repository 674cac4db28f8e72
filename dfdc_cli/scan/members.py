"""The ensemble's members as `deepfake scan` uses them: which ones, loading their models, and the
shape of their input (docs/method.md §5).

A member is a registered model (:mod:`dfdc_models.store`), or the built-in one shipped with the package
when none is registered. Each one scores a uint8 batch of face tubes: 3D members take the whole
tube, centre-cropped to 224 (resized for the other resolutions); 2D members its first 32 crops.
What a member does with that batch (input scaling, flip TTA, the per-frame median) is its model's
own ``predict`` (:class:`dfdc_models.registry.MemberModel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import FRAMES_2D  # the 2D member sees the first 32 frames of its crops
from dfdc_models import builtin, store
from dfdc_models.archs import get_arch
from dfdc_models.member import resize_frames
from dfdc_models.specs import get_spec

CROP_3D = 224  # 3D members see the centre 224x224 of the 256x256 tube (resized for the 112 members)

NO_MODEL_HELP = (
    "no trained model is registered. Get one with `deepfake train ...` (see `deepfake train --help`) "
    "or register a checkpoint with `deepfake models import FILE --as MEMBER`; "
    "`deepfake models list` shows what is registered."
)


# ----------------------------------------------------------------------------------------------
# Which members


def registered_members() -> list[str]:
    """Members with an active (registered) model, in the seed's order (then by name)."""
    return [m for m in store.members() if store.active(m) is not None]


def available_members() -> list[str]:
    """The members scan uses by default: the registered ones; when none is registered, the built-in
    model shipped with the package (if any). A registered model always takes precedence."""
    # A damaged registry must not make its models vanish and the built-in one judge instead.
    store.check_intact()
    names = registered_members()
    if names:
        return names
    b = builtin.member()
    return [b] if b else []


def resolve_members(names: Optional[Sequence[str]]) -> list[str]:
    """The members to use: ``names`` when given (each must be a known member), else the available
    ones; a UserError saying how to get a model when there is none."""
    if names is None:
        found = available_members()
        if not found:
            raise UserError(NO_MODEL_HELP)
        return found

    for n in names:
        try:
            get_spec(n)
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
    store.check_intact([get_spec(n).name for n in names])
    return list(names)


# ----------------------------------------------------------------------------------------------
# Input shaping (torch; CPU or GPU)


def centre_crop(x, size: int):
    """Centre ``size`` x ``size`` window of the last two dims (no-op when already that small)."""
    h, w = x.shape[-2], x.shape[-1]
    if h <= size and w <= size:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def prepare_3d(tubes, res: int):
    """uint8 tubes (B, T, 256, 256, 3) -> clips (B, 3, T, res, res) for a 3D member.

    Centre crop 224 (the seed's inference crop); for other resolutions the crop is resized by
    :func:`dfdc_models.member.resize_frames` (the resize training validates with) and handed over in
    float32, not rounded back to uint8: the seed resized the float crop and normalised it as it
    was. Otherwise the clip stays uint8. A member of resolution >= 256 takes the whole tube.
    """
    x = tubes.permute(0, 4, 1, 2, 3)  # B, 3, T, H, W
    if res < tubes.shape[2]:
        x = centre_crop(x, CROP_3D)
    if x.shape[-2:] == (res, res):
        return x.contiguous()
    return resize_frames(x.float(), res).contiguous()


def prepare_2d(frames, res: int = 256, mode: str = "bicubic"):
    """uint8 2D crops (B, N, 256, 256, 3) -> uint8 (B, 3, N, res, res) (the first 32 frames), resized
    with ``mode`` (the architecture record's ``interpolation``, as in training)."""
    x = frames[:, :FRAMES_2D].permute(0, 4, 1, 2, 3)
    if x.shape[-1] != res or x.shape[-2] != res:
        b, c, t, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).float()
        y = F.interpolate(y, size=(res, res), mode=mode, align_corners=False)
        x = y.round_().clamp_(0, 255).to(torch.uint8).reshape(b, t, c, res, res).permute(0, 2, 1, 3, 4)
    return x.contiguous()


# ----------------------------------------------------------------------------------------------
# A loaded member


@dataclass
class Member:
    """A loaded ensemble member as scan uses it: a name, its kind and resolution, and a scoring
    function taking a uint8 batch (B, 3, T, res, res) on the device and returning p(fake) (B,)."""

    name: str
    kind: str  # "3d" | "2d"
    res: int
    predict: Callable
    model_id: str = ""  # registry id / sha256 prefix, for the machine output
    interpolation: str = "bicubic"  # 2D: the resize of the crops to res (the architecture record's)
    module: object = None  # the torch module (device moves, channels_last)
    calibration: object = None  # dfdc_models.calibration.Calibration recorded with the model, or None
    # 2D members: batch -> (p (B,), per-frame p (B, T)) in one pass (None: per-frame scores unknown)
    predict_frames: Optional[Callable] = None

    def pixels(self, tube):
        """The part of a :class:`~dfdc_cli.scan.inputs.LoadedTube` this member scores (None: it has none)."""
        return tube.frames if self.kind == "3d" else tube.frames2d

    def score(self, batch):
        """p(fake) (numpy, one per tube) of a uint8 batch as stacked from the tubes, on the device:
        (B, T, 256, 256, 3) for 3D members, (B, N, 256, 256, 3) for 2D ones."""
        return self.score_frames(batch)[0]

    def score_frames(self, batch):
        """(p(fake) (B,), per-frame p(fake) (B, N) or None) of a batch as :meth:`score` takes it:
        a frame model's frame scores come from the same pass as its p(fake)."""
        x = prepare_3d(batch, self.res) if self.kind == "3d" else prepare_2d(batch, self.res, self.interpolation)
        if self.kind == "3d" and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        frames = None
        if self.kind == "2d" and self.predict_frames is not None:
            p, frames = self.predict_frames(x)
            frames = torch.as_tensor(frames).float().reshape(x.shape[0], -1).cpu().numpy()
        else:
            p = self.predict(x)
        p = torch.as_tensor(p).float().reshape(-1).cpu().numpy()
        if p.shape[0] != x.shape[0]:
            raise RuntimeError(f"{self.name}: predict returned {p.shape[0]} scores for {x.shape[0]} clips")
        return p, frames


def is_builtin(m: Member) -> bool:
    return str(m.model_id).startswith("builtin-")


def load_member(name: str, device) -> Member:
    """Load a registered member's active model once, on ``device``, in eval mode."""
    try:
        spec = get_spec(name)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    store.check_intact([spec.name])
    if store.active(spec.name) is None:
        from dfdc_models import builtin

        if builtin.member() == spec.name:
            return member_from_model(builtin.load(device=device))
        raise UserError(f"member {spec.name!r} has no registered model. " + NO_MODEL_HELP)
    model = store.load(spec.name, device=device)
    if torch.device(device).type == "cuda" and spec.kind == "3d":
        try:  # cuDNN's fast 3D convolutions in fp16 want channels-last
            model = model.to(memory_format=torch.channels_last_3d)
        except RuntimeError:
            pass
    return member_from_model(model)


def member_from_model(model) -> Member:
    """Wrap a :class:`dfdc_models.registry.MemberModel` (eval mode) for the scanner."""
    model.eval()
    return Member(name=model.spec.name, kind=model.spec.kind, res=model.spec.res, predict=model.predict,
                  model_id=getattr(model, "model_id", "") or "", module=model,
                  calibration=getattr(model, "calibration", None),
                  interpolation=get_arch(model.spec.arch).interpolation,
                  predict_frames=model.predict_frames if model.spec.kind == "2d" else None)



def load_members(members: Optional[Sequence], device: str) -> list[Member]:
    """``members`` (names, ready :class:`Member` objects, or None for the available ones) loaded on
    ``device``; each name once."""
    if members is None:
        members = available_members()
        if not members:
            raise UserError(NO_MODEL_HELP)
    loaded = [m if isinstance(m, Member) else load_member(str(m), device) for m in members]
    if not loaded:
        raise UserError(NO_MODEL_HELP)
    names = [m.name for m in loaded]
    if len(set(names)) != len(names):
        raise UserError("a member is listed twice")
    return loaded
