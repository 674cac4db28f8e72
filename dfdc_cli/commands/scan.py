"""`deepfake scan`: verdicts on videos from the registered ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

HELP = """Score videos with the ensemble: p(fake) per video, per member and per face.

Face tubes are extracted with the seed's inference settings (first 100 frames, long side 480 px,
MTCNN thresholds 0.8/0.8/0.9, at most 5 faces) into the scan cache and reused on later runs.
Each registered member scores every tube; per member the mean over faces, per video the weighted
mean over members, clipped to [0.001, 0.999]. A video with no face gets the prior 0.5 and no
verdict (status no_face); an unreadable one gets 0.5 and status error.

Exit code: 0 when every video was scanned (a video with no face counts as scanned), 1 when any
video could not be read, 2 on a usage problem (e.g. no model registered).
"""


def split_members(values: Optional[List[str]]) -> Optional[list[str]]:
    """``--members a,b --members c`` -> [a, b, c]; None when not given."""
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out.extend(s.strip() for s in v.split(",") if s.strip())
    return out or None


def make_scanner(members, weights, threshold, device, workers, batch_size, precision="auto"):
    """Build a Scanner from CLI options (shared with `deepfake eval`)."""
    from ..errors import UserError
    from ..scan import NO_MODEL_HELP, Scanner, available_members, parse_weights

    names = split_members(members)
    if names is None:
        names = available_members()
        if not names:
            raise UserError(NO_MODEL_HELP)
    else:
        from models.specs import get_spec

        for n in names:
            try:
                get_spec(n)
            except KeyError as exc:
                raise UserError(str(exc.args[0])) from None
    w = parse_weights(weights, names)
    return Scanner(members=names, weights=w, threshold=threshold, device=device, workers=workers,
                   batch_size=batch_size, precision=precision)


def register(app: typer.Typer) -> None:
    @app.command("scan", help=HELP)
    def scan_cmd(
        paths: List[Path] = typer.Argument(..., help="Video files or folders (searched recursively).",
                                           show_default=False),
        members: Optional[List[str]] = typer.Option(
            None, "--members", "-m", help="Members to use, comma-separated or repeated. "
            "Default: every member with a registered model.", show_default=False),
        weights: Optional[str] = typer.Option(
            None, "--weights", help="Member weights, e.g. 'i3d_224=2,mc3_112=0.5' (others weigh 1; "
            "0 leaves a member out). Default: equal.", show_default=False),
        threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0,
                                        help="Verdict FAKE when p(fake) >= this."),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                              help="Extraction/decoding workers (default: per core)."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Tubes per forward pass."),
        precision: str = typer.Option("auto", "--precision",
                                      help="fp16, bf16 or fp32 (auto: fp16 on GPU, fp32 on CPU)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure (per video, "
                                                "member and face) as JSON.", show_default=False),
        csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write a DFDC submission "
                                               "(filename,label = p(fake)).", show_default=False),
    ) -> None:
        from ..atomic import write_json
        from ..errors import UserError
        from ..scan import expand_paths, to_json, write_submission
        from ..ui import console, err_console, fail_line, progress

        if precision not in ("auto", "fp16", "bf16", "fp32"):
            raise UserError("--precision must be auto, fp16, bf16 or fp32")
        videos = expand_paths(paths)
        if not videos:
            raise UserError("no video files found in the given paths")
        scanner = make_scanner(members, weights, threshold, device, workers, batch_size, precision)
        results = []
        with progress(transient=True) as bar:
            task = bar.add_task("scan", total=len(videos), status="")
            for r in scanner.scan_iter(videos):
                results.append(r)
                if r.status == "error":
                    fail_line(r.video, r.reason)
                bar.update(task, advance=1, status=r.name)
        console.print(results_table(results, scanner.names, threshold))
        n_err = sum(r.status == "error" for r in results)
        n_nf = sum(r.status == "no_face" for r in results)
        n_fake = sum(r.verdict == "FAKE" for r in results)
        n_real = sum(r.verdict == "REAL" for r in results)
        err_console.print(
            f"{len(results)} videos: {n_fake} FAKE, {n_real} REAL, {n_nf} no face, {n_err} failed "
            f"(members: {', '.join(scanner.names)})", highlight=False)
        if json_out is not None:
            write_json(json_out, to_json(results, scanner.describe()))
            err_console.print(f"wrote {json_out}", highlight=False)
        if csv_out is not None:
            write_submission(csv_out, results)
            err_console.print(f"wrote {csv_out}", highlight=False)
        raise typer.Exit(1 if n_err else 0)


def fmt_p(p) -> str:
    return "-" if p is None else f"{p:.3f}"


def results_table(results, members, threshold: float):
    """The rich table of a scan: one row per video. Videos without a verdict show their prior in
    brackets, NO FACE / ERROR as the verdict, and the reason."""
    from rich.table import Table

    t = Table(title=f"deepfake scan (verdict FAKE at p(fake) >= {threshold:g})", title_justify="left")
    t.add_column("video", overflow="fold", ratio=3)
    t.add_column("faces", justify="right")
    for m in members:
        t.add_column(m, justify="right", overflow="fold")
    t.add_column("p(fake)", justify="right", style="bold")
    t.add_column("verdict")
    t.add_column("note", overflow="fold", ratio=2)
    for r in results:
        if r.verdict == "FAKE":
            v = "[red]FAKE[/red]"
        elif r.verdict == "REAL":
            v = "[green]REAL[/green]"
        elif r.status == "no_face":
            v = "[yellow]NO FACE[/yellow]"
        else:
            v = "[magenta]ERROR[/magenta]"
        p = fmt_p(r.p_fake) if r.verdict else f"({r.p_fake:.3f})"
        if r.status == "no_face":
            note = r.reason or "no face found"
        else:
            note = r.reason
        t.add_row(r.name, str(r.n_faces), *[fmt_p(r.members.get(m)) for m in members], p, v, note)
    return t
