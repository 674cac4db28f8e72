"""`deepfake eval`: metrics of each member and the ensemble on labelled videos, and a report folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..runtime import DEVICE_HELP, PRECISION_HELP

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
    ) -> None:
        from ..errors import UserError
        from ..evaluate import default_out_dir, evaluate_results, gather_labels, match_index, read_labels, write_report
        from ..scan import index_items, items_extractor
        from ..ui import console, err_console, warn
        from .scan import make_scanner, scan_with_progress, warn_missing_2d

        extractor = None
        if index is not None:
            labels = read_labels(val, metadata or []) if (val is not None or metadata) else None
            found, items, missing, unlabelled = match_index(index_items(index), labels)
            if unlabelled:
                warn(f"{unlabelled} videos of the index have no label and are left out")
            if missing:
                warn(f"{len(missing)} labelled videos are not in the index and are left out "
                     f"(first: {missing[0].video})")
            if not items:
                raise UserError(f"--index {index}: no labelled video to evaluate")
            extractor = items_extractor(found)
            videos = [Path(e.video) for e in found]
        else:
            items, missing = gather_labels(val, metadata or [])
            if missing:
                warn(f"{len(missing)} labelled videos are missing and left out (first: {missing[0].video})")
            videos = [it.video for it in items]
        scanner = make_scanner(members, weights, 0.5, device, workers, batch_size, precision,
                               extractor=extractor, rescore=rescore)
        if index is not None:
            warn_missing_2d(scanner, found)
        results = scan_with_progress(scanner, videos, "eval")
        for r, it in zip(results, items):
            r.label = "FAKE" if it.label else "REAL"
        report = evaluate_results(results, items, scanner.names, bootstrap=bootstrap, seed=seed)
        import time

        meta = {
            **scanner.describe(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "sources": [str(val)] * (val is not None) + [str(m) for m in (metadata or [])]
            + [f"index {index}"] * (index is not None),
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
