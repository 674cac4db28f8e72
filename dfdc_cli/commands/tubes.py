"""`deepfake tubes`: look at face tubes.

- ``tubes show TUBE``   a contact sheet PNG of any tube MP4 (every N-th frame in a grid), with the
                        track's boxes and landmarks drawn on when the track (``<stem>.npz``) is there.
- ``tubes list [INDEX]`` the tubes of an index (``tubes.csv``), one line each.
- ``tubes blend TUBE``  a self-blended copy of a real tube (MP4 + track), and optionally a sheet that
                        shows real / fake / mask frame by frame: what ``--fakes self-blended`` trains on.

The sheets' geometry: :mod:`dfdc_cli.faces.sheets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dfdc_cli.errors import UserError
from dfdc_cli.ui import console, warn

tubes_app = typer.Typer(
    name="tubes",
    help="Look at face tubes: contact sheets, index listings, self-blended samples.",
    no_args_is_help=True,
    add_completion=False,
)

@tubes_app.command("show")
def show(
    tube: Path = typer.Argument(..., help="A tube MP4 (any video works)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write [default: ./<stem>_sheet.png]."),
    every: int = typer.Option(10, "--every", "-n", help="Show every N-th frame (0, N, 2N, ...)."),
    cols: int = typer.Option(8, "--cols", "-c", help="Cells per row."),
    thumb: int = typer.Option(128, "--thumb", help="Cell size in pixels."),
    track: Optional[Path] = typer.Option(
        None, "--track", help="Track (.npz) to draw: boxes and landmarks [default: <tube stem>.npz if present]."
    ),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Draw the track when there is one."),
) -> None:
    """Render a contact sheet PNG of a tube (box green = detected frame, yellow = interpolated)."""
    from dfdc_cli.faces.sheets import (
        default_track, is_2d, load_track_geometry, load_tube_frames, render_sheet, write_png,
    )

    from dfdc_cli.commands.outputs import check_output_file

    out = out if out is not None else Path.cwd() / f"{tube.stem}_sheet.png"
    check_output_file(out, "--out", [p for p in (tube, track, default_track(tube)) if p is not None],
                      make_folder=True)
    frames = load_tube_frames(tube)
    geometry = None
    if overlay:
        track_path = track if track is not None else default_track(tube)
        if track is not None and not track.exists():
            raise UserError(f"{track}: no such file")
        if track_path is not None:
            geometry = load_track_geometry(track_path, frames.shape[1:3], is_2d(tube, track_path))
            if len(geometry[1]) != len(frames):
                warn(f"{track_path}: {len(geometry[1])} track entries for {len(frames)} frames")
    sheet = render_sheet(frames, every, cols, thumb, geometry)
    write_png(out, sheet)
    console.print(f"{out}  ({len(frames)} frames, {sheet.shape[1]}x{sheet.shape[0]} px"
                  f"{', track drawn' if geometry is not None else ''})", highlight=False, soft_wrap=True)


@tubes_app.command("list")
def list_tubes(
    index: Optional[Path] = typer.Argument(None, help="Index folder or its tubes.csv [default: data dir's]."),
    label: Optional[str] = typer.Option(None, "--label", help="Only REAL or FAKE tubes."),
    limit: int = typer.Option(0, "--limit", help="Show at most N tubes (0: all)."),
) -> None:
    """List the tubes of an index: video, tube id, frames, detector confidence, label, path."""
    from dfdc_cli.faces.index import TUBES_CSV, has_index, read_records, resolve_index
    from dfdc_cli.faces.sheets import one_line

    folder = resolve_index(index)
    if not has_index(folder):
        raise UserError(f"{folder}: no {TUBES_CSV} here (run `deepfake extract` first)")
    try:
        tubes = read_records(folder)[1]
    except Exception as exc:
        raise UserError(f"{folder / TUBES_CSV}: cannot read ({one_line(exc)})") from None
    if label:
        tubes = [t for t in tubes if t.label.upper() == label.upper()]
    if limit > 0:
        tubes = tubes[:limit]
    for t in tubes:
        console.print(
            f"{t.name}\t#{t.tube_id}\t{t.n_frames} fr\tp={t.mean_prob:.3f}\t{t.label or '-'}\t{t.tube_path}",
            highlight=False, soft_wrap=True,
        )
    console.print(f"{len(tubes)} tube(s)", style="dim", highlight=False)


@tubes_app.command("blend")
def blend(
    tube: Path = typer.Argument(..., help="A REAL tube MP4 with its track (<stem>.npz) beside it."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="MP4 to write [default: ./<stem>_sbi<seed>.mp4]."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same fake."),
    track: Optional[Path] = typer.Option(None, "--track", help="Track (.npz) [default: <tube stem>.npz]."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Also write a real / fake / mask PNG sheet."),
    thumb: int = typer.Option(128, "--thumb", help="Sheet: cell size in pixels."),
    every: int = typer.Option(10, "--every", "-n", help="Sheet: every N-th frame."),
    cols: int = typer.Option(8, "--cols", "-c", help="Sheet: cells per row."),
    params_file: Optional[Path] = typer.Option(
        None, "--params", help="TOML/JSON with self-blend parameters (a [self_blend] table or top-level keys)."
    ),
) -> None:
    """Write a self-blended fake of a real tube (the generator behind `train --fakes self-blended`)."""
    import numpy as np

    from dfdc_cli.train.selfblend import SelfBlendParams, blend_clip, params_from_file, self_blend_tube
    from dfdc_cli.faces.sheets import (
        load_track_geometry, load_tube_frames, one_line, render_blend_sheet, write_png,
    )

    from dfdc_cli.commands.outputs import check_distinct, check_output_file

    track_path = track if track is not None else tube.with_suffix(".npz")
    out = out if out is not None else Path.cwd() / f"{tube.stem}_sbi{seed}.mp4"
    sources = [tube, track_path, *([params_file] if params_file else [])]
    check_output_file(out, "--out", sources, video_ok=True, make_folder=True)  # a new fake, never a source
    check_output_file(sheet, "--sheet", sources, make_folder=True)
    check_distinct({"--out": out, "--sheet": sheet})
    frames = load_tube_frames(tube)
    if not track_path.exists():
        raise UserError(f"{track_path}: no track for this tube (self-blending needs the face's landmarks)")
    params = params_from_file(params_file) if params_file else SelfBlendParams()
    try:
        stats = self_blend_tube(tube, track_path, out, params, seed)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{tube}: self-blending failed ({one_line(exc)})") from None
    if sheet is not None:
        lm, bx, _ = load_track_geometry(track_path, frames.shape[1:3])
        n = min(len(frames), len(bx))
        fake, mask = blend_clip(frames[:n], lm[:n], bx[:n], params, np.random.default_rng(seed))
        write_png(sheet, render_blend_sheet(frames[:n], fake, mask, every, cols, thumb))
    console.print(
        f"{out}  ({stats['n_frames']} frames, mask {stats['shape']}, ratio {stats['ratio']:.2f}, "
        f"quality {stats['quality']}, area {stats['mask_area']:.2f})"
        + (f"\n{sheet}" if sheet is not None else ""),
        highlight=False, soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(tubes_app, name="tubes")
