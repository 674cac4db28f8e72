"""`deepfake train` on a fresh machine and on a CPU: torchvision's Kinetics-400 starting weights through
its weights API and torch hub's cache (a synthetic file placed there, or a stand-in download; nothing
is downloaded), the one-line error when the download fails, and the progress a long epoch shows."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from rich.console import Console

from dfdc_cli.train import model_adapter, loop as trainloop
from dfdc_cli.train import trainer
from dfdc_cli.errors import UserError
from dfdc_models.pretrained import hub_checkpoints_dir, torchvision_file_name, torchvision_weights
from dfdc_models.specs import get_spec
from test_train import make_tiny_index, tiny_recipe

TV_ARCHS = {"mc3": "mc3_112", "r2plus1d": "r2plus1d_112", "r3d18": "r3d18_112"}


def _synthetic_kinetics_file(arch: str, seed: int = 0) -> Path:
    """A file shaped as torchvision's Kinetics-400 download (its own constructor, 400 classes, random
    weights), placed in torch hub's cache (the test's TORCH_HOME, see conftest)."""
    from torchvision.models import video

    ctor = {"mc3": video.mc3_18, "r2plus1d": video.r2plus1d_18, "r3d18": video.r3d_18}[arch]
    torch.manual_seed(seed)
    path = hub_checkpoints_dir() / torchvision_file_name(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ctor(weights=None).state_dict(), path)
    return path


def test_file_names_come_from_torchvisions_weights_api(isolated_dirs):
    assert hub_checkpoints_dir() == isolated_dirs / "torch" / "hub" / "checkpoints"  # TORCH_HOME is honoured
    for arch in TV_ARCHS:
        w = torchvision_weights(arch)
        assert w.meta["num_params"] > 1e6 and w.url.endswith("/" + torchvision_file_name(arch))
        assert model_adapter.PRETRAINED_FILES[arch][0] == torchvision_file_name(arch)  # where resolve_init looks
        assert hub_checkpoints_dir() in model_adapter.pretrained_dirs()
    assert torchvision_weights("i3d") is None and torchvision_file_name("r3d34") is None


@pytest.mark.parametrize("arch", sorted(TV_ARCHS))
def test_pretrained_found_in_torch_hub_cache(arch):
    path = hub_checkpoints_dir() / torchvision_file_name(arch)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stand-in")  # found by name (conftest makes any download attempt fail)
    assert model_adapter.resolve_init(get_spec(TV_ARCHS[arch]), "pretrained") == (path, f"pretrained {path}")


def test_local_pretrained_folder_comes_first(isolated_dirs):
    local = isolated_dirs / "data" / "pretrained" / torchvision_file_name("mc3")
    local.parent.mkdir(parents=True)
    local.write_bytes(b"stand-in")
    (hub_checkpoints_dir()).mkdir(parents=True)
    (hub_checkpoints_dir() / local.name).write_bytes(b"other")
    assert model_adapter.resolve_init(get_spec("mc3_112"), "pretrained")[0] == local


def test_pretrained_downloaded_once_through_torch_hub(monkeypatch):
    calls = []
    sd = {"stem.0.weight": torch.zeros(1)}

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        torch.save(sd, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    said: list[str] = []
    spec = get_spec("r2plus1d_112")
    path, how = model_adapter.resolve_init(spec, "pretrained", echo=said.append)
    w = torchvision_weights("r2plus1d")
    assert calls == [(w.url, str(hub_checkpoints_dir() / "r2plus1d_18-91a641e6.pth"), "91a641e6")]
    assert path == hub_checkpoints_dir() / "r2plus1d_18-91a641e6.pth" and path.is_file()
    assert len(said) == 1 and w.url in said[0]
    assert model_adapter.resolve_init(spec, "pretrained")[0] == path and len(calls) == 1  # cached from now on
    # torchvision's own API finds the very file in its cache (it would not download it again)
    assert w.get_state_dict(progress=False, check_hash=False).keys() == sd.keys()


@pytest.mark.parametrize("failure", ["offline", "http", "hash"])
def test_offline_is_a_one_line_error(monkeypatch, capsys, failure):
    """`deepfake train --arch mc3 --res 112` (the design card's example) with the download failing:
    one line naming the file and the folder, exit 2, no traceback, no data read."""
    import socket
    from urllib.error import HTTPError, URLError

    from dfdc_cli.cli import main

    exc = {"offline": URLError(socket.gaierror(-2, "Name or service not known")),
           "http": HTTPError("https://x", 403, "Forbidden", {}, None),
           "hash": RuntimeError('invalid hash value (expected "a90a0ba3", got "00")')}[failure]

    def download(url, dst, hash_prefix=None, progress=True):
        raise exc

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(sys, "argv", ["deepfake", "train", "--arch", "mc3", "--res", "112",
                                      "--index", "/nonexistent/index"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("downloading torchvision's") and "Traceback" not in err, err
    lines = lines[1:]  # the error itself: one line
    folder = str(hub_checkpoints_dir())
    assert lines[0].startswith("error: mc3_18-a90a0ba3.pth") and f"put it in {folder}" in lines[0]
    assert {"offline": "Name or service not known", "http": "HTTP 403 Forbidden", "hash": "invalid hash"}[failure] \
        in lines[0]
    assert "--init scratch" in lines[0] and not any(hub_checkpoints_dir().glob("*.pth"))


def test_other_archs_never_download():
    with pytest.raises(UserError, match="rgb_charades.pt / rgb_imagenet.pt"):
        model_adapter.resolve_init(get_spec("i3d_224"), "pretrained")  # (conftest: a download would say "never")


def test_kinetics_file_in_the_cache_initialises_the_model():
    path = _synthetic_kinetics_file("mc3")
    sd = torch.load(path, weights_only=True)
    model, how = model_adapter.build_model(get_spec("mc3_112"), "pretrained", torch.device("cpu"))
    own = model.net.state_dict()
    assert how == f"pretrained {path}"
    for k in ("stem.0.weight", "layer3.1.conv2.0.weight", "layer4.0.downsample.1.running_var"):
        assert torch.equal(own[k], sd[k]), k
    assert own["fc.weight"].shape[0] != sd["fc.weight"].shape[0] == 400  # the Kinetics head is dropped


# ----------------------------------------------------------------------------------------------
# Progress


def _capture(monkeypatch, terminal: bool) -> io.StringIO:
    from dfdc_cli import ui

    buf = io.StringIO()
    monkeypatch.setattr(ui, "err_console", Console(file=buf, force_terminal=terminal, width=220,
                                                   color_system=None if not terminal else "standard"))
    return buf


def test_progress_off_a_terminal_writes_plain_lines_now_and_then(monkeypatch):
    buf = _capture(monkeypatch, terminal=False)
    p = trainloop.Progress(True, "epoch 2/5", 4, every_s=0.0)
    for k in range(1, 5):
        p.advance(k, f"loss 0.6931  0.5 clips/s  data {k}%")
    p.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3  # none for the last step: the epoch line follows
    assert lines[0].startswith("epoch 2/5: 1/4 (25%) 0:00:00 elapsed, ETA 0:00:00  loss 0.6931")
    assert "data 3%" in lines[2] and "\x1b" not in buf.getvalue() and "\r" not in buf.getvalue()
    quiet = trainloop.Progress(True, "epoch 1/5", 4)  # the default interval: nothing in a fast epoch
    quiet.advance(1, "x")
    rank1 = trainloop.Progress(False, "epoch 1/5", 4, every_s=0.0)  # another DDP rank / show_progress=False
    rank1.advance(1, "x")
    assert len(buf.getvalue().splitlines()) == 3


def test_progress_eta_is_the_mean_step_time_times_the_steps_left(monkeypatch):
    buf = _capture(monkeypatch, terminal=False)
    clock = iter([100.0, 190.0])  # start, then one step of 90 s (rich's own ETA would be blank here)
    p = trainloop.Progress(True, "epoch 1/1", 5, every_s=60.0, clock=lambda: next(clock))
    p.advance(1, "0.0111 clips/s")
    assert "1/5 (20%) 0:01:30 elapsed, ETA 0:06:00  0.0111 clips/s" in buf.getvalue()


@pytest.mark.slow
def test_train_from_cached_kinetics_weights_with_progress(tmp_path, monkeypatch):
    """An epoch of mc3 from the synthetic Kinetics file in torch hub's cache, on a (forced) terminal:
    the bar shows ETA, clips/s and the data share; log.csv has clips/s and the data share."""
    index = make_tiny_index(tmp_path / "tubes", n_videos=4)
    path = _synthetic_kinetics_file("mc3")
    buf = _capture(monkeypatch, terminal=True)
    said: list[str] = []
    r = tiny_recipe(index, optim__epochs=1, optim__batch_size=2, model__init="pretrained", data__val_fraction=0.5)
    res = trainer.train(r, run_dir=tmp_path / "run", echo=said.append)
    assert any(f"pretrained {path}" in s for s in said), said
    bar = buf.getvalue()
    for text in ("epoch 1/1", "epoch 1/1 validation", "ETA 0:00:00", "clips/s", "data ", "loss "):
        assert text in bar, (text, bar[-2000:])
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert list(log.columns[7:11]) == ["clips_per_s", "data_share", "train_s", "data_s"]
    assert (log["clips_per_s"] > 0).all() and ((log["data_share"] > 0) & (log["data_share"] < 1)).all()
    # the share is the wait over the training pass's time, and the epoch lines say it too
    assert ((log["data_share"] - log["data_s"] / log["train_s"]).abs() < 1e-3).all()
    assert sum("clips/s  data " in s and "%" in s for s in said) == 1
    assert res.epochs_done == 1
