"""What each ensemble member is: the table of the seed's eight members (names, released file names,
labels, reference layouts) that `train`, `scan` and `eval` read, and the general ``<arch>_<res>`` form.

A member's conventions (input scaling, which softmax index is FAKE, sigmoid vs softmax, test-time
flip, clip length) are its architecture's (:mod:`dfdc_models.archs`), copied into its :class:`MemberSpec`
and applied inside the model wrapper (:mod:`dfdc_models.member`), so callers only ever see "clip in,
p(fake) out".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

# (the architecture records and their resolutions, re-exported for the member table's readers)
from .archs import FRAME_ARCHS, FRAME_RESOLUTIONS, IMAGENET_ARCHS, RESOLUTIONS, arch_names, get_arch  # noqa: F401

ARCHS: tuple[str, ...] = arch_names()  # names as `train --arch` spells them


@dataclass(frozen=True)
class MemberSpec:
    name: str
    arch: str
    res: int  # spatial input size (square)
    clip_frames: int  # T of a training clip; at inference 3D members see whole tubes
    scaling: str  # i3d / inception: x/255*2-1 | raw: 0..255 | imagenet: RGB mean/std | imagenet_bgr: BGR mean/std
    output: str  # softmax2_fake0: 2-class softmax, index 0 = FAKE | sigmoid: one logit = FAKE
    flip_tta: bool  # 3D: mean of p(fake) over the clip and its horizontal flip
    kind: str  # "3d" | "2d"
    reference: str = ""  # the released checkpoint layout this member matches (tests/data/layouts/<reference>.json)
    description: str = ""
    released_file: str = ""  # the seed's released checkpoint file name ("" for non-seed members)
    label: str = ""  # short column label for tables (e.g. I3D-CM)

    @property
    def short(self) -> str:
        return self.label or self.name

    @property
    def is_3d(self) -> bool:
        return self.kind == "3d"


def _member(name: str, arch: str, res: int, reference: str, description: str, released_file: str = "",
            label: str = "") -> MemberSpec:
    return MemberSpec(name=name, arch=arch, res=res, reference=reference, description=description,
                      released_file=released_file, label=label, **_conventions(arch))


def _conventions(arch: str) -> dict:
    a = get_arch(arch)
    return dict(clip_frames=a.clip_frames, scaling=a.scaling, output=a.output, flip_tta=a.flip_tta, kind=a.kind)


# The seed's eight ensemble members (docs/method.md §2), in the order of the seed's notebook, with the
# file names of the seed's release: three pairs share one layout (i3d, mc3, r2plus1d), so `deepfake
# models import` tells those apart by these names.
MEMBERS: dict[str, MemberSpec] = {
    m.name: m
    for m in (
        _member("i3d_224", "i3d", 224, "i3d_224", "I3D (Inception-v1 inflated), 64x224x224",
                "j3d_e1_l0.1374.model", "I3D"),
        _member("i3d_cutmix_224", "i3d", 224, "i3d_cutmix_224", "I3D trained with 3D CutMix",
                "i3dcutmix_e11_l0.1612.model", "I3D-CM"),
        _member("r3d34_224", "r3d34", 224, "r3d34_224", "3D ResNet-34, type-A shortcuts, raw 0..255 input",
                "res34_1cy_minaug_nonorm_e4_l0.1794.model", "R3D34"),
        _member("mc3_112", "mc3", 112, "mc3_112", "MC3-18 (torchvision), 112x112",
                "mc3_18_112_1cy_lilaug_nonorm_e9_l0.1905.model", "MC3"),
        _member("mc3_224", "mc3", 224, "mc3_224", "MC3-18 fine-tuned from mc3_112 at 224x224",
                "mc3_18_112t224_1cy_lilaug_nonorm_e7_l0.1901.model", "MC3-224"),
        _member("r2plus1d_112", "r2plus1d", 112, "r2plus1d_112", "R(2+1)D-18 (torchvision), 112x112",
                "r2p1_18_8_112tr_112te_e12_l0.1741.model", "R21D"),
        _member("r2plus1d_cutmix_112", "r2plus1d", 112, "r2plus1d_cutmix_112", "R(2+1)D-18 with 3D CutMix",
                "r2plus1dcutmix_112_e10_l0.1608.model", "R21D-CM"),
        _member("seresnext50_2d", "seresnext50", 256, "seresnext50_2d",
                "SE-ResNeXt50 32x4d per frame, median of 32 frames", "SRXT50_094_VM-0.2504.PTH", "SE2D"),
    )
}

# What follows a run's name in a released file name: the epoch and validation loss (``_e9_l0.1905.model``)
# or the 2D member's ``_VM-0.2504.PTH``; other epochs of the same run keep the run's name.
_RELEASE_SUFFIX = re.compile(r"(_e\d+_l\d+(\.\d+)?\.model|_VM-\d+(\.\d+)?\.pth)$", re.IGNORECASE)


def release_run(spec: MemberSpec) -> str:
    """The run part of a member's released file name (``mc3_18_112t224_1cy_lilaug_nonorm``)."""
    return _RELEASE_SUFFIX.sub("", spec.released_file)


def named_as_released(spec: MemberSpec, file_name: str) -> bool:
    """Whether ``file_name`` is the member's released file, or another epoch of the same run
    (its run name followed by ``_e<epoch>_l<loss>.model``)."""
    if not spec.released_file:
        return False
    name = file_name.lower()
    if name == spec.released_file.lower():
        return True
    run = release_run(spec).lower()
    return bool(_RELEASE_SUFFIX.search(name)) and _RELEASE_SUFFIX.sub("", name) == run


def get_spec(name: str) -> MemberSpec:
    """A seed member by name, or a general ``<arch>_<res>`` form (e.g. ``mc3_112``, ``r3d18_224``)."""
    if name in MEMBERS:
        return MEMBERS[name]
    arch, _, res = name.rpartition("_")
    if arch in ARCHS and res.isdigit():
        return spec_for(arch, int(res))
    known = ", ".join(list(MEMBERS) + [f"{a}_<res>" for a in ARCHS])
    raise KeyError(f"unknown member {name!r}; known: {known}")


def spec_for(arch: str, res: int, name: str | None = None) -> MemberSpec:
    """The general ``--arch A --res R`` form used by `deepfake train`."""
    if arch not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    record = get_arch(arch)
    if res not in record.resolutions:
        why = f" ({record.resolution_note})" if record.resolution_note else ""
        raise KeyError(f"unsupported resolution {res} for {arch}{why}; choose from "
                       f"{', '.join(map(str, record.resolutions))}")
    seed = next((m for m in MEMBERS.values() if m.arch == arch and m.res == res), None)
    if seed is not None:
        return replace(seed, name=name or seed.name) if name else seed
    return _member(name or f"{arch}_{res}", arch, res, "", f"{arch} at {res}x{res}")
