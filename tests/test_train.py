"""The trainer end to end on tiny generated tubes (CPU): recipes, learning, registration, exact resume."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dfdc_cli.train import model_adapter, optim, hooks as trainhooks
from dfdc_cli.train import recipe as recipes
from dfdc_cli.train import trainer
from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import TUBE_COLUMNS, TUBES_CSV, write_table
from dfdc_cli.runtime import Runtime

SIZE = 64
FRAMES = 32


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour texture (a few random sinusoids), float (2 size, 2 size, 3), 30..225."""
    yy, xx = np.mgrid[0: 2 * size, 0: 2 * size].astype(np.float32) / (2 * size)
    tex = np.full((2 * size, 2 * size, 3), 128.0, np.float32)
    for _ in range(4):
        fy, fx = rng.uniform(-3, 3, 2)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(8, 24, 3).astype(np.float32)
        tex += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)[..., None] * amp
    return tex.clip(30, 225)


def _track(n: int, size: int):
    """A face track for a tiny tube: a fixed box in the middle, landmarks placed inside it."""
    from dfdc_cli.faces.index import Track

    box = np.array([0.3, 0.25, 0.7, 0.75], np.float32) * size
    template = np.array([[0.34, 0.46], [0.66, 0.46], [0.5, 0.64], [0.37, 0.82], [0.63, 0.82]], np.float32)
    lm = box[:2] + template * (box[2:] - box[:2])
    return Track(frames=np.arange(n), boxes=np.repeat(box[None], n, 0), landmarks=np.repeat(lm[None], n, 0),
                 probs=np.full(n, 0.99, np.float32), detected=np.ones(n, bool),
                 crop_box=np.array([0, 0, size, size]), size=size)


def make_tiny_index(folder: Path, n_videos: int = 12, seed: int = 0) -> Path:
    """n_videos real tubes and one fake per real (same content plus a learnable spatio-temporal
    artefact: a bright patch that flickers on and off every other frame), tube MP4s + tubes.csv."""
    from dfdc_cli.faces.video import write_video

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_videos):
        tex = _texture(rng, SIZE)
        dx, dy = rng.uniform(-0.6, 0.6, 2)
        frames = np.stack([
            tex[int(32 + dy * t): int(32 + dy * t) + SIZE, int(32 + dx * t): int(32 + dx * t) + SIZE]
            for t in range(FRAMES)
        ]).astype(np.float32)
        fake = frames.copy()
        cy, cx = rng.integers(20, 44, 2)
        fake[0::2, cy - 12: cy + 12, cx - 12: cx + 12] += 90.0  # flickering patch
        name = f"real{i:02d}.mp4"
        for label, clip, vname, original in (("REAL", frames, name, ""), ("FAKE", fake, f"fake{i:02d}.mp4", name)):
            path = folder / f"{Path(vname).stem}_0.mp4"
            write_video(path, clip.clip(0, 255).astype(np.uint8), 25)
            _track(FRAMES, SIZE).save(path.with_suffix(".npz"))
            rows.append(dict(
                video=f"/videos/{vname}", name=vname, tube_id=0, first_frame=0, last_frame=FRAMES - 1,
                n_frames=FRAMES, x1=0, y1=0, x2=SIZE, y2=SIZE, mean_prob=0.99, max_prob=0.99, n_detections=4,
                label=label, original=original, part=f"dfdc_train_part_{i % 3}", tube_path=str(path),
                track_path=str(path.with_suffix(".npz")), tube2d_path="", key="",
            ))
    write_table(folder / TUBES_CSV, rows, TUBE_COLUMNS)
    return folder


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> Path:
    return make_tiny_index(tmp_path_factory.mktemp("tiny-tubes"))


def tiny_recipe(index: Path, **over) -> dict:
    sets = {
        "data": {"index": str(index), "clip_frames": 8, "input_res": 32, "val_fraction": 0.25, "workers": 0},
        "optim": {"epochs": 6, "batch_size": 6, "lr": 2e-3, "optimizer": "adamw", "weight_decay": 1e-4},
        "augment": {"crop_scale": [0.7, 1.0], "blur_p": 0.0},
        "model": {"init": "scratch"},
        "train": {"seed": 0, "device": "cpu"},
    }
    for k, v in over.items():
        section, key = k.split("__")
        sets.setdefault(section, {})[key] = v
    return recipes.resolve_recipe(member="mc3_112", overrides=sets)


