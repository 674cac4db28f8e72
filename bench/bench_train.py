"""Training throughput (clips/s) reading tube MP4s, beside the same step on tensors already in device
memory, in the same run: the ratio says how much the data pipeline (decode + augmentation in
DataLoader workers, host->device copy) costs.

    python bench/bench_train.py [--index TUBES] [--members r2plus1d_112 i3d_224] [--device cuda]
                                [--steps 30] [--warmup 5] [--workers 8] [--json bench/out/train.json]

For each member, with its recipe's batch size, clip length, resolution and augmentation:

* pipeline: the trainer's DataLoader (balanced sampler, random windows decoded from the tube MP4s,
  per-clip augmentation in ``--workers`` processes) feeding the trainer's step (forward, BCE, backward,
  optimiser, one-cycle scheduler, AMP on GPU);
* in-memory: the same step on one batch already in device memory (uint8, as the loader delivers it),
  repeated;
* loader-only: the DataLoader alone (no model), to show whether the workers could keep up.

Tubes: ``--index`` (a `deepfake extract` tube index), else synthetic 256x256 tube MP4s (moving smooth
textures, the extractor's codec settings) generated once into bench/out/synthetic_tubes.

CPU smoke run (seconds; tiny clips)::

    python bench/bench_train.py --device cpu --steps 3 --warmup 2 --batch-size 2 --clip-frames 8 --res 32 --workers 1

(I3D keeps 224x224 and at least 16 frames: its head pools a fixed 2x7x7 map.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT = Path(__file__).resolve().parent / "out"


def synthetic_index(folder: Path, n: int = 24, frames: int = 100, seed: int = 0) -> Path:
    """n synthetic 256x256 tubes (half REAL, half FAKE) with `frames` frames, + tubes.csv."""
    import numpy as np

    from dfdc_cli.faces.index import TUBE_COLUMNS, TUBES_CSV, write_table
    from dfdc_cli.faces.video import write_video

    if (folder / TUBES_CSV).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        # (numpy only: OpenCV's thread pool used here would hang forked DataLoader workers that use it)
        yy, xx = np.mgrid[0:512, 0:512].astype(np.float32) / 512
        tex = np.full((512, 512, 3), 128.0, np.float32)
        for _ in range(6):
            fy, fx = rng.uniform(-8, 8, 2)
            tex += np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 6.3))[..., None] * rng.uniform(6, 20, 3)
        tex += rng.normal(0, 6, tex.shape).astype(np.float32)  # some fine detail for the codec
        dx, dy = rng.uniform(-1, 1, 2)
        clip = np.stack([tex[int(128 + dy * t): int(128 + dy * t) + 256, int(128 + dx * t): int(128 + dx * t) + 256]
                         for t in range(frames)]).clip(0, 255).astype(np.uint8)
        label = "REAL" if i % 2 == 0 else "FAKE"
        name = f"synth{i:03d}.mp4"
        path = folder / f"synth{i:03d}_0.mp4"
        write_video(path, clip, 29.97)
        rows.append(dict(video=f"/synthetic/{name}", name=name, tube_id=0, first_frame=0, last_frame=frames - 1,
                         n_frames=frames, x1=0, y1=0, x2=256, y2=256, mean_prob=1.0, max_prob=1.0, n_detections=10,
                         label=label, original="" if label == "REAL" else f"synth{i - 1:03d}.mp4",
                         part="dfdc_train_part_0", tube_path=str(path), track_path="", tube2d_path="", key=""))
    write_table(folder / TUBES_CSV, rows, TUBE_COLUMNS)
    return folder


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_member(member: str, args, index: Path) -> dict:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from dfdc_cli.train import data
    from dfdc_cli.train import sampling
    from dfdc_cli.train.model_adapter import build_model
    from dfdc_cli.train.optim import make_optimizer, make_scheduler
    from dfdc_cli.train.recipe import resolve_recipe
    from dfdc_cli.train.loop import Stepper
    from dfdc_models.specs import get_spec

    over = {"model": {"init": "scratch"}, "data": {"index": str(index), "workers": args.workers},
            "train": {"device": args.device, "precision": args.amp}}
    if args.batch_size:
        over.setdefault("optim", {})["batch_size"] = args.batch_size
    if args.clip_frames:
        over["data"]["clip_frames"] = args.clip_frames
    if args.res:
        over["data"]["input_res"] = args.res
    spec = get_spec(member)
    if spec.arch == "i3d" and (args.res or args.clip_frames):
        # I3D's head pools a fixed 2x7x7 map: 224x224 input and >= 9 frames, whatever the smoke settings.
        over["data"]["input_res"] = 224
        over["data"]["clip_frames"] = max(16, args.clip_frames or 16)
    r = resolve_recipe(member=member, overrides=over)
    kind = "3d" if spec.is_3d else "2d"
    clip_t = int(r["data"]["clip_frames"]) or spec.clip_frames
    res = int(r["data"]["input_res"]) or spec.res
    bs = int(r["optim"]["batch_size"])
    from dfdc_cli.runtime import setup_runtime

    rt = setup_runtime(r["train"]["device"], r["train"]["precision"])
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    tubes = data.load_tubes(index)
    total = args.warmup + args.steps
    # Enough epochs of the balanced sampler for warmup + steps batches.
    labels = tubes["y"].to_numpy()
    sampler = sampling.BalancedSampler(labels, seed=0)
    items = []
    e = 0
    while len(items) < total * bs:
        items += sampler.epoch_items(e)
        e += 1
    items = items[: total * bs]
    ds = data.ClipDataset(tubes, clip_frames=clip_t, res=res, train=True, kind=kind, aug=r["augment"],
                          pad=r["data"]["pad"], frames_2d=int(r["data"]["frames_2d"]))
    kw = dict(num_workers=args.workers, pin_memory=rt.device.type == "cuda", worker_init_fn=data.worker_init)
    if args.workers > 0:
        kw.update(prefetch_factor=max(1, int(r["data"]["prefetch"])), persistent_workers=False)

    def loader():
        return DataLoader(ds, batch_size=bs, sampler=items, drop_last=True, **kw)

    model, _ = build_model(spec, "scratch", rt.device)
    model.train()
    opt = make_optimizer(model.parameters(), r["optim"])
    sched = make_scheduler(opt, r["optim"], 10 * total + 10)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.amp_dtype == torch.float16)
    step = Stepper(model, opt, sched, scaler, rt, kind, r["augment"], float(r["optim"]["grad_clip"]))
    rng = np.random.default_rng(0)

    # 1) loader only
    t0 = None
    n = 0
    for i, (x, y) in enumerate(loader()):
        if i == args.warmup:
            t0 = time.perf_counter()
            n = 0
        n += len(y)
    loader_only = n / (time.perf_counter() - t0) if t0 else math.nan
    first_batch = (x, y)

    # 2) pipeline: loader + step
    n = 0
    t0 = None
    for i, (x, y) in enumerate(loader()):
        if i == args.warmup:
            _sync(rt.device)
            t0 = time.perf_counter()
            n = 0
        loss = step(x, y, rng)
        n += len(y)
    _sync(rt.device)
    pipeline = n / (time.perf_counter() - t0) if t0 else math.nan

    # 3) in memory: the same step on one batch already on the device
    xd = first_batch[0].to(rt.device)
    yd = first_batch[1].to(rt.device)
    for _ in range(args.warmup):
        step(xd, yd, rng)
    _sync(rt.device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step(xd, yd, rng)
    _sync(rt.device)
    in_memory = args.steps * bs / (time.perf_counter() - t0)
    float(loss)
    return {
        "member": member, "device": str(rt.device),
        "gpu": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "",
        "amp": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "off",
        "batch": bs, "clip": f"{clip_t}x{res}x{res}" if kind == "3d" else f"{res}x{res}",
        "workers": args.workers, "steps": args.steps, "warmup": args.warmup,
        "loader_only_clips_s": loader_only, "pipeline_clips_s": pipeline, "in_memory_clips_s": in_memory,
        "pipeline_cost": 1.0 - pipeline / in_memory,
        "cpu_cores": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=None, help="tube index (default: synthetic tubes)")
    ap.add_argument("--members", nargs="+", default=["r2plus1d_112", "i3d_224"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--batch-size", type=int, default=0, help="default: the member's recipe")
    ap.add_argument("--clip-frames", type=int, default=0, help="default: the member's T (CPU smoke runs: small)")
    ap.add_argument("--res", type=int, default=0, help="default: the member's resolution")
    ap.add_argument("--synthetic-tubes", type=int, default=24)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    index = args.index or synthetic_index(OUT / "synthetic_tubes", n=args.synthetic_tubes)
    rows = []
    for m in args.members:
        row = bench_member(m, args, index)
        rows.append(row)
        print(f"{row['member']:>16s} [{row['device']} {row['gpu']} amp {row['amp']}] batch {row['batch']} "
              f"clip {row['clip']} workers {row['workers']}: pipeline {row['pipeline_clips_s']:.2f} clips/s, "
              f"in-memory {row['in_memory_clips_s']:.2f} clips/s, loader alone {row['loader_only_clips_s']:.2f} "
              f"clips/s -> data pipeline costs {100 * row['pipeline_cost']:.1f}%", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
