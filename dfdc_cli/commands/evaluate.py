"""`deepfake eval`: metrics of each member and the ensemble on labelled videos, and a report folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

HELP = """Measure the members and the ensemble on labelled videos.

Labels come from --val (a CSV with columns filename,label; label FAKE/REAL or 1/0) and/or one or
more --metadata files (DFDC metadata.json); video paths are relative to the file's folder. The videos
go through the same pipeline as `deepfake scan` (tubes are cached and reused).

Reports log loss (p clipped to [0.001, 0.999]), ROC AUC, average precision, accuracy and balanced
accuracy at 0.5, EER and counts, per member and for the ensemble, at video and at tube level.
Writes a report folder: metrics.json, videos.csv, tubes.csv, scan.json, roc.png, calibration.png,
summary.md and summary.html.

Videos with no face or that cannot be read keep p = 0.5 at video level (as the seed's submission
did) and are counted in the report. Exit code 0 when the report was written, 2 on a usage problem.
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
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                              help="Extraction/decoding workers (default: per core)."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Tubes per forward pass."),
        precision: str = typer.Option("auto", "--precision",
                                      help="fp16, bf16 or fp32 (auto: fp16 on GPU, fp32 on CPU)."),
    ) -> None:
        from ..errors import UserError
        from ..evaluate import default_out_dir, evaluate_results, gather_labels, write_report
        from ..ui import console, err_console, fail_line, progress, warn
        from .scan import make_scanner

        if precision not in ("auto", "fp16", "bf16", "fp32"):
            raise UserError("--precision must be auto, fp16, bf16 or fp32")
        items, missing = gather_labels(val, metadata or [])
        if missing:
            warn(f"{len(missing)} labelled videos are missing and left out (first: {missing[0].video})")
        scanner = make_scanner(members, weights, 0.5, device, workers, batch_size, precision)
        results = []
        with progress(transient=True) as bar:
            task = bar.add_task("eval", total=len(items), status="")
            for r, it in zip(scanner.scan_iter([it.video for it in items]), items):
                r.label = "FAKE" if it.label else "REAL"
                results.append(r)
                if r.status == "error":
                    fail_line(r.video, r.reason)
                bar.update(task, advance=1, status=r.name)
        report = evaluate_results(results, items, scanner.names, bootstrap=bootstrap, seed=seed)
        import time

        meta = {
            **scanner.describe(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "sources": [str(val)] * (val is not None) + [str(m) for m in (metadata or [])],
            "missing": len(missing),
            "bootstrap": bootstrap,
            "seed": seed,
        }
        out_dir = out or default_out_dir()
        write_report(out_dir, results, items, report, meta)
        console.print(metrics_table(report["video"], "video level"))
        console.print(metrics_table(report["tube"], "tube level"))
        c = report["counts"]
        err_console.print(
            f"{c['videos']} videos ({c['fake']} FAKE, {c['real']} REAL): {c['no_face']} no face, "
            f"{c['error']} failed (scored 0.5); {c['tubes']} tubes. Report: {out_dir}", highlight=False)


def metrics_table(level, title: str):
    from rich.table import Table

    from ..evaluate import COLUMNS, ENSEMBLE, summary_rows

    t = Table(title=f"deepfake eval, {title}", title_justify="left")
    t.add_column("model")
    for _, h in COLUMNS:
        t.add_column(h, justify="right")
    t.add_column("n (F/R)", justify="right")
    for row in summary_rows(level):
        style = "bold" if row[0] == ENSEMBLE else None
        t.add_row(*row, style=style)
    return t
