"""Pretrained initialisation from local files in the public formats (synthetic files with the right keys;
nothing is downloaded): the backbone is loaded, the foreign classification head is dropped."""

from __future__ import annotations

import pytest
import torch

from dfdc_cli.errors import UserError
from dfdc_models.registry import build
from models_util import random_state_dict



def _with_head(sd: dict, head: dict[str, tuple], drop_bn_counters: bool = False) -> dict:
    out = {k: v for k, v in sd.items() if not k.startswith(tuple(k2.rsplit(".", 1)[0] + "." for k2 in head))}
    if drop_bn_counters:  # files saved by PyTorch < 0.4.1 have no num_batches_tracked
        out = {k: v for k, v in out.items() if not k.endswith("num_batches_tracked")}
    for k, shape in head.items():
        out[k] = torch.randn(shape)
    return out


def _assert_backbone_loaded(model, sd: dict, head_prefix: str, key_map=lambda k: k) -> None:
    own = model.net.state_dict()
    for k, v in sd.items():
        mk = key_map(k)
        if mk.startswith(head_prefix) or mk not in own:
            continue
        torch.testing.assert_close(own[mk], v, msg=f"{mk} not loaded")


def test_torchvision_kinetics_weights_drop_the_400_class_fc(tmp_path):
    sd = _with_head(random_state_dict("mc3_112"), {"fc.weight": (400, 512), "fc.bias": (400,)})
    path = tmp_path / "mc3_18-a90a0ba3.pth"
    torch.save(sd, path)
    model = build("mc3_112", init=path)
    _assert_backbone_loaded(model, sd, "fc.")
    assert model.net.fc.weight.shape == (2, 512)
    assert model.source == "init:mc3_18-a90a0ba3.pth"


@pytest.mark.parametrize("classes", [400, 157])  # rgb_imagenet.pt (Kinetics) / rgb_charades.pt
def test_i3d_public_weights(tmp_path, classes):
    sd = _with_head(random_state_dict("i3d_224"),
                    {"logits.conv3d.weight": (classes, 1024, 1, 1, 1), "logits.conv3d.bias": (classes,)},
                    drop_bn_counters=True)
    path = tmp_path / "rgb.pt"
    torch.save(sd, path)
    model = build("i3d_224", init=path)
    _assert_backbone_loaded(model, sd, "logits.")
    assert model.net.logits.conv3d.weight.shape == (2, 1024, 1, 1, 1)
    assert list(model.net.state_dict())[0] == "logits.conv3d.weight"


def test_kenshohara_resnet34_checkpoint(tmp_path):
    sd = _with_head(random_state_dict("r3d34_224"), {"fc.weight": (400, 512), "fc.bias": (400,)},
                    drop_bn_counters=True)
    path = tmp_path / "resnet-34-kinetics.pth"
    torch.save({"arch": "resnet-34", "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    model = build("r3d34_224", init=path)
    _assert_backbone_loaded(model, sd, "fc.")
    assert model.net.fc.weight.shape == (2, 512)


def test_timm_seresnext50_imagenet_weights(tmp_path):
    timm = pytest.importorskip("timm")
    ref = timm.create_model("seresnext50_32x4d", pretrained=False)
    sd = ref.state_dict()
    path = tmp_path / "seresnext50_32x4d.pth"
    torch.save(sd, path)
    model = build("seresnext50_2d", init=path)
    own = model.net.state_dict()
    torch.testing.assert_close(own["backbone.layer0.conv1.weight"], sd["conv1.weight"])
    torch.testing.assert_close(own["backbone.layer3.2.se_module.fc2.bias"], sd["layer3.2.se.fc2.bias"])
    torch.testing.assert_close(own["backbone.layer4.0.downsample.1.running_var"],
                               sd["layer4.0.downsample.1.running_var"])
    assert model.net.fc.weight.shape == (1, 2048)


def test_timm_safetensors_file(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    sd = {k.removeprefix("backbone."): v for k, v in random_state_dict("seresnext50_2d").items()
          if k.startswith("backbone.")}
    sd = {("conv1." + k[len("layer0.conv1."):] if k.startswith("layer0.conv1.") else
           "bn1." + k[len("layer0.bn1."):] if k.startswith("layer0.bn1.") else
           k.replace(".se_module.", ".se.")): v for k, v in sd.items()}
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    model = build("seresnext50_2d", init=path)
    torch.testing.assert_close(model.net.state_dict()["backbone.layer0.bn1.weight"], sd["bn1.weight"])


def test_cadene_seresnext50_imagenet_weights(tmp_path):
    ours = random_state_dict("seresnext50_2d")
    sd = {k.removeprefix("backbone."): v for k, v in ours.items() if k.startswith("backbone.")}
    sd["last_linear.weight"], sd["last_linear.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    path = tmp_path / "se_resnext50_32x4d-a260b3a4.pth"
    torch.save(sd, path)
    model = build("seresnext50_2d", init=path)
    _assert_backbone_loaded(model, sd, "fc.", key_map=lambda k: "backbone." + k)


def test_same_architecture_checkpoint_keeps_its_head(tmp_path):
    """mc3_224 is fine-tuned from mc3_112: the whole network, 2-class head included, carries over."""
    sd = random_state_dict("mc3_112")
    path = tmp_path / "mc3_112.pt"
    torch.save({"state_dict": sd, "epoch": 9}, path)
    model = build("mc3_224", init=path)
    torch.testing.assert_close(model.net.fc.weight, sd["fc.weight"])


def test_missing_and_wrong_init_files_fail_clearly(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build("mc3_112", init=tmp_path / "absent.pth")
    path = tmp_path / "r2p1.pth"
    torch.save(random_state_dict("r2plus1d_112"), path)
    with pytest.raises(UserError, match="not usable as mc3 pretrained weights.*stem.0.weight"):
        build("mc3_112", init=path)
