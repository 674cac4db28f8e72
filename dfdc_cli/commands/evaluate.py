"""`deepfake eval`: metrics of each member and the ensemble on labelled videos, and a report folder."""

from __future__ import annotations

import io
from pathlib import Path
from typing import List, Mapping, Optional

import typer

from dfdc_cli.commands.scan import plain_table, member_label, scan_with_progress, split_members, warn_missing_2d
from dfdc_cli.runtime import DEVICE_HELP, PRECISION_HELP
from dfdc_cli.scan.options import ScanOptions

HELP = """Measure the members and the ensemble on labelled videos.

Labels come from --val (a CSV with columns filename,label; label FAKE/REAL or 1/0) and/or one or
more --metadata files (DFDC metadata.json); video paths are relative to the file's folder. The videos
go through the same pipeline as `deepfake scan` (tubes and scores are cached and reused).

With --index DIR the tubes of an existing `deepfake extract` index are scored instead (nothing is
extracted) and, without --val/--metadata, the index's own labels are used (its self-blended
copies count as FAKE videos).

Reports log loss (p clipped to [0.001, 0.999]), ROC AUC, average precision, accuracy and balanced
accuracy at 0.5, EER and counts, per member and for the ensemble, at video and at tube level.
Writes a report folder: metrics.json, videos.csv, tubes.csv, scan.json, roc.png, calibration.png,
summary.md and summary.html.

With --calibrate, also fits each member's calibration on these videos (they must be held out from
training and tuning) and writes calibration.json and calibration-MEMBER.png into the report
(see `deepfake models calibrate --help`, which fits from a report and records it with the model).

Videos with no face or that cannot be read keep p = 0.5 at video level (as the seed's submission
did) and are counted in the report. Exit code 0 when the report was written, 1 when a file of it could not be
written (a full disk: one line says which), 2 on a usage problem.
"""