# ----------------------------------------------------------------------------------------------
# Recipes (fast)


def test_builtin_recipes_resolve():
    from dfdc_models.specs import MEMBERS

    # + the built-in model's recipe and the one it replaced
    assert set(recipes.available_recipes()) == set(MEMBERS) | {"resnet18_160", "efficientnet_lite0_224"}
    for name in MEMBERS:
        r = recipes.resolve_recipe(member=name)
        assert r["model"]["member"] == name
        text = recipes.dumps_toml(r)
        import tomllib

        assert tomllib.loads(text) == r  # the saved recipe reads back identically
    assert recipes.resolve_recipe(member="r2plus1d_112")["augment"]["crop_scale"] == [0.33, 1.0]
    assert recipes.resolve_recipe(member="i3d_224")["augment"]["crop_scale"] == [0.5, 1.0]
    assert recipes.resolve_recipe(member="i3d_cutmix_224")["augment"]["cutmix"] is True
    assert recipes.resolve_recipe(member="r2plus1d_cutmix_112")["augment"]["cutmix"] is True
    assert recipes.resolve_recipe(member="mc3_112")["augment"]["cutmix"] is False
    assert recipes.resolve_recipe(member="mc3_224")["model"]["init"] == "mc3_112"
    assert recipes.resolve_recipe(member="i3d_224")["augment"]["crop_ratio"] == [0.9, 1.1]


