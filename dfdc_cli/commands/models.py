"""`deepfake models`: list, import, activate and remove the registered weights of ensemble members."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dfdc_cli import paths
from dfdc_cli.errors import UserError
from dfdc_cli.ui import console, middle_ellipsis
from dfdc_models.specs import MEMBERS, get_spec

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
    from dfdc_models import builtin, store

    entries = store.list_entries()
    broken = store.damaged()
    broken_members = {d.member for d in broken}
    by_member: dict[str, list] = {}
    for e in entries:
        by_member.setdefault(e.member, []).append(e)
    names = list(MEMBERS) + [m for m in [*by_member, *sorted(broken_members)] if m not in MEMBERS]
    names = list(dict.fromkeys(names))
    built_in = builtin.member()
    if built_in and built_in not in names:
        names.append(built_in)
    name_w = max(len(n) for n in names)
    caption = "* = active" if all_entries else ""
    if built_in:
        if broken:
            in_use = "not in use while the registry is damaged"
        elif not entries:
            in_use = "in use: nothing is registered"
        else:
            in_use = "not in use: registered models take precedence"
        caption = (caption + "; " if caption else "") + f"built in = ships with the package ({in_use}); card: {builtin.CARD}"

    def build(network: bool):
        table = _compact_table(f"Model registry: {paths.models_dir()}", caption or None)
        table.add_column("member", no_wrap=True, min_width=name_w)
        if all_entries:
            table.add_column("id", no_wrap=True, min_width=13)
        else:
            if network:
                table.add_column("network", no_wrap=True)
            table.add_column("#", justify="right", no_wrap=True)
            table.add_column("active", no_wrap=True, min_width=12)
        table.add_column("loss", justify="right", no_wrap=True)
        table.add_column("date", no_wrap=True, min_width=10)
        if all_entries:
            table.add_column("source", no_wrap=True)
        for row in rows_of(network):
            table.add_row(*row)
        return table

    # the source's start (import: / train:) and its file name matter most
    source_w = max(20, console.width - name_w - 13 - 6 - 10 - 2 * 4)

    def rows_of(network: bool) -> list[list[str]]:
        out = []
        for name in names:
            spec = get_spec(name)
            rows = by_member.get(name, [])
            if all_entries:
                for e in rows:
                    vl = "" if e.val_loss is None else f"{e.val_loss:.4f}"
                    out.append([name, e.model_id + ("*" if e.active else ""), vl, e.date[:10],
                                _short_source(e.source, source_w)])
                for d in broken:
                    if d.member == name:
                        out.append([name, "[red]damaged[/red]", "", "", _short_source(str(d.path), source_w)])
                if name == built_in:
                    out.append([name, "built in", "", "", _short_source(str(builtin.folder()), source_w)])
                elif not rows:
                    out.append([name, "[dim]-[/dim]", "", "", ""])
                continue
            act = next((e for e in rows if e.active), None)
            base = [name, *([f"{spec.arch}/{spec.res}"] if network else []), str(len(rows))]
            if name in broken_members:
                out.append([*base, "[red]damaged[/red]", "", ""])
            elif act is None and name == built_in:
                out.append([*base, "built in", "", ""])
            elif act is None:
                out.append([*base, "[dim]none[/dim]", "", ""])
            else:
                vl = "" if act.val_loss is None else f"{act.val_loss:.4f}"
                out.append([*base, act.model_id, vl, act.date[:10]])
        return out

    table = build(network=True)
    if not all_entries and not _fits(table, console.width):
        # The member's name says its network and resolution; cut cells would say less than none.
        table = build(network=False)
    console.print(table)
    from dfdc_cli.ui import err_console

    for d in broken:
        err_console.print(f"[red]damaged[/red] {d.member}: {d.line()}", highlight=False, soft_wrap=True)
    if broken:
        err_console.print("scan and eval refuse a damaged member until it is repaired, removed or imported again",
                          highlight=False)


def _fits(table, width: int) -> bool:
    import io

    from rich.console import Console

    return Console(width=10_000, file=io.StringIO()).measure(table).maximum <= width


def _short_source(source: str, width: int) -> str:
    """``import:/a/long/path/j3d_e1_l0.1374.model`` as ``import:j3d_e1_l0.1374.model`` when the whole
    does not fit: the file (or run folder) name is what tells entries apart."""
    if len(source) <= width:
        return source
    kind, sep, rest = source.partition(":")
    if sep and rest:
        source = f"{kind}:{Path(rest).name}"
    return middle_ellipsis(source, width)


IMPORT_HELP = """Register checkpoint files: the seed's released .model/.PTH files, or ones from
`deepfake train`. PATH may be a file or a folder (searched recursively for .model, .pth, .pt, .ckpt,
.bin and .tar files), so `deepfake models import path/to/release/` registers all eight members.