def register(app: typer.Typer) -> None:
    @app.command("eval", help=HELP)
    def eval_cmd(
        val: Optional[Path] = typer.Option(None, "--val", help="CSV of filename,label.", show_default=False),
        metadata: Optional[List[Path]] = typer.Option(
            None, "--metadata", help="DFDC metadata.json (or its folder); repeatable.", show_default=False),
        members: Optional[List[str]] = typer.Option(
            None, "--members", "-m", help="Members to evaluate, comma-separated or repeated. "
            "Default: every member with a registered model.", show_default=False),
        weights: Optional[str] = typer.Option(None, "--weights", help="Ensemble weights, e.g. "
                                              "'i3d_224=2' (others weigh 1). Default: equal.",
                                              show_default=False),
        out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: "
                                           "./eval-YYYYmmdd-HHMMSS).", show_default=False),
        bootstrap: int = typer.Option(0, "--bootstrap", min=0, help="Bootstrap resamples for 95% "
                                      "confidence intervals (0: none; 1000 is typical)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
        device: str = typer.Option("auto", "--device", help=DEVICE_HELP + "."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                              help="Extraction/decoding workers (default: per core)."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Tubes per forward pass."),
        precision: str = typer.Option("auto", "--precision",
                                      help=PRECISION_HELP + "; auto: fp16."),
        index: Optional[Path] = typer.Option(
            None, "--index", help="Score the tubes of this `deepfake extract` index instead of "
            "extracting; labels from the index unless --val/--metadata are given.", show_default=False),
        rescore: bool = typer.Option(False, "--rescore", help="Recompute member scores even when "
                                     "the score cache has them."),
        calibrate: bool = typer.Option(False, "--calibrate", help="Also fit each member's calibration and "
                                       "UNSURE band on these videos (calibration.json + plots in the report; "
                                       "`deepfake models calibrate REPORT` records it with the model)."),
        method: str = typer.Option("platt", "--method", help="With --calibrate: platt, temperature or isotonic."),
        band: str = typer.Option("odds:2", "--band", help="With --calibrate: the UNSURE band rule (see "
                                 "`deepfake models calibrate --help`)."),
    ) -> None:
        from dfdc_cli.evaluate.report import (
            default_out_dir, eval_set, evaluate_results, label_results, report_meta, write_report,
        )
        from dfdc_cli.faces.index import resolve_index, table_paths
        from dfdc_cli.commands.outputs import check_report_dir
        from dfdc_cli.scan.factory import make_scanner
        from dfdc_cli.ui import console, err_console

        if calibrate:  # a bad --method/--band is a usage error before the scan, not after it
            from dfdc_cli.evaluate.calibrate import FITS, parse_band
            from dfdc_cli.errors import UserError

            parse_band(band)
            if method not in FITS:
                raise UserError(f"--method: {method!r} is not one of {', '.join(FITS)}")
        es = eval_set(val, metadata or [], index)
        out_dir = check_report_dir(out or default_out_dir(), "--out",
                                   [*es.videos, *([val] if val else []), *(metadata or []),
                                    *(table_paths(resolve_index(index)) if index is not None else ())])
        options = ScanOptions(members=split_members(members), weights=weights, device=device, workers=workers,
                              batch_size=batch_size, precision=precision, rescore=rescore)
        scanner = make_scanner(options, items=es.items)
        if es.items is not None:
            warn_missing_2d(scanner, es.items)
        results = scan_with_progress(scanner, es.videos, "eval")
        label_results(results, es.labels)
        report = evaluate_results(results, es.labels, scanner.names, bootstrap=bootstrap, seed=seed)
        meta = report_meta(scanner.describe(), val, metadata or [], index, es.missing, bootstrap, seed)
        try:
            write_report(out_dir, results, es.labels, report, meta)
        except OSError as exc:  # a full disk: the tables below are still shown
            from dfdc_cli.ui import fail_line

            fail_line(str(exc.filename or out_dir), f"the report is incomplete ({exc.strerror or exc})")
            report_failed = True
        else:
            report_failed = False
        tables, short = metrics_tables(report, console.width)
        for table in tables:
            console.print(table)
        if short:
            from dfdc_cli.commands.scan import member_label

            names = [n for n in report["video"] if member_label(n) != n]
            err_console.print("models: " + ", ".join(f"{member_label(n)} = {n}" for n in names), highlight=False)
        c = report["counts"]
        err_console.print(
            f"{c['videos']} videos ({c['fake']} FAKE, {c['real']} REAL): {c['no_face']} no face, "
            f"{c['error']} failed (scored 0.5); {c['tubes']} tubes. Report: {out_dir}", highlight=False)
        if calibrate:
            from dfdc_cli.evaluate.calibrate import calibrate_report, summary_line
            from dfdc_cli.errors import UserError
            from dfdc_models.calibration import Calibration

            try:
                doc = calibrate_report([r.to_dict() for r in results], meta["models"], out_dir, method, band,
                                       source=str(Path(out_dir).resolve()))
            except UserError as exc:  # the report is written; the fit alone failed
                from dfdc_cli.ui import warn

                warn(f"no calibration fitted: {exc}")
                raise typer.Exit(1) from None
            for m, rec in doc["members"].items():
                console.print(summary_line(m, Calibration.from_dict(rec["calibration"])), highlight=False)
            err_console.print(f"calibration: {Path(out_dir) / 'calibration.json'}; record it with the model: "
                              f"deepfake models calibrate {out_dir}", highlight=False)
        if report_failed:
            raise typer.Exit(1)


def metrics_tables(report: dict, width: int) -> tuple[list, bool]:
    """The video- and tube-level tables, in the first layout whose widest line fits ``width``:
    each model on one line with whole names; else each interval on a line of its own under its
    figure (as scan keeps a row to a line); else that with short labels (R21D-CM) rather than
    truncations that make two members look alike (r2plus1…). Returns the tables and whether they
    use short labels (the caller prints the legend)."""
    from rich.console import Console

    levels = [(report["video"], "video level"), (report["tube"], "tube level")]
    measure = Console(width=10_000, file=io.StringIO())
    layouts = [(False, False), (False, True), (True, True)]
    for short, split in layouts:
        tables = [metrics_table(level, title, short, split) for level, title in levels]
        if all(measure.measure(t).maximum <= width for t in tables):
            return tables, short
    return tables, short  # the narrowest layout, wrapped by rich where even that does not fit


def _interval(fig: Mapping, key: str) -> str:
    """``lo–hi`` of a figure's bootstrap interval (two decimals: six columns fit 80), or ""."""
    from dfdc_cli.evaluate.report import finite_or_none

    ci = fig.get("ci", {}).get(key)
    if not ci or finite_or_none(ci.get("lo")) is None:
        return ""
    return f"{ci['lo']:.2f}–{ci['hi']:.2f}"


def metrics_table(level: Mapping[str, Mapping], title: str, short: bool = False, split: bool = False):
    """One level's metrics, a model to a row. ``short``: the members' short labels. ``split``:
    the 95% intervals on a dim line of their own under each model's figures (and the counts of
    FAKE/REAL there), instead of beside each figure."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from dfdc_cli.evaluate.report import columns, ENSEMBLE, fmt, summary_rows

    split = split and any(_interval(fig, k) for fig in level.values() for k, _ in columns())
    t = plain_table(f"deepfake eval, {title}")
    if split:  # one space between columns: eight columns of intervals fit 80
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0),
                  title=t.title, title_justify="left", title_style="bold")
    t.add_column("model", no_wrap=True)
    for _, h in columns():
        t.add_column(h, justify="right", no_wrap=True)
    t.add_column("n (F/R)" if not split else "n", justify="right", no_wrap=True)
    for row, (name, fig) in zip(summary_rows(level), level.items()):
        label = member_label(name) if short else name
        style = "bold" if name == ENSEMBLE else None
        if not split:
            t.add_row(label, *row[1:], style=style)
            continue
        t.add_row(label, *[fmt(fig.get(k), 3) for k, _ in columns()], str(fig["n"]), style=style)
        t.add_row(Text("  95% CI", style="dim"), *[Text(_interval(fig, k), style="dim") for k, _ in columns()],
                  Text(f"{fig['n_fake']}F/{fig['n_real']}R", style="dim"))
    return t
