"""`deepfake tubes`: look at face tubes.

- ``tubes show TUBE``   a contact sheet PNG of any tube MP4 (every N-th frame in a grid), with the
                        track's boxes and landmarks drawn on when the track (``<stem>.npz``) is there.
- ``tubes list [INDEX]`` the tubes of an index (``tubes.csv``), one line each.
- ``tubes blend TUBE``  a self-blended copy of a real tube (MP4 + track), and optionally a sheet that
                        shows real / fake / mask frame by frame: what ``--fakes self-blended`` trains on.

Sheet geometry (so scripts can rely on it): the sampled frames are 0, N, 2N, ...; each gets a square
cell of ``--thumb`` pixels (non-square frames are letter-boxed); ``cols = min(--cols, samples)``,
``rows = ceil(samples / cols)``; the PNG is ``rows*thumb`` high and ``cols*thumb`` wide (``tubes
blend --sheet`` stacks three such rows per band: real, fake, mask).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError

tubes_app = typer.Typer(
    name="tubes",
    help="Look at face tubes: contact sheets, index listings, self-blended samples.",
    no_args_is_help=True,
    add_completion=False,
)

# Colours (RGB) of the overlay: detected frames green, interpolated frames yellow, landmarks red.
_DETECTED = (40, 220, 40)
_INTERPOLATED = (240, 200, 0)
_LANDMARK = (255, 40, 40)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def load_tube_frames(path: Path):
    """Decode a tube MP4 (RGB uint8 (T, H, W, 3)); a missing or unreadable file is a UserError."""
    from ..video import read_video

    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        return read_video(path)
    except Exception as exc:  # PyAV raises many kinds; all mean "not a readable video"
        raise UserError(f"{path}: cannot read the video ({_one_line(exc)})") from None


def load_track_geometry(track_path: Path, frame_size: tuple[int, int], crops_2d: bool = False):
    """(landmarks (n,5,2), boxes (n,4), detected (n,)) of a track, in the decoded frames' pixels.

    ``crops_2d``: the frames are the 2D pathway's crops (``<stem>_2d.mp4``), not the tube."""
    import numpy as np

    from ..index import Track
    from ..selfblend import track_2d_geometry, track_tube_geometry

    try:
        track = Track.load(track_path)
        if crops_2d:
            lm, bx = track_2d_geometry(track, size=int(track.size))
        else:
            lm, bx = track_tube_geometry(track)
        detected = np.asarray(track.detected, bool)[: len(bx)]
    except Exception as exc:
        raise UserError(f"{track_path}: cannot read the track ({_one_line(exc)})") from None
    h, w = frame_size
    sx, sy = w / float(track.size), h / float(track.size)
    return lm * np.array([sx, sy], np.float32), bx * np.array([sx, sy, sx, sy], np.float32), detected


def _cell(img, thumb: int):
    """Letter-box one RGB frame into a thumb x thumb cell; returns (cell, scale, (ox, oy))."""
    import cv2
    import numpy as np

    h, w = img.shape[:2]
    f = thumb / float(max(h, w))
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    small = cv2.resize(img, (nw, nh), interpolation=interp)
    cell = np.zeros((thumb, thumb, 3), np.uint8)
    ox, oy = (thumb - nw) // 2, (thumb - nh) // 2
    cell[oy:oy + nh, ox:ox + nw] = small
    return cell, f, (ox, oy)