def test_recipe_layers_and_overrides(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text('[optim]\nlr = 5e-4\nepochs = 3\n[augment]\ncutmix = true\n')
    over = recipes.parse_sets(["optim.epochs=7", "augment.crop_scale=[0.4, 1.0]", "data.val_parts=45-49"])
    r = recipes.resolve_recipe(arch="r2plus1d", res=112, recipe_file=f, overrides=over)
    assert r["model"]["member"] == "r2plus1d_112"
    assert r["optim"]["lr"] == 5e-4 and r["optim"]["epochs"] == 7
    assert r["augment"]["cutmix"] is True and r["augment"]["crop_scale"] == [0.4, 1.0]
    assert r["data"]["val_parts"] == "45-49"
    assert r["optim"]["batch_size"] == 16  # from recipes/r2plus1d_112.toml
    g = recipes.resolve_recipe(arch="r3d18", res=224)
    assert g["model"]["member"] == "r3d18_224" and g["optim"]["optimizer"] == "adamw"
    with pytest.raises(UserError, match="unknown key"):
        recipes.resolve_recipe(member="mc3_112", overrides={"optim": {"lrr": 1}})
    with pytest.raises(UserError, match="optimizer"):
        recipes.resolve_recipe(member="mc3_112", overrides={"optim": {"optimizer": "sgd"}})
    with pytest.raises(UserError):
        recipes.resolve_recipe()


def test_ranger_lookahead_and_onecycle():
    # Lookahead(RAdam) == RAdam with the slow weights moving alpha of the way every k steps.
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    la = optim.Lookahead(torch.optim.RAdam([a], lr=0.1), k=3, alpha=0.5)
    ra = torch.optim.RAdam([b], lr=0.1)
    slow = b.detach().clone()
    for step in range(9):
        for p, opt_ in ((a, la), (b, ra)):
            opt_.zero_grad()
            ((p ** 2).sum()).backward()
            opt_.step()
        if (step + 1) % 3 == 0:
            with torch.no_grad():
                slow += 0.5 * (b - slow)
                b.copy_(slow)
        assert torch.allclose(a, b, atol=1e-6)
    # state round trip
    la2 = optim.Lookahead(torch.optim.RAdam([torch.nn.Parameter(a.detach().clone())], lr=0.1), k=3, alpha=0.5)
    la2.load_state_dict(la.state_dict())
    assert la2.param_groups[0]["lookahead_step"] == 9
    assert torch.equal(la2._base_optimizer.state[la2.param_groups[0]["params"][0]]["lookahead_slow_buff"],
                       la._base_optimizer.state[a]["lookahead_slow_buff"])
    # ranger from a recipe; the one-cycle schedule drives the inner optimiser's lr
    w = torch.nn.Parameter(torch.randn(5))
    o = {"optimizer": "ranger", "lr": 0.1, "weight_decay": 0.0, "betas": [0.9, 0.999], "lookahead_k": 3,
         "lookahead_alpha": 0.5, "schedule": "onecycle", "pct_start": 0.3, "div_factor": 25.0,
         "final_div_factor": 1e4}
    opt = optim.make_optimizer([w], o)
    sched = optim.make_scheduler(opt, o, 12)
    assert isinstance(opt, optim.Lookahead) and opt.param_groups is opt._base_optimizer.param_groups
    lrs = []
    for _ in range(11):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
        sched.step()
        lrs.append(opt._base_optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.1, rel=2e-2) and lrs[-1] < 0.01


def test_lookahead_resumes_from_the_state_the_projects_own_lookahead_wrote():
    # last.pt of a run started before timm's Lookahead: {"base", "slow", "la_steps", "k", "alpha"}
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    la = optim.Lookahead(torch.optim.RAdam([a], lr=0.1), k=3, alpha=0.5)
    for _ in range(4):
        la.zero_grad()
        (a ** 2).sum().backward()
        la.step()
    import copy

    sd = copy.deepcopy(la.state_dict())  # (torch's state_dict shares the live per-parameter dicts)
    slow = sd["state"][0].pop("lookahead_slow_buff")
    for g in sd["param_groups"]:
        for key in ("lookahead_step", "lookahead_k", "lookahead_alpha"):
            g.pop(key)
    old = {"base": sd, "slow": [slow], "la_steps": 4, "k": 3, "alpha": 0.5}
    b = torch.nn.Parameter(a.detach().clone())
    lb = optim.Lookahead(torch.optim.RAdam([b], lr=0.1), k=3, alpha=0.5)
    lb.load_state_dict(old)
    for _ in range(5):  # (through two syncs)
        for p, opt_ in ((a, la), (b, lb)):
            opt_.zero_grad()
            (p ** 2).sum().backward()
            opt_.step()
        assert torch.equal(a, b)


def test_recipe_values_take_their_defaults_types_and_resume_rules(tmp_path):
    r = recipes.resolve_recipe(member="mc3_112", overrides=recipes.parse_sets(["data.val_parts=45"]))
    assert r["data"]["val_parts"] == "45"  # a number for a text key: its text
    with pytest.raises(UserError, match="optim.epochs must be an integer"):
        recipes.resolve_recipe(member="mc3_112", overrides={"optim": {"epochs": "many"}})
    with pytest.raises(UserError, match="augment.cutmix must be true/false"):
        recipes.resolve_recipe(member="mc3_112", overrides={"augment": {"cutmix": 1}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text(recipes.dumps_toml(r, header="a run"))
    back = recipes.run_recipe(resume=run, overrides={"data": {"workers": 3}})
    assert back["data"]["workers"] == 3 and back["train"]["stop_after"] == 0
    assert {k: v for k, v in back.items() if k != "data"} == {k: v for k, v in r.items() if k != "data"}
    with pytest.raises(UserError, match="only --workers, --device and --index may change"):
        recipes.run_recipe(resume=run, overrides={"optim": {"lr": 1.0}})
    with pytest.raises(UserError, match="leave out --member"):
        recipes.run_recipe(member="mc3_112", resume=run)
    with pytest.raises(UserError, match="no recipe.toml there"):
        recipes.run_recipe(resume=tmp_path)


def test_resolve_init(tmp_path):
    from dfdc_models.specs import get_spec

    spec = get_spec("mc3_112")
    assert model_adapter.resolve_init(spec, "scratch")[0] is None
    with pytest.raises(UserError, match="mc3_18-a90a0ba3.pth .* could not be downloaded"):
        model_adapter.resolve_init(spec, "pretrained")  # (conftest: tests never download)
    with pytest.raises(UserError):
        model_adapter.resolve_init(spec, str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match="no model is registered"):
        model_adapter.resolve_init(get_spec("mc3_224"), "mc3_112")


# ----------------------------------------------------------------------------------------------
# End to end (slow-ish: a few epochs of a real member at a tiny input size)


def _final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
def test_train_learns_and_registers(tiny_index, tmp_path):
    """`deepfake train` on the tiny tubes: validation loss well below log(2), the best checkpoint
    registered and listed by `deepfake models list`."""
    from typer.testing import CliRunner

    from dfdc_cli.cli import app
    from dfdc_models import store

    run = tmp_path / "run"
    args = ["train", "--member", "mc3_112", "--index", str(tiny_index), "--init", "scratch", "--epochs", "6",
            "--batch-size", "6", "--lr", "2e-3", "--optimizer", "adamw", "--workers", "0", "--device", "cpu",
            "--seed", "0", "--run-dir", str(run),
            "--set", "data.clip_frames=8", "--set", "data.input_res=32", "--set", "data.val_fraction=0.25",
            "--set", "augment.crop_scale=[0.7, 1.0]", "--set", "augment.blur_p=0", "--set", "optim.weight_decay=1e-4"]
    out = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert "9 real / 9 fake tubes" in out.output and "3 real / 3 fake tubes" in out.output  # split sizes
    log = pd.read_csv(run / "log.csv")
    assert list(log["epoch"]) == list(range(1, 7))
    assert {"train_loss", "val_loss", "val_auc", "clips_per_s"} <= set(log.columns)
    best = log["val_loss"].min()
    assert best < 0.5 * math.log(2), log.to_string()
    assert log["val_auc"].max() > 0.9
    saved = recipes.load_recipe_file(run / "recipe.toml")
    assert saved["optim"]["lr"] == 2e-3 and saved["data"]["clip_frames"] == 8 and saved["model"]["init"] == "scratch"
    # registered, active, with the run's recipe and log beside the weights, and listed
    (e,) = store.list_entries("mc3_112")
    assert e.active and e.source == f"train:{run}"
    assert e.val_loss == pytest.approx(best, rel=1e-4)
    assert (Path(e.path) / "recipe.toml").is_file() and (Path(e.path) / "log.csv").is_file()
    assert e.model_id in out.output
    listed = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert e.model_id in listed.output
    # the registered weights are the best epoch's, and load as the member
    best_sd = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    m = store.load("mc3_112")
    assert all(torch.equal(v, best_sd[k]) for k, v in m.net.state_dict().items())


@pytest.mark.slow
def test_resume_gives_the_same_weights(tiny_index, tmp_path):
    # Two DataLoader workers in one run, none in the other: the data do not depend on the workers.
    # One step per epoch (6 real + 6 fake training tubes, batch 12); Ranger with a Lookahead sync every
    # step and 3D CutMix, so that optimiser state, slow weights and batch-level draws must all resume.
    base = dict(optim__epochs=2, optim__optimizer="ranger", optim__lookahead_k=1, augment__cutmix=True,
                optim__batch_size=12, data__val_fraction=0.5)
    full = trainer.train(tiny_recipe(tiny_index, data__workers=2, **base), run_dir=tmp_path / "full",
                         echo=lambda s: None, show_progress=False)
    part = trainer.train(tiny_recipe(tiny_index, train__stop_after=1, **base), run_dir=tmp_path / "part",
                         echo=lambda s: None, show_progress=False)
    assert full.epochs_done == 2 and not full.stopped_early
    assert part.stopped_early and part.epochs_done == 1 and part.registered is None
    # `deepfake train --resume RUN_DIR` continues from the saved recipe and checkpoint
    from typer.testing import CliRunner

    from dfdc_cli.cli import app

    out = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "part"), "--workers", "0"])
    assert out.exit_code == 0, out.output + repr(out.exception)
    assert "resumed" in out.output
    bad = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "part"), "--lr", "1"])
    assert bad.exit_code != 0
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = pd.read_csv(tmp_path / "full" / "log.csv")
    lb = pd.read_csv(tmp_path / "part" / "log.csv")
    assert np.allclose(la["train_loss"], lb["train_loss"]) and np.allclose(la["val_loss"], lb["val_loss"])


