"""How much the H.264 round trip of the face tubes moved p(fake): each member scores the same tubes
of the same videos twice, once as scan hands them over now (the crops, in memory) and once after
writing them as H.264 MP4 (crf 23, as the tube store does) and decoding them again (what scan did
before it scored in memory).

Members carry the seed's golden-layout synthetic weights (:mod:`dfdc_models.synthetic`), whose outputs
are spread over 0.27..0.98 rather than saturated, so a pixel change shows in p(fake).

    python bench/bench_roundtrip.py ../shared/data --members mc3_112,r2plus1d_112 --max-frames 32

``--max-frames`` cuts each tube to its first N frames (the 224 members cost minutes per tube on a
CPU); the 2D member always sees its first 32 crops.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALL = ["i3d_224", "i3d_cutmix_224", "r3d34_224", "mc3_112", "mc3_224", "r2plus1d_112", "r2plus1d_cutmix_112",
       "seresnext50_2d"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="+", type=Path)
    ap.add_argument("--members", default=",".join(ALL))
    ap.add_argument("--max-frames", type=int, default=0, help="cut tubes to their first N frames (0: whole)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import os

    tmp = Path(tempfile.mkdtemp(prefix="bench-roundtrip-"))
    os.environ.setdefault("DEEPFAKE_CACHE_DIR", str(tmp / "cache"))
    import torch

    from dfdc_cli.scan import members as MB
    from dfdc_cli.scan import scanner as S
    from dfdc_cli.scan import inputs as SI
    from dfdc_cli.faces.extract import PRESETS
    from dfdc_cli.faces.video import read_video, write_video
    from dfdc_models.synthetic import synthetic_member

    paths = SI.expand_paths(args.videos)
    got: list = [None] * len(paths)
    SI.stream_extract(paths, "cpu", args.workers, lambda i, e: got.__setitem__(i, e))
    crf = PRESETS["scan"].crf
    mem, mp4 = [], []
    for vi, e in enumerate(got):
        for row in e.tubes:
            f3, f2 = e.pixels[int(row["tube_id"])]
            if args.max_frames:
                f3 = f3[: args.max_frames]
            stem = tmp / f"v{vi}_t{row['tube_id']}"
            write_video(f"{stem}.mp4", f3, 25.0, crf=crf)
            r3 = read_video(f"{stem}.mp4")
            r2 = None
            if f2 is not None:
                write_video(f"{stem}_2d.mp4", f2, 25.0, crf=crf)
                r2 = read_video(f"{stem}_2d.mp4")
            mem.append(SI.LoadedTube(vi, int(row["tube_id"]), f3, f2))
            mp4.append(SI.LoadedTube(vi, int(row["tube_id"]), r3, r2))
            print(f"{e.name} tube {row['tube_id']}: {len(f3)} frames, mean |pixel change| "
                  f"{np.abs(r3.astype(np.int16) - f3).mean():.2f} (3D)", flush=True)
    out = {"tubes": len(mem), "max_frames": args.max_frames, "members": {}}
    for name in args.members.split(","):
        m = MB.member_from_model(synthetic_member(name))
        sc = S.Scanner(members=[m], device="cpu", batch_size=1)
        with torch.no_grad():
            a = np.array([s[name] for s in sc.score_tubes(mem)])
            b = np.array([s[name] for s in sc.score_tubes(mp4)])
        d = np.abs(a - b)
        out["members"][name] = {"mean_abs_dp": float(d.mean()), "max_abs_dp": float(d.max()),
                                "p_memory": a.tolist(), "p_mp4": b.tolist()}
        print(f"{name:<22} |dp| mean {d.mean():.2e}  max {d.max():.2e}  (p in memory {a.min():.3f}..{a.max():.3f})",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