Each file is loaded safely (weights_only), checked key for key and shape for shape, hashed and
stored. Its member is recognised from its layout; the pairs that share one (i3d_224 /
i3d_cutmix_224, mc3_112 / mc3_224, r2plus1d_112 / r2plus1d_cutmix_112) are told apart by the
released file name. A file that fits more than one member is reported with the candidates:
import it again with --as MEMBER. A file already registered is not registered again.

Exit code: 0 when every file was registered (or already was), 1 when any file failed.
"""


@models_app.command("import", help=IMPORT_HELP)
def import_cmd(
    paths: List[Path] = typer.Argument(..., help="Checkpoint files or folders.", show_default=False),
    member: Optional[str] = typer.Option(None, "--as", help="Register every file as this member (e.g. "
                                         "i3d_224, or <arch>_<res>) instead of recognising it.",
                                         show_default=False),
    val_loss: Optional[float] = typer.Option(None, "--val-loss", help="Validation loss to record, for a "
                                             "single file (default: from the file name or the checkpoint).",
                                             show_default=False),
    no_activate: bool = typer.Option(False, "--no-activate", help="Register without making it active."),
) -> None:
    from dfdc_cli.ui import err_console, progress
    from dfdc_models import store

    if member is not None:
        from dfdc_models.specs import get_spec

        try:
            get_spec(member)
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
    files, skipped = store.checkpoint_files(paths)
    if not files:
        raise UserError(f"no checkpoint files ({', '.join(store.WEIGHT_SUFFIXES)}) in "
                        f"{', '.join(map(str, paths))}")
    if val_loss is not None and len(files) > 1:
        raise UserError(f"--val-loss is for one file; {len(files)} were given")
    results = []
    with progress(transient=True) as bar:
        task = bar.add_task("import", total=len(files), status="")
        for r in store.import_files(files, member, val_loss=val_loss, activate=not no_activate):
            if not r.ok:
                err_console.print(f"[red]failed[/red] {r.reason}", highlight=False, soft_wrap=True)
            results.append(r)
            bar.update(task, advance=1, status=r.path.name)
    print_imported(results, skipped)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


def _compact_table(title: str, caption: Optional[str] = None):
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                 title=title, title_justify="left", title_style="bold", caption=caption, caption_justify="left")


def print_imported(results, skipped) -> None:
    """The table of registered files (stdout) and one summary line (stderr)."""
    from dfdc_cli.ui import console, err_console, middle_ellipsis

    order = {m: i for i, m in enumerate(MEMBERS)}
    done = sorted((r for r in results if r.ok), key=lambda r: (order.get(r.entry.member, len(order)), r.entry.member))
    new = sum(r.new for r in done)
    if done:
        member_w = max(len(r.entry.member) for r in done)
        # What the other columns take (loss, id, state and the gaps): the file name gets the rest.
        file_w = max(16, console.width - member_w - 6 - 13 - 7 - 2 * 4)
        t = _compact_table(f"Model registry: {paths.models_dir()}", "* = active")
        t.add_column("member", no_wrap=True)
        t.add_column("file", no_wrap=True)
        t.add_column("loss", justify="right", no_wrap=True)
        t.add_column("id (sha256)", no_wrap=True)
        t.add_column("", no_wrap=True)
        for r in done:
            e = r.entry
            t.add_row(e.member, middle_ellipsis(r.path.name, file_w), "" if e.val_loss is None else f"{e.val_loss:.4f}",
                      e.model_id + ("*" if e.active else ""), "new" if r.new else "already")
        console.print(t)
    if skipped:
        names = ", ".join(f.name for f in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        err_console.print(f"[dim]skipped {len(skipped)} files not named like weights: {names}[/dim]",
                          highlight=False)
    failed = len(results) - len(done)
    if done and not new and not failed:
        err_console.print(f"nothing new: all {len(done)} files were already registered", highlight=False)
    else:
        err_console.print(f"{len(results)} files: {new} registered, {len(done) - new} already registered, "
                          f"{failed} failed", highlight=False)


@models_app.command("activate")
def activate_cmd(
    member: str = typer.Argument(..., help="Member name."),
    model_id: str = typer.Argument(..., help="Registered model id (a unique prefix is enough)."),
) -> None:
    """Make a registered model the one MEMBER uses."""
    from dfdc_models import store

    e = store.activate(member, model_id)
    console.print(f"{e.member}: {e.model_id} is active", highlight=False)


@models_app.command("remove")
def remove_cmd(
    member: str = typer.Argument(..., help="Member name."),
    model_id: str = typer.Argument(..., help="Registered model id (a unique prefix is enough)."),
) -> None:
    """Delete a registered model (its weights folder)."""
    from dfdc_models import store

    e = store.remove(member, model_id)
    now = store.active(e.member)
    tail = f"; active now: {now.model_id}" if now else "; nothing registered for it now"
    console.print(f"{e.member}: removed {e.model_id}{tail}", highlight=False)


CALIBRATE_HELP = """Fit the calibration of each evaluated member's score on the labelled videos of a
`deepfake eval` report (its scan.json: held-out videos the model was not trained or tuned on) and
record it with the model that was evaluated: in its registry entry's manifest.json, or in the
built-in model's builtin.json. From then on `deepfake scan` shows that model's calibrated p(fake)
and its UNSURE band.