@pytest.mark.slow
def test_torchrun_two_processes_ddp(tiny_index, tmp_path):
    """`torchrun --nproc-per-node 2` on CPU (gloo): DistributedDataParallel, one run folder, one
    registration, rank 0 alone writes, and alone shows a progress bar (both on a terminal here)."""
    import subprocess
    import sys

    launcher = tmp_path / "deepfake_launch.py"
    launcher.write_text("import sys\nfrom dfdc_cli.cli import main\nsys.argv[0] = 'deepfake'\nmain()\n")
    run = tmp_path / "ddp-run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--tee", "3", str(launcher),  # (--tee: each process's lines come prefixed with its rank)
           "train", "--member", "mc3_112", "--index", str(tiny_index), "--init", "scratch", "--epochs", "1",
           "--batch-size", "5", "--workers", "0", "--device", "cpu", "--run-dir", str(run),
           "--set", "data.clip_frames=8", "--set", "data.input_res=32", "--set", "data.val_fraction=0.25"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])),
               TTY_COMPATIBLE="1")  # (rich: draw bars as on a terminal)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("split by groups") == 1 and out.count("registered as") == 1  # only rank 0 reports
    assert "batch 5 x 2 process(es)" in out
    lines = out.splitlines()
    assert any(line.startswith("[default0]:") and "ETA" in line and "clips/s" in line for line in lines)
    assert not any(line.startswith("[default1]:") and ("ETA" in line or "epoch" in line) for line in lines)
    log = pd.read_csv(run / "log.csv")
    assert len(log) == 1 and not math.isnan(log["val_loss"][0])
    from dfdc_models import store

    assert len(store.list_entries("mc3_112")) == 1
    # rank 0 alone wrote: no stray run folders beside the one asked for
    from dfdc_cli.paths import runs_dir

    assert not runs_dir().exists() or not any(runs_dir().iterdir())


