"""The weights store and `deepfake models`: importing checkpoints built to the seed's layouts, clear
rejections of files that are not matching state_dicts, listing, activating, removing."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from typer.testing import CliRunner

from dfdc_cli import paths
from dfdc_cli.errors import UserError
from dfdc_models import store
from dfdc_models.specs import MEMBERS
from models_util import random_state_dict, save_layout_checkpoint



@pytest.fixture
def mc3_file(tmp_path):
    # Named like the seed's release: the validation loss is read from the name.
    return save_layout_checkpoint("mc3_112", tmp_path / "mc3_18_112_1cy_lilaug_nonorm_e9_l0.1905.model")


def test_import_seed_layout_file_registers_and_loads(mc3_file):
    e = store.import_checkpoint(mc3_file, "mc3_112")
    assert e.member == "mc3_112" and e.arch == "mc3" and e.res == 112 and e.active
    assert e.val_loss == pytest.approx(0.1905)
    assert e.parameter_count == 11491266
    # A plain state_dict is stored byte for byte: its hash is the released file's hash.
    assert e.sha256 == e.source_sha256
    assert e.path.parent == paths.models_dir() / "mc3_112"
    manifest = json.loads((e.path / "manifest.json").read_text())
    for key in ("member", "arch", "res", "source", "sha256", "val_loss", "date", "parameter_count"):
        assert key in manifest
    assert store.active("mc3_112").model_id == e.model_id
    assert store.members() == ["mc3_112"]
    assert store.active("mc3_224") is None

    model = store.load("mc3_112")
    assert not model.training and model.model_id == e.model_id
    ref = random_state_dict("mc3_112")
    torch.testing.assert_close(model.net.state_dict()["stem.0.weight"], ref["stem.0.weight"])
    p = model.predict(torch.randint(0, 256, (1, 3, 4, 32, 32), dtype=torch.uint8))
    assert p.shape == (1,)


def test_import_is_idempotent_and_same_weights_can_serve_paired_member(mc3_file):
    a = store.import_checkpoint(mc3_file, "mc3_112")
    b = store.import_checkpoint(mc3_file, "mc3_112")
    assert a.model_id == b.model_id and len(store.list_entries("mc3_112")) == 1
    c = store.import_checkpoint(mc3_file, "mc3_224")  # the pair shares one layout
    assert c.member == "mc3_224" and c.sha256 == a.sha256


def test_import_strips_module_prefix_and_trainer_wrapper(tmp_path):
    dp = save_layout_checkpoint("r2plus1d_112", tmp_path / "dp.pth", prefix="module.")
    e = store.import_checkpoint(dp, "r2plus1d_112")
    assert e.sha256 != e.source_sha256  # re-saved without the prefix
    sd = torch.load(e.weights, weights_only=True)
    assert next(iter(sd)) == "stem.0.weight"

    ckpt = {"state_dict": random_state_dict("r2plus1d_112", seed=1), "epoch": 7, "val_loss": 0.25}
    torch.save(ckpt, tmp_path / "trained.pt")
    e2 = store.import_checkpoint(tmp_path / "trained.pt", "r2plus1d_cutmix_112")
    assert e2.val_loss == pytest.approx(0.25) and e2.extra.get("epoch") == 7


def test_register_from_memory_with_trainer_metadata():
    sd = random_state_dict("r3d34_224")
    e = store.register("r3d34_224", sd, source="train:run-1", val_loss=0.18, extra={"epochs": 4})
    assert e.source == "train:run-1" and e.val_loss == pytest.approx(0.18) and e.extra["epochs"] == 4
    assert store.active("r3d34_224").model_id == e.model_id


def test_rejects_truncated_file(mc3_file, tmp_path):
    data = mc3_file.read_bytes()
    cut = tmp_path / "cut.model"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="truncated or corrupt"):
        store.import_checkpoint(cut, "mc3_112")
    assert store.list_entries() == []


def test_rejects_truncated_legacy_format_file(tmp_path):
    path = tmp_path / "legacy.model"
    torch.save(random_state_dict("mc3_112"), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt|not a PyTorch weights file"):
        store.import_checkpoint(path, "mc3_112")


def test_rejects_wrong_architecture_naming_keys(mc3_file):
    with pytest.raises(UserError) as info:
        store.import_checkpoint(mc3_file, "r2plus1d_112")
    msg = str(info.value)
    assert "\n" not in msg
    assert "stem.0.weight: file 64x3x3x7x7 vs model 45x3x1x7x7" in msg
    assert "missing key" in msg and "unexpected key" in msg
    assert "it is a mc3 checkpoint" in msg

    with pytest.raises(UserError, match="missing key.*conv1.weight"):
        store.import_checkpoint(mc3_file, "r3d34_224")
    assert store.list_entries() == []


def test_rejects_incomplete_state_dict(tmp_path):
    sd = random_state_dict("i3d_224")
    del sd["Mixed_5c.b3b.bn.running_var"]
    torch.save(sd, tmp_path / "partial.model")
    with pytest.raises(UserError, match="1 missing key.*Mixed_5c.b3b.bn.running_var"):
        store.import_checkpoint(tmp_path / "partial.model", "i3d_224")


class NotWeights:
    def __init__(self):
        self.x = 1


def test_rejects_pickles_that_are_not_state_dicts(tmp_path):
    obj = tmp_path / "object.pt"
    torch.save(NotWeights(), obj)
    with pytest.raises(UserError, match="NotWeights.*weights_only|weights_only.*NotWeights"):
        store.import_checkpoint(obj, "mc3_112")

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    with pytest.raises(UserError, match="not a PyTorch weights file|not a readable"):
        store.import_checkpoint(plain, "mc3_112")

    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], lst)
    with pytest.raises(UserError, match="does not hold a state_dict"):
        store.import_checkpoint(lst, "mc3_112")

    cfg = tmp_path / "config.pt"
    torch.save({"lr": 0.1, "epochs": 3}, cfg)
    with pytest.raises(UserError, match="does not hold a state_dict"):
        store.import_checkpoint(cfg, "mc3_112")


def test_rejects_missing_file_and_unknown_member(tmp_path, mc3_file):
    with pytest.raises(UserError, match="not found"):
        store.import_checkpoint(tmp_path / "nope.model", "mc3_112")
    with pytest.raises(UserError, match="unknown member"):
        store.import_checkpoint(mc3_file, "resnet999_7")


def test_load_without_registered_model_explains_how():
    with pytest.raises(UserError, match="deepfake models import"):
        store.load("i3d_224")


def test_activate_and_remove(tmp_path):
    a = store.register("mc3_112", random_state_dict("mc3_112", seed=1), source="a")
    b = store.register("mc3_112", random_state_dict("mc3_112", seed=2), source="b")
    assert store.active("mc3_112").model_id == b.model_id
    store.activate("mc3_112", a.model_id[:6])
    assert store.active("mc3_112").model_id == a.model_id
    assert store.load("mc3_112").model_id == a.model_id
    store.remove("mc3_112", a.model_id)
    assert store.active("mc3_112").model_id == b.model_id
    store.remove("mc3_112", b.model_id)
    assert store.active("mc3_112") is None and store.list_entries() == []


def _cli(*args):
    from dfdc_cli.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=True, env={"COLUMNS": "250"})


def test_cli_list_shows_the_eight_members_and_other_registered(mc3_file):
    store.import_checkpoint(mc3_file, "mc3_112")
    store.register("r3d18_224", {k: v for k, v in _r3d18_state().items()}, source="train:x")
    result = _cli("models", "list")
    assert result.exit_code == 0, result.output
    for name in MEMBERS:
        assert name in result.output
    assert "r3d18_224" in result.output
    assert store.active("mc3_112").model_id in result.output
    assert "none" in result.output  # members with nothing registered
    detail = _cli("models", "list", "--all")
    assert detail.exit_code == 0 and "train:x" in detail.output


def _r3d18_state():
    from dfdc_models.registry import build_net

    return build_net("r3d18").state_dict()


def test_cli_import_success_and_clear_failure(mc3_file, tmp_path):
    ok = _cli("models", "import", str(mc3_file), "--as", "mc3_112")
    assert ok.exit_code == 0, ok.output
    assert "mc3_112" in ok.output and "active" in ok.output
    bad = _cli("models", "import", str(mc3_file), "--as", "i3d_224")
    # a file that fails is a per-file result (one line, exit 1), not a usage error
    assert bad.exit_code == 1
    assert f"failed {mc3_file} does not match member i3d_224" in " ".join(bad.output.split())
    assert "0 registered, 0 already registered, 1 failed" in bad.output


def test_cli_list_at_80_columns_cuts_nothing(mc3_file, monkeypatch, capsys):
    """With the built-in model's long name listed, the network column (which the member's name
    already says) gives way rather than cutting the network, id or date."""
    import re

    from cli_util import run_cli

    store.import_checkpoint(mc3_file, "mc3_112")
    active = store.active("mc3_112")
    code, out, err = run_cli(monkeypatch, capsys, "models", "list", width=80)
    assert code == 0, err
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in out, out
    row = next(ln for ln in lines if ln.startswith("mc3_112 "))
    assert active.model_id in row and re.search(r"\d{4}-\d{2}-\d{2}", row), row
    code, wide, err = run_cli(monkeypatch, capsys, "models", "list", width=250)
    assert code == 0 and "network" in wide and "mc3/112" in wide, wide


def test_the_same_weights_saved_twice_are_the_same_bytes(tmp_path):
    """torch names a saved archive after the path it is given; an atomic write's temporary name is
    random. Saved through a file handle, a regenerated model is byte-identical: same file, same id."""
    from dfdc_models import builtin
    from dfdc_models.checkpoint import save_checkpoint, sha256_file
    from dfdc_models.registry import build_net

    sd = build_net("mc3").state_dict()
    a, b = save_checkpoint(sd, tmp_path / "a.pt"), save_checkpoint(sd, tmp_path / "sub" / "b.pt")
    assert sha256_file(a) == sha256_file(b)
    one = builtin.export(a, "mc3_112", tmp_path / "one")
    two = builtin.export(b, "mc3_112", tmp_path / "two")
    assert one.read_bytes() == two.read_bytes()
