"""`deepfake models`: list, import, activate and remove the registered weights of ensemble members."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

models_app = typer.Typer(
    name="models",
    help="The model registry: which weights each ensemble member uses.",
    no_args_is_help=True,
)


@models_app.command("list")
def list_cmd(
    all_entries: bool = typer.Option(False, "--all", "-a", help="One row per registered model, with its source."),
) -> None:
    """Show the eight seed members (and any other registered architecture/resolution), what is
    registered for each and which model is active."""
    from rich import box
    from rich.table import Table

    from dfdc_cli import paths
    from dfdc_cli.ui import console
    from models import store
    from models.specs import MEMBERS, get_spec

    entries = store.list_entries()
    by_member: dict[str, list] = {}
    for e in entries:
        by_member.setdefault(e.member, []).append(e)
    names = list(MEMBERS) + [m for m in by_member if m not in MEMBERS]

    table = Table(box=box.SIMPLE_HEAD, title=f"Model registry: {paths.models_dir()}", title_justify="left",
                  caption="* = active" if all_entries else None, caption_justify="left", pad_edge=False)
    table.add_column("member", no_wrap=True, min_width=max(len(n) for n in names))
    if all_entries:
        table.add_column("id", no_wrap=True, min_width=13)
    else:
        table.add_column("network", overflow="ellipsis", no_wrap=True)
        table.add_column("#", justify="right", no_wrap=True)
        table.add_column("active", no_wrap=True, min_width=12)
    table.add_column("val loss" if all_entries else "loss", justify="right", no_wrap=True)
    table.add_column("date", no_wrap=True, min_width=10)
    if all_entries:
        table.add_column("source", overflow="fold")
    for name in names:
        spec = get_spec(name)
        rows = by_member.get(name, [])
        if all_entries:
            for e in rows:
                vl = "" if e.val_loss is None else f"{e.val_loss:.4f}"
                table.add_row(name, e.model_id + ("*" if e.active else ""), vl, e.date[:10], e.source)
            if not rows:
                table.add_row(name, "[dim]-[/dim]", "", "", "")
            continue
        act = next((e for e in rows if e.active), None)
        base = [name, f"{spec.arch}/{spec.res}", str(len(rows))]
        if act is None:
            table.add_row(*base, "[dim]none[/dim]", "", "")
        else:
            vl = "" if act.val_loss is None else f"{act.val_loss:.4f}"
            table.add_row(*base, act.model_id, vl, act.date[:10])
    console.print(table)


@models_app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="A checkpoint: the seed's .model/.PTH file or one from `deepfake train`."),
    member: str = typer.Option(..., "--as", help="Member to register it as (e.g. i3d_224, or <arch>_<res>)."),
    val_loss: Optional[float] = typer.Option(None, "--val-loss", help="Validation loss to record "
                                             "(default: from the file name or the checkpoint)."),
    no_activate: bool = typer.Option(False, "--no-activate", help="Register without making it active."),
) -> None:
    """Verify that FILE loads strictly into MEMBER's network, hash it and register it."""
    from dfdc_cli.ui import console
    from models import store

    e = store.import_checkpoint(file, member, val_loss=val_loss, activate=not no_activate)
    state = "active" if e.active else "registered (not active)"
    console.print(f"{e.member}: {e.model_id} {state} - {e.parameter_count:,} parameters, "
                  f"sha256 {e.sha256[:16]}..., stored in {e.path}", highlight=False)


@models_app.command("activate")
def activate_cmd(
    member: str = typer.Argument(..., help="Member name."),
    model_id: str = typer.Argument(..., help="Registered model id (a unique prefix is enough)."),
) -> None:
    """Make a registered model the one MEMBER uses."""
    from dfdc_cli.ui import console
    from models import store

    e = store.activate(member, model_id)
    console.print(f"{e.member}: {e.model_id} is active", highlight=False)


@models_app.command("remove")
def remove_cmd(
    member: str = typer.Argument(..., help="Member name."),
    model_id: str = typer.Argument(..., help="Registered model id (a unique prefix is enough)."),
) -> None:
    """Delete a registered model (its weights folder)."""
    from dfdc_cli.ui import console
    from models import store

    e = store.remove(member, model_id)
    now = store.active(e.member)
    tail = f"; active now: {now.model_id}" if now else "; nothing registered for it now"
    console.print(f"{e.member}: removed {e.model_id}{tail}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