@pytest.mark.slow
def test_train_with_self_blended_fakes(tiny_index, tmp_path):
    """--fakes mixed: the index's fakes plus self-blended real tubes (tracks from the index)."""
    r = tiny_recipe(tiny_index, optim__epochs=1, data__fakes="mixed", data__selfblend_fraction=0.5)
    res = trainer.train(r, run_dir=tmp_path / "sb", echo=lambda s: None, show_progress=False)
    log = pd.read_csv(tmp_path / "sb" / "log.csv")
    assert len(log) == 1 and not math.isnan(log["val_loss"][0])
    assert res.registered is not None and res.registered.extra["fakes"] == "mixed"
    with pytest.raises(UserError, match="self-blend"):
        tiny_recipe(tiny_index, data__fakes="self-blended", selfblend__no_such_parameter=1)


# ----------------------------------------------------------------------------------------------
# The 2D member: validation scores a tube as scan does


def test_2d_validation_scores_tubes_like_predict(tiny_index):
    """evaluate() on the 2D member's validation items gives MemberModel.predict's p(fake) (scan's
    rule: the first 32 frames, even-indexed ones flipped, lower median of per-frame p(fake))."""
    from torch.utils.data import DataLoader

    from dfdc_cli.train import data
    from dfdc_cli.train import sampling
    from dfdc_models.registry import MemberModel
    from dfdc_models.specs import get_spec
    from dfdc_models.tiny import Tiny2d

    torch.manual_seed(0)
    model = MemberModel(get_spec("seresnext50_2d"), Tiny2d())  # not mirror-symmetric: the flips matter
    tubes = data.load_tubes(tiny_index)
    aug = {"val_crop": 224}
    val_ds = data.ClipDataset(tubes, clip_frames=8, res=32, train=False, kind="2d", aug=aug, frames_2d=FRAMES)
    items = sampling.val_items(tubes["y"].to_numpy())
    loader = DataLoader(val_ds, batch_size=5, sampler=items, num_workers=0)  # (a last, partial batch too)
    ys, ps = trainhooks.evaluate(model, loader, Runtime(torch.device("cpu")))
    assert ys.tolist() == tubes["y"].tolist() and ps.shape == (len(tubes),)

    stacks = torch.stack([val_ds[it][0] for it in items])  # (B, 3, 32, 32, 32) uint8
    assert stacks.shape == (len(tubes), 3, FRAMES, 32, 32)
    np.testing.assert_allclose(ps, model.predict(stacks).numpy(), rtol=0, atol=1e-6)
    # The rule spelled out frame by frame: flip frames 0, 2, ..., per-frame p(fake), the lower of the
    # two middle values of the 32.
    with torch.no_grad():
        frames = stacks.clone()
        frames[:, :, ::2] = frames[:, :, ::2].flip(-1)
        per_frame = torch.stack([torch.sigmoid(model.fake_logit(frames[:, :, t])).reshape(-1)
                                 for t in range(FRAMES)], 1)
        plain = torch.stack([torch.sigmoid(model.fake_logit(stacks[:, :, t])).reshape(-1) for t in range(FRAMES)], 1)
    lower_median = per_frame.sort(dim=1).values[:, (FRAMES - 1) // 2].numpy()
    np.testing.assert_allclose(ps, lower_median, rtol=0, atol=1e-6)
    # ... which is neither the unflipped median nor the single middle frame validation used to score.
    assert np.abs(ps - plain.sort(dim=1).values[:, (FRAMES - 1) // 2].numpy()).max() > 1e-4
    assert np.abs(ps - plain[:, FRAMES // 2].numpy()).max() > 1e-4


@pytest.mark.slow
def test_train_2d_member_end_to_end(tiny_index, tmp_path):
    """seresnext50_2d trains on single frames and validates on whole tubes: the logged validation
    loss is the balanced log loss of the registered model's predict (scan's rule) on the validation
    tubes."""
    from dfdc_cli.train import augment
    from dfdc_cli.faces.video import read_video
    from dfdc_models import store
    from dfdc_models.archs import get_arch

    sets = {
        "data": {"index": str(tiny_index), "input_res": 32, "val_fraction": 0.25, "workers": 0},
        "optim": {"epochs": 1, "batch_size": 6, "lr": 1e-3},
        "model": {"init": "scratch"},
        "train": {"seed": 0, "device": "cpu"},
    }
    r = recipes.resolve_recipe(member="seresnext50_2d", overrides=sets)
    run = tmp_path / "run2d"
    res = trainer.train(r, run_dir=run, echo=lambda s: None, show_progress=False)
    assert res.epochs_done == 1 and res.registered is not None
    log = pd.read_csv(run / "log.csv")
    assert len(log) == 1 and not math.isnan(log["val_loss"][0])

    val_tubes = json.loads((run / "split.json").read_text())["val_tubes"]
    tubes = pd.read_csv(tiny_index / TUBES_CSV).set_index("tube_path")
    y = np.array([1 if tubes.loc[p, "label"] == "FAKE" else 0 for p in val_tubes])
    assert len(val_tubes) == 6 and y.sum() == 3
    params = augment.val_clip_params(SIZE, SIZE, r["augment"])
    mode = get_arch("seresnext50").interpolation  # training resizes 2D frames as scan does
    x = torch.stack([augment.apply_clip_params(read_video(p)[:32], params, 32, quantise=False, mode=mode)
                     for p in val_tubes])
    m = store.load("seresnext50_2d")
    p = m.predict(x).numpy()
    expected = trainhooks.balanced_log_loss(y, p)
    assert res.history[0]["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert log["val_loss"][0] == pytest.approx(expected, rel=1e-5)


def test_validation_hook_selects_best_by_loss_auc_or_last():
    import math
    from types import SimpleNamespace

    from dfdc_cli.train.hooks import Validation

    rows = [{"val_loss": 0.60, "val_auc": 0.70}, {"val_loss": 0.55, "val_auc": 0.65},
            {"val_loss": 0.80, "val_auc": 0.90}, {"val_loss": 0.90, "val_auc": 0.85}]

    def best_epoch(select: str) -> int:
        hook = Validation(loader=object(), every=10**6, select=select)  # rows given: no validation pass
        loop = SimpleNamespace(epochs=10**6, best={"epoch": 0, "val_loss": math.inf})
        for e, row in enumerate(rows):
            loop.epoch, loop.row = e, dict(row)
            hook.after_epoch(loop)
        return loop.best["epoch"]

    assert best_epoch("val_loss") == 2
    assert best_epoch("val_auc") == 3
    assert best_epoch("last") == 4
    with pytest.raises(UserError, match="train.select must be one of val_loss, val_auc, last"):
        recipes.resolve_recipe(member="mc3_112", overrides={"train": {"select": "best"}})
    assert recipes.resolve_recipe(member="resnet18_160")["train"]["select"] == "last"