def _label(cell, text: str) -> None:
    import cv2

    scale = max(0.3, cell.shape[0] / 300.0)
    org = (3, int(14 * scale / 0.45))
    cv2.putText(cell, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(cell, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def sample_indices(n_frames: int, every: int) -> list[int]:
    if every < 1:
        raise UserError("--every must be >= 1")
    return list(range(0, n_frames, every))


def render_sheet(frames, every: int = 10, cols: int = 8, thumb: int = 128, geometry=None,
                 labels: bool = True, names: Optional[list[str]] = None):
    """A contact sheet (RGB uint8) of frames 0, every, 2*every...; see the module doc for its size.

    ``geometry`` = (landmarks, boxes, detected) in frame pixels draws the track on each cell.
    """
    import cv2
    import numpy as np

    if cols < 1 or thumb < 16:
        raise UserError("--cols must be >= 1 and --thumb >= 16")
    idx = sample_indices(len(frames), every)
    ncol = min(cols, len(idx))
    nrow = math.ceil(len(idx) / ncol)
    sheet = np.zeros((nrow * thumb, ncol * thumb, 3), np.uint8)
    for k, i in enumerate(idx):
        cell, f, (ox, oy) = _cell(frames[i], thumb)
        if geometry is not None and i < len(geometry[1]):
            lm, bx, det = geometry
            colour = _DETECTED if (i < len(det) and det[i]) else _INTERPOLATED
            x1, y1, x2, y2 = bx[i] * f + np.array([ox, oy, ox, oy])
            if np.all(np.isfinite([x1, y1, x2, y2])):
                cv2.rectangle(cell, (round(x1), round(y1)), (round(x2), round(y2)), colour, 1, cv2.LINE_AA)
            for x, y in lm[i] * f + np.array([ox, oy]):
                if np.isfinite(x) and np.isfinite(y):
                    cv2.circle(cell, (round(x), round(y)), max(1, thumb // 64), _LANDMARK, -1, cv2.LINE_AA)
        if labels:
            _label(cell, names[i] if names is not None else str(i))
        r, c = divmod(k, ncol)
        sheet[r * thumb:(r + 1) * thumb, c * thumb:(c + 1) * thumb] = cell
        if c:  # a thin dark grid line between cells
            sheet[r * thumb:(r + 1) * thumb, c * thumb] = 32
        if r:
            sheet[r * thumb, c * thumb:(c + 1) * thumb] = 32
    return sheet


def render_blend_sheet(real, fake, mask, every: int = 10, cols: int = 8, thumb: int = 128):
    """Bands of three rows per ``cols`` samples: real (labelled with frame numbers), fake, mask."""
    import numpy as np

    idx = sample_indices(len(real), every)
    ncol = min(cols, len(idx))
    bands = []
    for start in range(0, len(idx), ncol):
        chunk = idx[start:start + ncol]
        m = (np.clip(mask[chunk], 0, 1) * 255).astype(np.uint8)
        rows = [render_sheet(real[chunk], 1, ncol, thumb, names=[str(i) for i in chunk]),
                render_sheet(fake[chunk], 1, ncol, thumb, labels=False),
                render_sheet(np.repeat(m[..., None], 3, axis=-1), 1, ncol, thumb, labels=False)]
        band = np.concatenate(rows, axis=0)
        if band.shape[1] < ncol * thumb:
            band = np.pad(band, ((0, 0), (0, ncol * thumb - band.shape[1]), (0, 0)))
        bands.append(band)
    return np.concatenate(bands, axis=0)


def write_png(path: Path, rgb) -> None:
    import cv2

    from ..atomic import atomic_path

    ok, buf = cv2.imencode(".png", rgb[..., ::-1])
    if not ok:
        raise UserError(f"{path}: could not encode the PNG")
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.tobytes())
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({_one_line(exc)})") from None


def _default_track(tube: Path) -> Optional[Path]:
    p = tube.with_suffix(".npz")
    if p.exists():
        return p
    if tube.stem.endswith("_2d"):  # the 2D pathway's crops share the tube's track
        p = tube.with_name(tube.stem[:-3] + ".npz")
        return p if p.exists() else None
    return None


def _is_2d(tube: Path, track_path: Path) -> bool:
    return tube.stem.endswith("_2d") and track_path.stem == tube.stem[:-3]


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
    from ..ui import console, warn

    frames = load_tube_frames(tube)
    geometry = None
    if overlay:
        track_path = track if track is not None else _default_track(tube)
        if track is not None and not track.exists():
            raise UserError(f"{track}: no such file")
        if track_path is not None:
            geometry = load_track_geometry(track_path, frames.shape[1:3], _is_2d(tube, track_path))
            if len(geometry[1]) != len(frames):
                warn(f"{track_path}: {len(geometry[1])} track entries for {len(frames)} frames")
    sheet = render_sheet(frames, every, cols, thumb, geometry)
    out = out if out is not None else Path.cwd() / f"{tube.stem}_sheet.png"
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
    from ..index import TUBES_CSV, has_index, read_tubes, resolve_index
    from ..ui import console

    folder = resolve_index(index)
    if not has_index(folder):
        raise UserError(f"{folder}: no {TUBES_CSV} here (run `deepfake extract` first)")
    try:
        df = read_tubes(folder)
    except Exception as exc:
        raise UserError(f"{folder / TUBES_CSV}: cannot read ({_one_line(exc)})") from None
    if label:
        df = df[df["label"].astype(str).str.upper() == label.upper()]
    if limit > 0:
        df = df.head(limit)
    for r in df.itertuples(index=False):
        console.print(
            f"{r.name}\t#{r.tube_id}\t{r.n_frames} fr\tp={float(r.mean_prob):.3f}\t{r.label or '-'}\t{r.tube_path}",
            highlight=False, soft_wrap=True,
        )
    console.print(f"{len(df)} tube(s)", style="dim", highlight=False)


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

    from ..selfblend import SelfBlendParams, blend_clip, params_from_file, self_blend_tube
    from ..ui import console

    frames = load_tube_frames(tube)
    track_path = track if track is not None else tube.with_suffix(".npz")
    if not track_path.exists():
        raise UserError(f"{track_path}: no track for this tube (self-blending needs the face's landmarks)")
    params = params_from_file(params_file) if params_file else SelfBlendParams()
    out = out if out is not None else Path.cwd() / f"{tube.stem}_sbi{seed}.mp4"
    try:
        stats = self_blend_tube(tube, track_path, out, params, seed)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{tube}: self-blending failed ({_one_line(exc)})") from None
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
