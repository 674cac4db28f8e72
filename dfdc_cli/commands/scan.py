"""`deepfake scan`: verdicts on videos from the registered ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dfdc_cli.runtime import DEVICE_HELP, PRECISION_HELP
from dfdc_cli.scan.options import ScanOptions
from dfdc_cli.scan.span import SPAN_HELP, check_span
from dfdc_cli.ui import fail_line, middle_ellipsis, progress, warn
from dfdc_models.specs import get_spec

HELP = """Score videos with the ensemble: p(fake) per video, per member and per face.

Face tubes are extracted with the seed's inference settings (first 100 frames, long side 480 px,
MTCNN thresholds 0.8/0.8/0.9, at most 5 faces) and scored in memory, as the seed did (no MP4
round trip; --keep-tubes also writes them). --span auto (default) reads windows spread over the
whole video when its first 100 frames have no face; --span whole always does (p(fake) = the
highest window's); --span first never does. Their geometry is kept in the scan cache, so a video
seen before is not detected again.
Each registered member scores every tube; per member the mean over faces, per video the weighted
mean over members, clipped to [0.001, 0.999]. A video with no face gets the prior 0.5 and no
verdict (status no_face); an unreadable one gets 0.5 and status error.

Verdicts: FAKE at p(fake) >= 0.5, else REAL, for a model without a calibration. A model that
records one (`deepfake models calibrate`) gives a calibrated p(fake) (its raw score stays in the
JSON as p_fake_raw and members) and its UNSURE band: REAL below the band, UNSURE within it (the
model cannot tell), FAKE above. A video whose faces only the low-threshold fallback found (MTCNN
0.5/0.5/0.5: it finds "faces" in noise and cartoons) is UNSURE whatever its score, marked weak
(JSON: "weak": true, "model_verdict": what the scores alone say).

With --index DIR the tubes come from an existing `deepfake extract` index instead (nothing is
extracted; with no PATH, every video of the index is scored).

Scores are cached per tube and member model, so an interrupted scan resumes where it stopped and
adding a member re-runs only that member (--rescore recomputes them).

--json/--csv are checked before anything is scanned: a scanned video, an existing video, a folder
or a file in a missing folder is refused (outputs never replace inputs).

Exit code: 0 when every video was scanned (a video with no face counts as scanned), 1 when any
video could not be read or an output could not be written (the others are), 2 on a usage problem
(e.g. no model registered, a damaged registry, a refused output path).
"""


def split_members(values: Optional[List[str]]) -> Optional[tuple[str, ...]]:
    """``--members a,b --members c`` -> (a, b, c); None when not given."""
    if not values:
        return None
    out: list[str] = []
    for v in values:
        out.extend(s.strip() for s in v.split(",") if s.strip())
    return tuple(out) or None


def scan_with_progress(scanner, videos, desc: str) -> list:
    """Scan ``videos`` under a progress bar, one line per video that failed (shared with eval)."""
    results = []
    with progress(transient=True) as bar:
        task = bar.add_task(desc, total=len(videos), status="")
        for r in scanner.scan_iter(videos):
            results.append(r)
            if r.status == "error":
                fail_line(r.video, r.reason)
            bar.update(task, advance=1, status=r.name)
    return results


def write_outputs(outputs) -> bool:
    """Write each (option, path, writer) whose path is given; one that fails (a full disk) is one
    line naming the file and the reason, and the others are still written. True when all were."""
    from dfdc_cli.ui import err_console, fail_line

    ok = True
    for option, path, write in outputs:
        if path is None:
            continue
        try:
            write(path)
        except OSError as exc:
            fail_line(str(path), f"{option} not written ({exc.strerror or exc})")
            ok = False
        else:
            err_console.print(f"wrote {path}", highlight=False)
    return ok


def check_outputs(outputs: dict, videos, index=None, more_inputs=()) -> None:
    """Refuse, before any work, output files that would replace an input (a scanned video, the
    index's tables) or an existing video, or that cannot be written."""
    from dfdc_cli.commands.outputs import check_distinct, check_output_file

    inputs = [*videos, *more_inputs]
    if index is not None:
        from dfdc_cli.faces.index import resolve_index, table_paths

        inputs.extend(table_paths(resolve_index(index)))
    for option, path in outputs.items():
        check_output_file(path, option, inputs)
    check_distinct(outputs)


def warn_missing_2d(scanner, items) -> None:
    from dfdc_cli.scan.inputs import missing_2d_note

    note = missing_2d_note(scanner.members, items)
    if note:
        warn(note)


def register(app: typer.Typer) -> None:
    @app.command("scan", help=HELP)
    def scan_cmd(
        paths: Optional[List[Path]] = typer.Argument(
            None, help="Video files or folders (searched recursively); optional with --index.",
            show_default=False),
        index: Optional[Path] = typer.Option(
            None, "--index", help="Score the tubes of this `deepfake extract` index instead of "
            "extracting (no PATH: all its videos).", show_default=False),
        members: Optional[List[str]] = typer.Option(
            None, "--members", "-m", help="Members to use, comma-separated or repeated. "
            "Default: every member with a registered model.", show_default=False),
        weights: Optional[str] = typer.Option(
            None, "--weights", help="Member weights, e.g. 'i3d_224=2,mc3_112=0.5' (others weigh 1; "
            "0 leaves a member out). Default: equal.", show_default=False),
        threshold: Optional[float] = typer.Option(
            None, "--threshold", min=0.0, max=1.0, help="Verdict FAKE when p(fake) >= this, REAL below, no "
            "UNSURE band. Default: the band the model records with its calibration, else 0.5.",
            show_default=False),
        device: str = typer.Option("auto", "--device", help=DEVICE_HELP + "."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                              help="Extraction/decoding workers (default: per core)."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Tubes per forward pass."),
        precision: str = typer.Option("auto", "--precision",
                                      help=PRECISION_HELP + "; auto: fp16."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure (per video, "
                                                "member and face) as JSON.", show_default=False),
        csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write a DFDC submission "
                                               "(filename,label = p(fake), calibrated where the model records "
                                               "a calibration; 0.5 without a face). It has no verdicts: "
                                               "UNSURE and weak ones are in the table and --json.",
                                               show_default=False),
        rescore: bool = typer.Option(False, "--rescore", help="Recompute member scores even when "
                                     "the score cache has them."),
        members_table: bool = typer.Option(False, "--members-table", help="Print each member's p(fake) "
                                           "per video as a second table (by default they are columns of "
                                           "the main table when the terminal is wide enough)."),
        ray: Optional[str] = typer.Option(
            None, "--ray", help="Scan on a Ray cluster: 'local', 'auto' or its address; scan actors (one "
            "per GPU) score chunks of the videos. The cache folder must be on a filesystem every node "
            "mounts. Needs pip install \"deepfake[ray]\".", show_default=False),
        shard: Optional[str] = typer.Option(
            None, "--shard", help="Job arrays: only this task's share K/N of the videos (K = 1..N, split by "
            "file name); --json/--csv go to NAME.part-K-of-N.EXT (`deepfake index merge` joins them).",
            show_default=False),
        keep_tubes: bool = typer.Option(False, "--keep-tubes", help="Also write the face tubes as MP4s "
                                        "into the scan cache, to look at them (the members score the "
                                        "crops in memory either way); --json gives their paths."),
        span: str = typer.Option("auto", "--span", help=SPAN_HELP),
        windows: int = typer.Option(8, "--windows", min=1, help="Most windows of 100 frames per video "
                                    "read by --span whole/auto (fewer in a short video: they never overlap)."),
        report: Optional[Path] = typer.Option(
            None, "--report", help="Also write a report folder (HTML + PNG, opens from disk): an index "
            "ordered by p(fake), a page per video with its faces, timeline and heatmaps.", show_default=False),
    ) -> None:
        from dfdc_cli.scale.cluster import run_with

        span = check_span(span, windows)
        options = ScanOptions(members=split_members(members), weights=weights, threshold=threshold,
                              device=device, workers=workers, batch_size=batch_size, precision=precision,
                              rescore=rescore, ray=ray, keep_tubes=keep_tubes, span=span, windows=windows)
        run_with(ray, None, lambda: _scan(paths, index, options, json_out, csv_out, shard, members_table, report))


def _scan(paths, index, options: ScanOptions, json_out, csv_out, shard, members_table, report=None) -> None:
    from dfdc_cli.atomic import write_json
    from dfdc_cli.scan.factory import make_scanner
    from dfdc_cli.scan.inputs import scan_inputs
    from dfdc_cli.scan.results import Tally, to_json, write_submission
    from dfdc_cli.scale.shard import parse_shard, part_path
    from dfdc_cli.ui import err_console

    if index is not None and options.span == "whole":
        from dfdc_cli.errors import UserError

        raise UserError("--span whole reads windows of the videos themselves; with --index the index's tubes are "
                        "scored as they were extracted (leave --span out)")
    part = parse_shard(shard)
    videos, items = scan_inputs(paths, index, part)
    if not videos:
        err_console.print(f"shard {shard}: none of the videos falls to this shard; nothing to do", highlight=False)
        raise typer.Exit(0)
    json_out = part_path(json_out, part) if json_out is not None else None
    csv_out = part_path(csv_out, part) if csv_out is not None else None
    check_outputs({"--json": json_out, "--csv": csv_out}, videos, index)
    if report is not None:
        from dfdc_cli.report.build import check_out, write_report_with_progress

        report = check_out(part_path(report, part))
    scanner = make_scanner(options, items=items)
    if items is not None:
        warn_missing_2d(scanner, items)
    results = scan_with_progress(scanner, videos, "scan")
    print_results(results, scanner.names, scanner.rule, members_table)
    t = Tally.of(results)
    err_console.print(f"{t.line()} (members: {', '.join(scanner.names)})", highlight=False)
    err_console.print(scanner.judged_by(), highlight=False, markup=False)
    for line in verdict_lines(scanner.rule, t):
        err_console.print(line, highlight=False, markup=False)
    if t.cached:
        err_console.print(f"{t.cached} videos reused scores from the score cache (--rescore recomputes them)",
                          highlight=False)
    judges = {m.name: m.module for m in getattr(scanner, "members", []) if m.module is not None}
    written = write_outputs([
        ("--json", json_out, lambda p: write_json(p, to_json(results, scanner.describe()))),
        ("--csv", csv_out, lambda p: write_submission(p, results)),
        ("--report", report, lambda p: write_report_with_progress(to_json(results, scanner.describe()), p,
                                                                  members=judges)),
    ])
    raise typer.Exit(t.exit_code if written else 1)


def verdict_lines(rule, tally) -> list[str]:
    """What the verdicts rest on, under the table: the calibration and band, and weak videos."""
    out = []
    if rule.calibrated:
        fits = []
        for m, c in rule.calibrations.items():
            n = c.fitted_on.get("n")
            fits.append(f"{m}: {c.method}" + (f" on {n} held-out videos" if n else ""))
        band = (f"UNSURE from {rule.lo:.3f} to {rule.hi:.3f}" if rule.has_band else f"threshold {rule.hi:g}")
        out.append(f"p(fake) is calibrated ({'; '.join(fits)}); {band}")
    elif rule.note:
        out.append(rule.note)
    if tally.weak:
        out.append(f"{tally.weak} {'video is' if tally.weak == 1 else 'videos are'} UNSURE because only the "
                   "low-threshold fallback found a face there "
                   "(it finds faces in noise and cartoons)")
    return out


def fmt_p(p) -> str:
    return "-" if p is None else f"{p:.3f}"


# Widths of the scan table's columns, so that it fits the terminal instead of letting rich fold
# every column down to a few letters: names stay whole up to NAME_MAX (longer ones lose their
# middle), the figures never wrap, and the note takes what is left (wrapping when long).
NAME_MAX = 40
NAME_MIN = 12
NOTE_MIN = 12
GAP = 2  # between columns (SIMPLE_HEAD, collapsed padding)
_FIXED = {"faces": 5, "p(fake)": 7, "verdict": 7}  # "(0.500)" and "NO FACE" are 7 wide


def member_label(name: str) -> str:
    """A member's short column label (I3D-CM for i3d_cutmix_224); other members keep their name."""
    try:
        return get_spec(name).short
    except KeyError:
        return name


def _member_widths(members) -> list[int]:
    return [max(len(member_label(m)), len("0.000")) for m in members]


def _note(r) -> str:
    return (r.reason or "no face found") if r.status == "no_face" else r.reason


def plain_table(title: Optional[str] = None):
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                 title=title, title_justify="left", title_style="bold")


def table_layout(results, members, width: int) -> tuple[int, bool]:
    """(video column width, whether the member columns fit in the main table) at ``width``."""
    from dfdc_cli.scan.results import display_names

    longest = max([len(n) for n in display_names(results)] + [len("video")])
    notes = max([len(_note(r)) for r in results] + [len("note")])
    fixed = sum(_FIXED.values()) + min(notes, NOTE_MIN) + GAP * (len(_FIXED) + 1)
    name_w = min(longest, NAME_MAX)
    with_members = fixed + name_w + sum(_member_widths(members)) + GAP * len(members)
    if members and with_members <= width:
        return name_w, True
    return max(NAME_MIN, min(name_w, width - fixed)), False


def _shown_members(r) -> dict:
    """A video's member scores as the table shows them: calibrated where a calibration applied."""
    return r.members_calibrated or r.members


def results_table(results, members, rule, width: int = 80, inline_members: Optional[bool] = None):
    """The rich table of a scan, fitted to ``width``: one row per video with its whole name (or a
    middle-shortened one), faces, p(fake), verdict and note, and the members' scores (short labels,
    calibrated where the verdicts are) when they fit (``inline_members=None``) or when asked (True).
    Videos without a verdict show their prior in brackets, NO FACE / ERROR as the verdict, and the
    reason; UNSURE ones (weak ones too, with the note saying so) in yellow. ``rule``: the
    :class:`~dfdc_cli.scan.ensemble.VerdictRule` (or a plain threshold) for the title."""
    from dfdc_cli.scan.ensemble import VerdictRule
    from dfdc_cli.scan.results import display_names

    if not isinstance(rule, VerdictRule):
        rule = VerdictRule.single(rule)
    name_w, fits = table_layout(results, members, width)
    inline = fits if inline_members is None else inline_members
    t = plain_table(f"deepfake scan ({rule.title()})")
    t.add_column("video", no_wrap=True, min_width=name_w)
    t.add_column("faces", justify="right", no_wrap=True)
    shown = list(members) if inline else []
    for m in shown:
        t.add_column(member_label(m), justify="right", no_wrap=True)
    t.add_column("p(fake)", justify="right", style="bold", no_wrap=True)
    t.add_column("verdict", no_wrap=True)
    t.add_column("note", overflow="fold", min_width=min(NOTE_MIN, width // 6))
    for r, name in zip(results, display_names(results)):
        if r.verdict == "FAKE":
            v = "[red]FAKE[/red]"
        elif r.verdict == "REAL":
            v = "[green]REAL[/green]"
        elif r.verdict == "UNSURE":
            v = "[yellow]UNSURE[/yellow]"
        elif r.status == "no_face":
            v = "[yellow]NO FACE[/yellow]"
        else:
            v = "[magenta]ERROR[/magenta]"
        p = fmt_p(r.p_fake) if r.verdict else f"({r.p_fake:.3f})"
        t.add_row(middle_ellipsis(name, name_w), str(r.n_faces), *[fmt_p(_shown_members(r).get(m)) for m in shown],
                  p, v, _note(r))
    return t


def member_scores_tables(results, members, width: int = 80) -> list:
    """Compact tables of every member's p(fake) per video (short labels; the video name shortened
    to what the member columns leave): one table, or several when the members do not fit side by
    side at ``width``."""
    from dfdc_cli.scan.results import display_names

    names = display_names(results)
    widths = dict(zip(members, _member_widths(members)))

    def cols(group) -> int:
        return sum(widths[m] for m in group) + GAP * len(group)

    # As few tables as fit, with the members spread evenly over them.
    n = 1
    while True:
        size = -(-len(members) // n)
        groups = [list(members[i:i + size]) for i in range(0, len(members), size)] or [[]]
        if n >= len(members) or all(NAME_MIN + cols(g) <= width for g in groups):
            break
        n += 1
    longest = max([len(n) for n in names] + [len("video")])
    name_w = max(NAME_MIN, min(longest, NAME_MAX, width - max(cols(g) for g in groups)))
    tables = []
    for group in groups:
        t = plain_table("p(fake) per member")
        t.add_column("video", no_wrap=True, min_width=name_w)
        for m in group:
            t.add_column(member_label(m), justify="right", no_wrap=True)
        for r, name in zip(results, names):
            t.add_row(middle_ellipsis(name, name_w), *[fmt_p(_shown_members(r).get(m)) for m in group])
        tables.append(t)
    return tables


def print_results(results, members, rule, members_table: bool = False) -> None:
    """Print a scan's tables on stdout, fitted to the console: the member scores inline when they
    fit, as a second table with ``members_table``, otherwise a hint (stderr) how to see them."""
    from dfdc_cli.ui import console, err_console

    width = console.width
    console.print(results_table(results, members, rule, width, inline_members=False if members_table else None))
    if members_table:
        for t in member_scores_tables(results, members, width):
            console.print(t)
    elif len(members) > 1 and not table_layout(results, members, width)[1]:
        # (one member's score is the video's p(fake): nothing is left out)
        labels = ", ".join(f"{member_label(m)} = {m}" for m in members if member_label(m) != m)
        err_console.print(f"[dim]per-member scores do not fit in {width} columns: --members-table shows them"
                          + (f" ({labels})" if labels else "") + "[/dim]", highlight=False)
