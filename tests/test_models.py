"""Architectures and member conventions: every seed member's network has exactly the layout of its
released checkpoint (key for key, shape for shape, parameter count), loads it strictly, and the
member wrapper turns clips into p(fake) with the seed's conventions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dfdc_models.registry import IMAGENET_MEAN, IMAGENET_STD, MemberModel, build, build_net, parameter_count
from dfdc_models.specs import MEMBERS, get_spec
from models_util import layout, random_state_dict



def _meta_net(arch: str) -> nn.Module:
    with torch.device("meta"):
        return build_net(arch)


@pytest.mark.parametrize("member", list(MEMBERS))
def test_layout_matches_released_checkpoint(member):
    spec = get_spec(member)
    ref = layout(member)
    net = _meta_net(spec.arch)
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in net.state_dict().items()]
    assert got == ref["state_dict"]  # same keys, same order, same shapes and dtypes
    assert parameter_count(net) == ref["parameter_count"]
    assert sum(b.numel() for b in net.buffers()) == ref["buffer_element_count"]


# Small clips per architecture (I3D needs 224x224 and at least 9 frames: its head pools 2x7x7).
CLIPS = {
    "i3d": (1, 9, 224),
    "r3d34": (2, 4, 32),
    "mc3": (2, 4, 32),
    "r2plus1d": (2, 4, 32),
    "seresnext50": (2, 3, 64),
}


@pytest.mark.parametrize("member", list(MEMBERS))
def test_released_layout_loads_strictly_and_predicts(member):
    spec = get_spec(member)
    model = build(member)
    result = model.net.load_state_dict(random_state_dict(member), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    b, t, res = CLIPS[spec.arch]
    clip = torch.randint(0, 256, (b, 3, t, res, res), dtype=torch.uint8)
    p = model.predict(clip)
    assert p.shape == (b,)
    assert p.dtype == torch.float32
    assert torch.all((p >= 0) & (p <= 1))
    assert not model.training


def test_general_arch_res_form_builds_r3d18():
    model = build("r3d18_112")
    assert model.spec.arch == "r3d18" and model.spec.res == 112
    p = model.predict(torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8))
    assert p.shape == (2,)


def _set_head_bias(model: MemberModel, bias: list[float]) -> None:
    head = model.net.logits.conv3d if model.spec.arch == "i3d" else model.net.fc
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(bias))


@pytest.mark.parametrize("member", ["mc3_112", "r2plus1d_112", "r3d34_224"])
def test_softmax_index_0_is_fake(member):
    model = build(member)
    _set_head_bias(model, [3.0, -1.0])  # class 0 (FAKE) favoured
    clip = torch.randint(0, 256, (1, 3, 4, 32, 32), dtype=torch.uint8)
    expected = torch.softmax(torch.tensor([3.0, -1.0]), 0)[0]
    assert model.predict(clip).item() == pytest.approx(expected.item(), abs=1e-5)
    with torch.no_grad():
        assert model.eval().fake_logit(clip).item() == pytest.approx(4.0, abs=1e-5)  # l0 - l1


def test_sigmoid_member_output_is_fake():
    model = build("seresnext50_2d")
    _set_head_bias(model, [2.0])
    clip = torch.randint(0, 256, (1, 3, 2, 64, 64), dtype=torch.uint8)
    assert model.predict(clip).item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-5)


def test_i3d_averages_logits_over_time_inside_forward():
    model = build("i3d_224").eval()
    net = model.net
    # Shrink the spatial pooling window so a small frame reaches the head; the time arithmetic is the
    # network's own: T' = ceil(T/8) - 1 steps after the 2-frame average pool.
    net.avg_pool = nn.AvgPool3d(kernel_size=(2, 2, 2), stride=(1, 1, 1))
    x = torch.randn(1, 3, 17, 64, 64)
    with torch.no_grad():
        steps = net.time_logits(x)
        out = net(x)
    assert steps.shape == (1, 2, math.ceil(17 / 8) - 1) == (1, 2, 2)
    torch.testing.assert_close(out, steps.mean(dim=2))


def test_i3d_rejects_non_224_input():
    net = build_net("i3d").eval()
    with pytest.raises(ValueError, match="224"):
        with torch.no_grad():
            net(torch.randn(1, 3, 9, 64, 64))


def test_i3d_state_dict_starts_with_logits_after_replace_logits():
    from dfdc_models.i3d import InceptionI3d

    with torch.device("meta"):
        net = InceptionI3d(num_classes=157)
        net.replace_logits(2)
    keys = list(net.state_dict())
    assert keys[:2] == ["logits.conv3d.weight", "logits.conv3d.bias"]
    assert net.Conv3d_1a_7x7.bn.eps == 1e-3 and net.Conv3d_1a_7x7.bn.momentum == 0.01


def test_type_a_shortcut_pads_zeros_in_input_dtype():
    from dfdc_models.resnet3d import ZeroPadShortcut

    x = torch.randn(2, 64, 4, 6, 6, dtype=torch.float64)
    out = ZeroPadShortcut(128, stride=2)(x)
    assert out.dtype == torch.float64 and out.device == x.device
    assert out.shape == (2, 128, 2, 3, 3)
    torch.testing.assert_close(out[:, :64], x[:, :, ::2, ::2, ::2])
    assert torch.count_nonzero(out[:, 64:]) == 0


def test_r3d34_runs_in_float64_and_has_no_downsample_params():
    net = build_net("r3d34").double().eval()
    assert not any("downsample" in k for k in net.state_dict())
    with torch.no_grad():
        out = net(torch.randn(1, 3, 4, 32, 32, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (1, 2)


def test_input_scaling_per_member():
    clip = torch.zeros(1, 3, 1, 2, 2)
    clip[:, 0], clip[:, 1], clip[:, 2] = 255.0, 127.5, 0.0  # R, G, B
    i3d = MemberModel(get_spec("i3d_224"), nn.Identity())
    assert i3d.preprocess(clip)[0, :, 0, 0, 0].tolist() == pytest.approx([1.0, 0.0, -1.0])
    raw = MemberModel(get_spec("r3d34_224"), nn.Identity())
    assert raw.preprocess(clip)[0, :, 0, 0, 0].tolist() == pytest.approx([255.0, 127.5, 0.0])
    rgb = [1.0, 0.5, 0.0]
    imnet = MemberModel(get_spec("mc3_112"), nn.Identity())
    expected = [(rgb[i] - IMAGENET_MEAN[i]) / IMAGENET_STD[i] for i in range(3)]
    assert imnet.preprocess(clip)[0, :, 0, 0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    # The 2D member reads BGR, and mean[i]/std[i] hit channel i of the BGR array.
    bgr = rgb[::-1]
    srx = MemberModel(get_spec("seresnext50_2d"), nn.Identity())
    expected = [(bgr[i] - IMAGENET_MEAN[i]) / IMAGENET_STD[i] for i in range(3)]
    assert srx.preprocess(clip)[0, :, 0, 0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    # uint8 in, float out
    assert imnet.preprocess(clip.to(torch.uint8)).dtype == torch.float32


class _LeftColumnLogits(nn.Module):
    """Stub 3D head: logits [v, 0] where v = the clip's mean over its left-most column."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        v = x[:, :, :, :, 0].mean(dim=(1, 2, 3))
        return torch.stack([v, torch.zeros_like(v)], dim=1) + self.p


