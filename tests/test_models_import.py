"""`deepfake models import` of a whole release: folders, each file's member recognised from its layout
and (for the pairs that share one) its released name, ambiguity and bad files reported per file while
the rest registers, and a second import that registers nothing."""

from __future__ import annotations

import shutil

import pytest
import torch
from cli_util import run_cli

from dfdc_models import store
from dfdc_models.specs import MEMBERS, get_spec, named_as_released
from models_util import layout, shared_random, shared_state_dict


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """The eight members' weights in the released layouts (keys, shapes, dtypes), under the released
    file names; each file's tensors share one buffer, which keeps the folder at ~60 MB instead of
    ~0.8 GB."""
    d = tmp_path_factory.mktemp("release")
    for i, spec in enumerate(MEMBERS.values()):
        torch.save(shared_state_dict(spec.name, seed=i), d / spec.released_file)
    return d


def small_release(folder, *members):
    """A folder with the given (small) members' files, named as released."""
    folder.mkdir(exist_ok=True)
    for i, m in enumerate(members):
        torch.save(shared_state_dict(m, seed=10 + i), folder / get_spec(m).released_file)
    return folder


def test_specs_name_the_released_files():
    for spec in MEMBERS.values():
        assert spec.released_file == layout(spec.name)["released_checkpoint_file"]
        assert spec.label and named_as_released(spec, spec.released_file)
    labels = [m.label for m in MEMBERS.values()]
    assert len(set(labels)) == len(labels)


def test_released_names_tell_the_pairs_apart():
    i3d, i3d_cm = MEMBERS["i3d_224"], MEMBERS["i3d_cutmix_224"]
    assert named_as_released(i3d, "J3D_E1_L0.1374.MODEL")  # case does not matter
    assert named_as_released(i3d, "j3d_e3_l0.1500.model")  # another epoch of the same run
    assert not named_as_released(i3d, "i3dcutmix_e11_l0.1612.model")
    assert not named_as_released(i3d_cm, "j3d_e1_l0.1374.model")
    assert not named_as_released(i3d, "j3d.model") and not named_as_released(i3d, "j3d_extra_e1_l0.1.model")
    mc3, mc3_224 = MEMBERS["mc3_112"], MEMBERS["mc3_224"]
    assert named_as_released(mc3, "mc3_18_112_1cy_lilaug_nonorm_e2_l0.2500.model")
    assert not named_as_released(mc3, mc3_224.released_file)
    assert not named_as_released(mc3_224, mc3.released_file)


@pytest.mark.slow
def test_folder_import_registers_all_eight_once(release, monkeypatch, capsys):
    (release / "README.txt").write_text("the Medics' weights\n")  # not named like weights: skipped
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", release)
    (release / "README.txt").unlink()
    assert code == 0, err
    entries = store.list_entries()
    assert sorted(e.member for e in entries) == sorted(MEMBERS)
    for spec in MEMBERS.values():
        e = store.active(spec.name)
        assert e.extra["file_name"] == spec.released_file
        # the loss in the released name, and the file kept byte for byte
        loss = float(spec.released_file.split("_l")[-1].split("VM-")[-1].rsplit(".", 1)[0])
        assert e.val_loss == pytest.approx(loss)
        assert e.sha256 == e.source_sha256
        row = next(line for line in out.splitlines() if line.startswith(spec.name + " "))
        assert e.model_id in row and "new" in row and f"{loss:.4f}" in row
    assert "8 registered" in err and "skipped 1 file" in err and "README.txt" in err

    dates = {e.model_id: e.date for e in entries}
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", release, *release.glob("j3d*"))
    assert code == 0, err
    assert "nothing new: all 8 files were already registered" in err
    assert {e.model_id: e.date for e in store.list_entries()} == dates
    assert out.count("already") == 8


