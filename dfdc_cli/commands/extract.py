"""`deepfake extract`: videos -> face tubes (MP4 + track) and the tube index (videos.csv, tubes.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from dfdc_cli.errors import UserError
from dfdc_cli.paths import default_tubes_dir
from dfdc_cli.runtime import DEVICE_HELP
from dfdc_cli.ui import console, progress, warn


def _thresholds(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise UserError(f"--thresholds: expected three numbers like 0.6,0.7,0.7, got {text!r}") from None
    if len(vals) != 3:
        raise UserError(f"--thresholds: expected three numbers like 0.6,0.7,0.7, got {text!r}")
    return vals  # type: ignore[return-value]


def extract_cmd(
    paths: List[Path] = typer.Argument(
        ..., help="Video files and/or folders (searched recursively; DFDC metadata.json gives labels).",
        show_default=False,
    ),
    every: Optional[int] = typer.Option(None, "--every", help="Run the face detector on every n-th frame \\[default: 10].", show_default=False),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output folder (tube store + videos.csv/tubes.csv) \\[default: <data dir>/tubes].",
        show_default=False,
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", "-j", help="Parallel worker processes \\[default: CPU cores, at most one per video, no more than memory allows].",
        show_default=False,
    ),
    device: str = typer.Option("cpu", "--device", help="Where the face detector runs: " + DEVICE_HELP + "."),
    preset: Optional[str] = typer.Option(
        None, "--preset",
        help="Start from the seed's settings: 'train' (x0.5, 0.6/0.7/0.7, tubes up to 300 frames, all faces) "
        "or 'scan' (first 100 frames, long side 480, 0.8/0.8/0.9, fallbacks, 2D crops). "
        "\\[default: train, but tubes capped at 100 frames and 5 faces]. Options below override it.",
        show_default=False,
    ),
    scale: Optional[float] = typer.Option(None, "--scale", help="Detection frames = source x SCALE \\[default: 0.5].", show_default=False),
    long_side: Optional[int] = typer.Option(
        None, "--long-side", help="Resize detection frames to this long side instead of --scale (scan: 480).", show_default=False
    ),
    thresholds: Optional[str] = typer.Option(
        None, "--thresholds", help="MTCNN P-Net,R-Net,O-Net thresholds \\[default: 0.6,0.7,0.7].", show_default=False
    ),
    factor: Optional[float] = typer.Option(None, "--factor", help="MTCNN pyramid factor \\[default: 0.709].", show_default=False),
    min_face_size: Optional[int] = typer.Option(
        None, "--min-face-size", help="MTCNN minimum face size in detection-frame pixels \\[default: 20].", show_default=False
    ),
    mask_downscale: Optional[int] = typer.Option(
        None, "--mask-downscale", help="The 3D face mask is at 1/N of the source resolution \\[default: 4].", show_default=False
    ),
    min_frames: Optional[int] = typer.Option(None, "--min-frames", help="Drop tubes shorter than this \\[default: 30].", show_default=False),
    max_frames: Optional[int] = typer.Option(
        None, "--max-frames", help="Cut tubes to their first N frames, 0 = no cap \\[default: 100; train preset 300].", show_default=False
    ),
    windows: Optional[bool] = typer.Option(
        None, "--windows/--no-windows",
        help="A face longer than --max-frames gives consecutive --max-frames windows, each its own tube (for training "
        "sets from long videos) \\[default: off: one tube of its first --max-frames frames, the seed's rule].",
        show_default=False,
    ),
    max_faces: Optional[int] = typer.Option(
        None, "--max-faces", help="Keep the N most confident tubes per video, 0 = all \\[default: 5].", show_default=False
    ),
    first_frames: Optional[int] = typer.Option(
        None, "--first-frames", help="Decode only the first N frames of each video (scan: 100) \\[default: all].", show_default=False
    ),
    fallbacks: Optional[bool] = typer.Option(
        None, "--fallbacks/--no-fallbacks",
        help="When no tube is found, retry at 2x resolution, then with thresholds 0.5,0.5,0.5 keeping one face "
        "\\[default: off; on in the scan preset].",
        show_default=False,
    ),
    with_2d: Optional[bool] = typer.Option(
        None, "--with-2d/--no-2d",
        help="Also write each tube's 2D-pathway crops (<tube>_2d.mp4: 32 frames, square 1.2x boxes) \\[default: off; on in scan].",
        show_default=False,
    ),
    frames_2d: Optional[int] = typer.Option(
        None, "--frames-2d", help="2D crops of the first N frames of each tube \\[default: 32, what scan scores; more to "
        "train a frame model on more of each video].", show_default=False,
    ),
    fresh: bool = typer.Option(
        False, "--fresh", help="Start a new index in --out (drop the rows of earlier runs); the tube cache is still used."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary table (failed videos are still reported)."),
    label: Optional[str] = typer.Option(
        None, "--label", help="Label (REAL or FAKE) for videos that no DFDC metadata.json labels, e.g. a folder of real videos.",
        show_default=False,
    ),
    self_blend: bool = typer.Option(
        False, "--self-blend", help="Also write a self-blended fake of every REAL tube to OUT/self-blended/ and index it "
        "(label FAKE, original = the real video), to look at or to train on.",
    ),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Run the videos as tasks of a Ray cluster: 'local' (a cluster on this machine, "
        "--workers CPUs), 'auto' (the one `ray start` runs here) or its address. --out must be on a filesystem "
        "every node mounts at the same path. Needs pip install \"deepfake[ray]\".", show_default=False,
    ),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="Job arrays: only this task's share K/N of the videos (K = 1..N, split by file name); "
        "its rows go to OUT/videos.part-K-of-N.csv and tubes.part-K-of-N.csv, which readers merge.",
        show_default=False,
    ),
    self_blend_seed: int = typer.Option(0, "--self-blend-seed", help="Seed of the self-blended fakes (same seed, same fakes)."),
    self_blend_params: Optional[Path] = typer.Option(
        None, "--self-blend-params", help="Generator parameters: TOML ([selfblend] table) or JSON \\[default: built-in].",
        show_default=False,
    ),
) -> None:
    """Extract face tubes from videos (the seed's extractor) into a cached store and a tube index.

    Each video is decoded once; MTCNN runs on every n-th frame; the detections become a 3D mask whose connected components are the face tubes (at least 30 frames). Every frame of a tube is cropped to its union box, padded to a square, resized to 256x256 and saved as H.264 MP4 with its per-frame track (.npz).

    Writes OUT/videos.csv (one row per video: status ok / no_face / error, with the reason) and OUT/tubes.csv (one row per tube). A video already extracted with the same settings is reused; an interrupted run resumes. Exit code 1 if any video failed.
    """
    from dfdc_cli.faces import extract as X
    from dfdc_cli.scale.shard import parse_shard

    params = X.params_for(
        preset, every=every, scale=scale, long_side=long_side, thresholds=_thresholds(thresholds), factor=factor,
        min_face_size=min_face_size, mask_downscale=mask_downscale, min_frames=min_frames, max_frames=max_frames,
        windows=windows, max_faces=max_faces, first_frames=first_frames, fallbacks=fallbacks, with_2d=with_2d,
        frames_2d=frames_2d,
    )
    if workers is not None and workers < 1:
        raise UserError("--workers must be >= 1")
    default_label = ""
    if label is not None:
        default_label = label.strip().upper()
        if default_label not in ("REAL", "FAKE"):
            raise UserError(f"--label: expected REAL or FAKE, got {label!r}")
    blend_params = None
    if self_blend:
        from dfdc_cli.train.selfblend import SelfBlendParams, params_from_file

        # Read before extracting: a bad parameter file should fail in a second, not after an hour.
        blend_params = params_from_file(self_blend_params) if self_blend_params else SelfBlendParams()
    part = parse_shard(shard)
    out_dir = out if out is not None else default_tubes_dir()
    from dfdc_cli.commands.outputs import check_index_dir

    check_index_dir(out_dir, "--out")

    def run():
        executor = None
        if ray is not None:
            from dfdc_cli.faces.extract.cluster import ExtractExecutor

            executor = ExtractExecutor(out_dir, params, device=device)
        return X.extract(
            paths, out_dir, params, device=device, workers=workers, fresh=fresh, progress=not quiet,
            summary=not quiet, default_label=default_label, shard=part, executor=executor,
        )

    from dfdc_cli.scale.cluster import run_with

    result = run_with(ray, workers, run)
    if blend_params is not None:
        _self_blend(result, blend_params, self_blend_seed, quiet)
    if result.n_errors:
        raise typer.Exit(1)


def _self_blend(result, params, seed: int, quiet: bool) -> None:
    """Self-blended fakes of the run's REAL tubes, appended to the index beside them."""
    from dfdc_cli.faces.index import write_index
    from dfdc_cli.train.selfblend import self_blend_records

    reals = [t for t in result.tubes if str(t.label).upper() == "REAL"]
    if not reals:
        warn("--self-blend: no REAL tube in this run (label videos with a DFDC metadata.json or --label REAL)")
        return
    out_dir = result.out_dir / "self-blended"
    with progress(transient=quiet) as bar:
        task = bar.add_task("self-blend", total=len(reals), status="")
        rows = self_blend_records(reals, out_dir, params, seed=seed,
                                  on_done=lambda rec, stats: bar.advance(task))
    write_index(result.out_dir, [], rows, shard=result.shard)  # a shard's copies go to its own part
    if not quiet:
        console.print(f"self-blended: {len(rows)} fake tubes in {out_dir}")


def register(app: typer.Typer) -> None:
    app.command("extract", no_args_is_help=True)(extract_cmd)