Writes calibration.json (the fit, log loss and calibration error before and after, in sample and
5-fold cross-validated, and what the band does on these videos) and calibration-MEMBER.png
(reliability before and after, scores by class with the band) into the report folder.

Map (--method): platt (default: two parameters, right for the 60-150 videos of a held-out set),
temperature (one) or isotonic (steps; needs many more videos). Band (--band): see below.

Exit code: 0 when every member's calibration was recorded, 2 on a problem (e.g. too few videos of
a class, or the model changed since the evaluation).
"""


@models_app.command("calibrate", help=CALIBRATE_HELP)
def calibrate_cmd(
    report: Path = typer.Argument(..., help="A `deepfake eval` report folder (or its scan.json).",
                                  show_default=False),
    method: str = typer.Option("platt", "--method", help="platt, temperature or isotonic."),
    band: str = typer.Option("odds:2", "--band", help="UNSURE band rule: 'odds:K' (FAKE when the calibrated "
                             "odds are K:1 or more for fake, REAL when K:1 for real, UNSURE between), "
                             "'rates:FPR,FNR' (the narrowest band calling at most FPR of the held-out REAL "
                             "videos FAKE and FNR of the FAKE ones REAL) or 'none'."),
    member: Optional[List[str]] = typer.Option(None, "--member", "-m", help="Only these members of the "
                                               "report (default: all).", show_default=False),
    builtin_dir: Optional[Path] = typer.Option(None, "--builtin-dir", help="Where the built-in model's "
                                               "builtin.json is (default: the package's models/builtin).",
                                               show_default=False),
    to_builtin: bool = typer.Option(False, "--to-builtin", help="Record it in the built-in model (of the same "
                                    "member) whatever model was evaluated: for a registered model that "
                                    "bench/export_builtin.py exported as the built-in one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Fit, report and plot, but record nothing."),
) -> None:
    from dfdc_cli.evaluate.calibrate import calibrate_eval_report, record, summary_line
    from dfdc_cli.ui import console, err_console
    from dfdc_models.calibration import Calibration

    names = [n.strip() for v in member or [] for n in v.split(",") if n.strip()] or None
    doc, folder = calibrate_eval_report(report, method, band, names)
    for m, rec in doc["members"].items():
        console.print(summary_line(m, Calibration.from_dict(rec["calibration"])), highlight=False)
    err_console.print(f"wrote {folder / 'calibration.json'} and {len(doc['members'])} plots", highlight=False)
    if dry_run:
        err_console.print("--dry-run: nothing recorded", highlight=False)
        return
    for line in record(doc, builtin_dir, to_builtin):
        console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
