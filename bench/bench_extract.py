"""Extraction throughput beside decode-only throughput of the same videos, in the same run.

    python bench/bench_extract.py [FOLDER] [--workers N] [--device cpu|cuda] [--preset train|scan|default]
                                  [--repeat K] [--json FILE] [--hold-mb MB]

Decode-only = the extractor's own decoder (every frame into its I420 buffers, the same
``--first-frames`` limit as the preset), run over the same files with the same number of worker
processes. Extraction = ``dfdc_cli.faces.extract.extract`` into a fresh temporary folder (no cache),
then again into the same folder (all cache hits). Also prints the per-stage time split of the
extraction (decode / detect / crop+encode, summed over videos, from each entry's result.json).

``--repeat K`` benchmarks K byte-distinct copies of every video (to fill a many-core machine
without the content-keyed cache serving one copy's tubes to another).

``--hold-mb MB`` sets the extractor's budget of decoded frames held per video
(``DEEPFAKE_EXTRACT_HOLD_MB``): a video over it is decoded twice (detect, then crop). Run once
with ``--hold-mb 0`` (every video decoded twice) and once with a large budget (``--hold-mb
4096``: decoded once) to measure what the second decode costs; the split shows it under "write".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _decode_one(args) -> int:
    path, first = args
    from dfdc_cli.faces import video

    frames = video.decode(path, max_frames=first)
    n = len(frames)
    frames.release()
    return n


def _noop(i: int) -> int:
    return i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default="/work/shared/data")
    ap.add_argument("--workers", type=int, default=None, help="default: CPU cores (at most one per video)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="default", help="train | scan | default (the CLI's default settings)")
    ap.add_argument("--repeat-decode", type=int, default=1, help="decode-only passes (best kept)")
    ap.add_argument("--repeat", type=int, default=1, help="byte-distinct copies of each video")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--hold-mb", type=int, default=None, help="decoded frames held per video (default: the extractor's)")
    args = ap.parse_args()
    if args.hold_mb is not None:  # before any worker starts: they read it
        os.environ["DEEPFAKE_EXTRACT_HOLD_MB"] = str(args.hold_mb)

    from dfdc_cli.faces import extract as X
    from dfdc_cli.faces.extract.pool import mp_context
    from dfdc_cli.faces.inputs import collect_inputs

    params = X.DEFAULT_PARAMS if args.preset == "default" else X.PRESETS[args.preset]
    jobs = collect_inputs([args.folder])
    paths = [j.path for j in jobs]
    if not paths:
        raise SystemExit(f"no videos under {args.folder}")
    copies = None
    if args.repeat > 1:
        from bench_scan import make_copies

        copies = tempfile.TemporaryDirectory(prefix="bench-extract-copies-")
        paths = [str(p) for p in make_copies([Path(p) for p in paths], args.repeat, Path(copies.name))]
    workers = args.workers or min(os.cpu_count() or 1, len(paths))
    print(f"{len(paths)} videos from {args.folder}; preset {args.preset}; device {args.device}; "
          f"workers {workers}; CPU cores {os.cpu_count()}", flush=True)

    # Decode only (best of --repeat-decode), same worker count and the same worker start method
    # (a fork server with torch preloaded), started and warmed before the clock starts, as the
    # extractor's fork server is by then too.
    best = None
    ctx = mp_context()
    ex = ProcessPoolExecutor(workers, mp_context=ctx) if workers > 1 else None
    if ex is not None:
        list(ex.map(_noop, range(workers * 4)))
    for _ in range(max(1, args.repeat_decode)):
        t = time.time()
        if ex is not None:
            frames = sum(ex.map(_decode_one, [(p, params.first_frames) for p in paths]))
        else:
            frames = sum(_decode_one((p, params.first_frames)) for p in paths)
        dt = time.time() - t
        best = (dt, frames) if best is None or dt < best[0] else best
    dec_s, dec_frames = best
    if ex is not None:
        ex.shutdown()

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as out:
        t = time.time()
        res = X.extract(paths, out, params, device=args.device, workers=workers, progress=False, quiet=True)
        ext_s = time.time() - t
        t = time.time()
        again = X.extract(paths, out, params, device=args.device, workers=workers, progress=False, quiet=True)
        hit_s = time.time() - t
        split = {"decode": 0.0, "detect": 0.0, "write": 0.0}
        passes = {1: 0, 2: 0}
        for v in res.videos:
            if v.key:
                rj = json.loads((Path(out) / "store" / v.key[:2] / v.key / "result.json").read_text())
                for k, val in rj.get("timings", {}).items():
                    split[k] = split.get(k, 0.0) + val
                passes[rj.get("passes", 1)] = passes.get(rj.get("passes", 1), 0) + 1
    ext_frames = sum(v.n_frames for v in res.videos)
    n = len(paths)
    statuses = {s: sum(v.status == s for v in res.videos) for s in ("ok", "no_face", "error")}

    print()
    print(f"{'':14s} {'seconds':>8s} {'videos/s':>9s} {'frames/s':>9s}")
    print(f"{'decode only':14s} {dec_s:8.2f} {n / dec_s:9.3f} {dec_frames / dec_s:9.1f}")
    print(f"{'extraction':14s} {ext_s:8.2f} {n / ext_s:9.3f} {ext_frames / ext_s:9.1f}")
    print(f"{'cache hits':14s} {hit_s:8.2f} {n / hit_s:9.3f} {'':>9s}")
    print(f"extraction / decode-only throughput: {dec_s / ext_s:.3f} (extraction is {ext_s / dec_s:.1f}x slower)")
    tot = sum(split.values()) or 1.0
    print("extraction time split (summed over videos): " + ", ".join(f"{k} {v:.1f} s ({100 * v / tot:.0f}%)" for k, v in split.items()))
    print(f"results: {statuses}, {len(res.tubes)} tubes; second run cached {again.cached}/{n}")
    print(f"decoded once: {passes[1]} videos, twice (longer than the hold budget): {passes[2]}")
    if args.json is not None:
        import platform

        doc = {
            "videos": n, "preset": args.preset, "device": args.device, "workers": workers,
            "cpu_cores": os.cpu_count(), "host": platform.node(),
            "decode_only": {"seconds": dec_s, "videos_per_s": n / dec_s, "frames_per_s": dec_frames / dec_s},
            "extraction": {"seconds": ext_s, "videos_per_s": n / ext_s, "frames_per_s": ext_frames / ext_s},
            "cache_hits_seconds": hit_s, "ratio": dec_s / ext_s, "split_seconds": split,
            "statuses": statuses, "tubes": len(res.tubes), "passes": passes, "hold_mb": args.hold_mb,
        }
        if args.device.startswith("cuda"):
            import torch

            doc["gpu"] = torch.cuda.get_device_name(0)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if copies is not None:
        copies.cleanup()


if __name__ == "__main__":
    main()
