"""Benchmark of `deepfake scan`: videos/s of the whole pipeline, beside two ceilings measured in the
same run on the same files:

* decode-only: decoding the frames scan needs (the first 100 of each video), in ``--workers``
  processes, nothing else;
* models-only: the members' forward passes alone on the same tubes, already in device memory,
  batched as scan batches them.

The videos of ``--videos`` (default: the DFDC samples) are copied ``--repeat`` times into a temp
folder; each copy gets a different trailing MP4 ``free`` box, so that its content hash differs and the
extraction cache cannot serve one copy's tubes to another. The scan cache is a fresh temp folder.

Usage (GPU machine, all eight members with random weights)::

    python bench/bench_scan.py --random-weights --repeat 40 --device cuda --json bench/out/scan.json

CPU smoke run (tiny stand-in networks, seconds)::

    python bench/bench_scan.py --tiny --members mc3_112 --repeat 1 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_VIDEOS = [ROOT.parent / "shared" / "data" / "dfdc", ROOT / "shared" / "data" / "dfdc",
                  Path("/work/shared/data/dfdc")]
ALL_MEMBERS = ["i3d_224", "i3d_cutmix_224", "r3d34_224", "mc3_112", "mc3_224", "r2plus1d_112",
               "r2plus1d_cutmix_112", "seresnext50_2d"]


def make_copies(videos: list[Path], repeat: int, folder: Path) -> list[Path]:
    """``repeat`` copies of every video, each with distinct bytes (a trailing MP4 'free' box)."""
    out = []
    for r in range(repeat):
        for v in videos:
            dst = folder / f"{v.stem}__{r:04d}{v.suffix}"
            shutil.copyfile(v, dst)
            if v.suffix.lower() in (".mp4", ".m4v", ".mov"):
                with open(dst, "ab") as fh:
                    fh.write(struct.pack(">I", 16) + b"free" + struct.pack(">Q", r))
            out.append(dst)
    return out


def _decode_one(path: str, frames: int) -> int:
    import torch

    torch.set_num_threads(1)
    from dfdc_cli.faces.video import decode_count

    return decode_count(path, max_frames=frames)


def decode_ceiling(paths: list[Path], workers: int, frames: int = 100) -> dict:
    """Decode-only: the first ``frames`` frames of every file over ``workers`` processes."""
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_decode_one, [str(paths[0])] * workers, [1] * workers))  # start the workers
        t0 = time.perf_counter()
        n = sum(pool.map(_decode_one, [str(p) for p in paths], [frames] * len(paths)))
        dt = time.perf_counter() - t0
    return {"seconds": dt, "videos_per_s": len(paths) / dt, "frames": n}


def tiny_networks() -> None:
    """Replace every architecture with a tiny network (CPU smoke runs of the plumbing)."""
    import dfdc_models.registry as R
    from dfdc_models.tiny import tiny_net

    R.build_net = tiny_net


def register_random(members: list[str]) -> None:
    import torch

    from dfdc_models import store
    from dfdc_models.registry import build_net
    from dfdc_models.specs import get_spec

    torch.manual_seed(0)
    for m in members:
        store.register(m, build_net(get_spec(m).arch).state_dict(), source="bench:random")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def models_ceiling(scanner, paths: list[Path]) -> dict:
    """The members alone on the tubes of ``paths`` (from the scan cache), already on the device,
    in the chunks and batches scan uses."""
    from dfdc_cli.scan import inputs as SI

    extracted: list = [None] * len(paths)
    SI.stream_extract(paths, scanner.device, scanner.workers, lambda i, e: extracted.__setitem__(i, e))
    chunks = []
    for k in range(0, len(paths), scanner.chunk_size):
        ex = extracted[k : k + scanner.chunk_size]
        tubes, _ = scanner.load_tubes(ex)
        chunks.append((tubes, {}))
    for tubes, cache in chunks:  # warm-up; fills the device caches
        scanner.score_tubes(tubes, on_device=cache)
    sync(scanner.device)
    t0 = time.perf_counter()
    for tubes, cache in chunks:
        scanner.score_tubes(tubes, on_device=cache)
    sync(scanner.device)
    dt = time.perf_counter() - t0
    n_tubes = sum(len(t) for t, _ in chunks)
    return {"seconds": dt, "videos_per_s": len(paths) / dt, "tubes": n_tubes,
            "tube_frames": sum(int(t.frames.shape[0]) for c, _ in chunks for t in c if t.frames is not None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, default=None, help="folder (or file) of videos; default: the DFDC samples")
    ap.add_argument("--repeat", type=int, default=8, help="copies of each video")
    ap.add_argument("--members", default=None, help="comma-separated; default: all eight")
    ap.add_argument("--random-weights", action="store_true", help="register random weights for the members "
                    "in a temp registry (otherwise the registered models are used)")
    ap.add_argument("--tiny", action="store_true", help="tiny stand-in networks (CPU smoke runs); implies --random-weights")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None, help="extraction/decode processes (default: cores)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()

    src = args.videos or next((p for p in DEFAULT_VIDEOS if p.is_dir()), None)
    if src is None or not Path(src).exists():
        sys.exit(f"no videos: pass --videos (looked in {', '.join(map(str, DEFAULT_VIDEOS))})")
    from dfdc_cli.scan.inputs import expand_paths

    originals = expand_paths([src])
    if not originals:
        sys.exit(f"no videos in {src}")
    members = [m.strip() for m in args.members.split(",")] if args.members else list(ALL_MEMBERS)
    workers = args.workers or (os.cpu_count() or 1)

    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    os.environ["DEEPFAKE_CACHE_DIR"] = str(tmp / "cache")
    if args.tiny or args.random_weights:
        os.environ["DEEPFAKE_DATA_DIR"] = str(tmp / "data")
    try:
        if args.tiny:
            tiny_networks()
        if args.tiny or args.random_weights:
            register_random(members)
        import torch

        from dfdc_cli.scan.scanner import Scanner

        copies_dir = tmp / "videos"
        copies_dir.mkdir()
        copies = make_copies(originals, args.repeat, copies_dir)
        print(f"{len(copies)} videos ({len(originals)} x {args.repeat}), members: {', '.join(members)}", flush=True)

        dec = decode_ceiling(copies, workers)
        print(f"decode-only (first 100 frames, {workers} processes): {dec['videos_per_s']:.2f} videos/s", flush=True)

        t0 = time.perf_counter()
        scanner = Scanner(members=members, device=args.device, workers=workers, batch_size=args.batch_size,
                          chunk_size=args.chunk_size, precision=args.precision)
        load_s = time.perf_counter() - t0
        # Warm-up on the originals (their own cache entries): detector, cuDNN autotuning, members.
        t0 = time.perf_counter()
        scanner.scan(originals)
        warm_s = time.perf_counter() - t0

        sync(scanner.device)
        t0 = time.perf_counter()
        results = scanner.scan(copies)
        sync(scanner.device)
        scan_s = time.perf_counter() - t0
        scan_vps = len(copies) / scan_s
        status = {s: sum(r.status == s for r in results) for s in ("ok", "no_face", "error")}
        print(f"scan (extract + models): {scan_vps:.2f} videos/s  ({scan_s:.1f} s; {status})", flush=True)

        mod = models_ceiling(scanner, copies)
        print(f"models-only ({mod['tubes']} tubes in device memory): {mod['videos_per_s']:.2f} videos/s", flush=True)

        lower = min(dec["videos_per_s"], mod["videos_per_s"])
        device_name = torch.cuda.get_device_name(0) if scanner.device.startswith("cuda") else "cpu"
        out = {
            "device": device_name,
            "videos": len(copies),
            "distinct_videos": len(originals),
            "members": members,
            "workers": workers,
            "batch_size": scanner.batch_size,
            "chunk_size": scanner.chunk_size,
            "precision": str(scanner.amp_dtype).replace("torch.", "") if scanner.amp_dtype else "fp32",
            "tiny_networks": bool(args.tiny),
            "scan_videos_per_s": scan_vps,
            "scan_seconds": scan_s,
            "decode_only_videos_per_s": dec["videos_per_s"],
            "models_only_videos_per_s": mod["videos_per_s"],
            "lower_ceiling_videos_per_s": lower,
            "fraction_of_lower_ceiling": scan_vps / lower,
            "tubes": mod["tubes"],
            "status": status,
            "load_members_seconds": load_s,
            "warmup_seconds": warm_s,
            "cpu_cores": os.cpu_count(),
        }
        print()
        print(f"{'device':<28}{device_name}")
        print(f"{'scan':<28}{scan_vps:8.2f} videos/s")
        print(f"{'decode-only ceiling':<28}{dec['videos_per_s']:8.2f} videos/s")
        print(f"{'models-only ceiling':<28}{mod['videos_per_s']:8.2f} videos/s")
        print(f"{'scan / lower ceiling':<28}{100 * scan_vps / lower:8.1f} %")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