def test_ambiguous_and_bad_files_are_reported_while_the_rest_registers(tmp_path, monkeypatch, capsys):
    folder = small_release(tmp_path / "release", "mc3_112")
    # an mc3 checkpoint under a name that is not a released one: mc3_112 or mc3_224?
    torch.save(shared_state_dict("mc3_112", seed=3), folder / "mc3_weights.pth")
    (folder / "notes.model").write_text("not weights\n")
    data = (folder / get_spec("mc3_112").released_file).read_bytes()
    (folder / "cut.pt").write_bytes(data[: len(data) // 2])
    sd = shared_state_dict("mc3_112", seed=4)
    sd["fc.weight"] = torch.zeros(5, 512)
    torch.save(sd, folder / "five_classes.pt")

    code, out, err = run_cli(monkeypatch, capsys, "models", "import", folder)
    assert code == 1
    assert [e.member for e in store.list_entries()] == ["mc3_112"]
    assert store.active("mc3_112").extra["file_name"] == get_spec("mc3_112").released_file
    failed = [line for line in err.splitlines() if line.startswith("failed")]
    assert len(failed) == 4, err
    amb = next(line for line in failed if "mc3_weights.pth" in line)
    assert "mc3_112" in amb and "mc3_224" in amb and "--as" in amb
    assert "mc3_18_112t224_1cy_lilaug_nonorm_e7_l0.1901.model" in amb  # which names would have told
    assert any("notes.model" in line for line in failed)
    assert any("cut.pt" in line and "truncated" in line for line in failed)
    five = next(line for line in failed if "five_classes.pt" in line)
    assert "matches no member's layout" in five and "fc.weight: file 5x512 vs model 2x512" in five
    assert "1 registered, 0 already registered, 4 failed" in err

    # The way out the message names.
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", folder / "mc3_weights.pth",
                             "--as", "mc3_224")
    assert code == 0, err
    assert store.active("mc3_224").extra["file_name"] == "mc3_weights.pth"


def test_identify_uses_layout_name_and_trainer_record(tmp_path):
    sd = shared_state_dict("i3d_224")
    assert store.identify(tmp_path / "j3d_e1_l0.1374.model", sd, sd).name == "i3d_224"
    assert store.identify(tmp_path / "i3dcutmix_e4_l0.2000.model", sd, sd).name == "i3d_cutmix_224"
    with pytest.raises(store.AmbiguousCheckpoint) as info:
        store.identify(tmp_path / "best.pt", sd, sd)
    assert info.value.candidates == ("i3d_224", "i3d_cutmix_224")
    # a `deepfake train` checkpoint records its member
    ckpt = {"model": sd, "member": "i3d_cutmix_224"}
    assert store.identify(tmp_path / "last.pt", ckpt, sd).name == "i3d_cutmix_224"
    # a layout that only one member has needs no name
    r3d = shared_state_dict("r3d34_224")
    assert store.identify(tmp_path / "anything.bin", r3d, r3d).name == "r3d34_224"


def test_identify_architecture_without_seed_member_asks_for_resolution(tmp_path):
    from dfdc_models.registry import build_net

    with torch.device("meta"):
        shapes = build_net("r3d18").state_dict()
    torch.save(shared_random([(k, v.shape, v.dtype) for k, v in shapes.items()]), tmp_path / "r3d18.pt")
    results = list(store.import_files([tmp_path / "r3d18.pt"]))
    assert not results[0].ok and results[0].candidates == ("r3d18_112", "r3d18_224", "r3d18_256")
    assert "--as r3d18_112" in results[0].reason
    (e,) = [r.entry for r in store.import_files([tmp_path / "r3d18.pt"], "r3d18_112")]
    assert e.member == "r3d18_112"


def test_checkpoint_files_walks_folders_once(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.model", "a/b/y.PTH", "a/notes.txt", "a/.hidden.pt", "z.pt"):
        (tmp_path / name).write_bytes(b"x")
    files, skipped = store.checkpoint_files([tmp_path / "a", tmp_path / "a" / "x.model", tmp_path / "z.pt",
                                             tmp_path / "missing.model"])
    assert [f.name for f in files] == ["y.PTH", "x.model", "z.pt", "missing.model"]
    assert [f.name for f in skipped] == ["notes.txt"]


def test_cli_rejects_val_loss_for_many_files_and_unknown_member(tmp_path, monkeypatch, capsys):
    folder = small_release(tmp_path / "r", "mc3_112", "mc3_224")
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", folder, "--val-loss", "0.2")
    assert code == 2 and "--val-loss is for one file" in err
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", folder, "--as", "nope_9")
    assert code == 2 and "unknown member" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", empty)
    assert code == 2 and "no checkpoint files" in err
    assert store.list_entries() == []


def test_same_bytes_for_another_member_with_as_is_new(tmp_path, monkeypatch, capsys):
    folder = small_release(tmp_path / "r", "mc3_112")
    f = folder / get_spec("mc3_112").released_file
    shutil.copy(f, tmp_path / "copy.model")
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", f, tmp_path / "copy.model", "--as", "mc3_224")
    assert code == 0, err
    # the two files have the same content: one entry, the second file is "already"
    assert len(store.list_entries("mc3_224")) == 1 and store.list_entries("mc3_112") == []
    assert "1 registered, 1 already registered" in err