def test_3d_predict_averages_clip_and_its_horizontal_flip():
    model = MemberModel(get_spec("r3d34_224"), _LeftColumnLogits())  # raw scaling: values pass through
    clip = torch.zeros(1, 3, 2, 4, 4)
    clip[..., 0] = 2.0  # left column
    clip[..., -1] = -1.0  # right column
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    assert model.predict(clip).item() == pytest.approx(expected.item(), abs=1e-6)


class _TopLeftLogit(nn.Module):
    """Stub 2D network: logit = channel 0 at pixel (0, 0) of each frame."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, 0, 0, 0] + self.p


def test_2d_predict_flips_even_frames_and_takes_lower_median():
    model = MemberModel(get_spec("seresnext50_2d"), _TopLeftLogit())
    t, w = 4, 3
    clip = torch.zeros(1, 3, t, 2, w)
    left = torch.tensor([10.0, 20.0, 30.0, 40.0])
    right = torch.tensor([200.0, 150.0, 100.0, 50.0])
    # Channel 2 of the RGB clip is B, which becomes channel 0 of the network's BGR input.
    clip[0, 2, :, 0, 0] = left
    clip[0, 2, :, 0, w - 1] = right
    # Even frames are flipped, so their top-left pixel is the right-hand value.
    seen = torch.tensor([right[0], left[1], right[2], left[3]])
    probs = torch.sigmoid((seen / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    lower_median = probs.sort().values[(t - 1) // 2]
    assert model.predict(clip).item() == pytest.approx(lower_median.item(), abs=1e-6)


def test_2d_fake_logit_per_frame_and_per_image():
    model = MemberModel(get_spec("seresnext50_2d"), _TopLeftLogit())
    assert model.fake_logit(torch.zeros(2, 3, 5, 4, 4)).shape == (2, 5)
    assert model.fake_logit(torch.zeros(2, 3, 4, 4)).shape == (2,)


def test_fake_logit_trains_like_the_seeds_cross_entropy():
    """BCE-with-logits on l0 - l1 (target 1 = FAKE) is the seed's 2-class CE with index 0 = FAKE."""
    logits = torch.randn(6, 2)
    fake = torch.tensor([1, 0, 1, 1, 0, 0])
    ce = nn.functional.cross_entropy(logits, 1 - fake)  # class index 0 = FAKE
    bce = nn.functional.binary_cross_entropy_with_logits(logits[:, 0] - logits[:, 1], fake.float())
    torch.testing.assert_close(ce, bce)


def test_seresnext_matches_timm_network_with_cadene_stem_pool():
    """Our Cadene-layout SE-ResNeXt50 computes the same features as timm's seresnext50_32x4d given the
    same weights once timm's stem pool is Cadene's (MaxPool2d(3, 2, ceil_mode=True))."""
    timm = pytest.importorskip("timm")
    from dfdc_models.pretrained import pretrained_state_dict

    torch.manual_seed(0)
    ref = timm.create_model("seresnext50_32x4d", pretrained=False).eval()
    ref.maxpool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    ours = build_net("seresnext50").eval()
    import tempfile, os

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "timm.pth")
        torch.save(ref.state_dict(), path)
        ours.load_state_dict(pretrained_state_dict(ours, "seresnext50", path), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.backbone(x), ref.forward_features(x).mean(dim=(2, 3)))
