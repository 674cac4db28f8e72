"""What Ray adds on one machine: local extraction beside `--ray local`, same videos, same CPUs.

    python bench/bench_ray.py [PATH...] [--cpus N] [--preset train|scan|default] [--json FILE]

Local = ``dfdc_cli.faces.extract.extract`` with N worker processes; Ray = the same call with the Ray
executor on a local Ray cluster of N CPUs (N tasks at a time), each into a fresh temporary folder
(no cache hits); the Ray cluster is started first (and stays idle during the local run). The Ray
figure is given with and without the cluster's start and stop (which a real cluster pays once,
not per command). Both runs must give the same index; the script checks it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", default=["/work/shared/data/dfdc", "/work/shared/data/ffpp"])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--preset", default="default", help="train | scan | default (the CLI's default settings)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import ray

    from dfdc_cli.faces import extract as X
    from dfdc_cli.faces.extract.cluster import ExtractExecutor
    from dfdc_cli.scale.cluster import local_priority
    from dfdc_cli.faces.index import read_tubes, read_videos
    from dfdc_cli.faces.inputs import collect_inputs

    params = X.DEFAULT_PARAMS if args.preset == "default" else X.PRESETS[args.preset]
    n = len(collect_inputs(args.paths))

    def rows(out: Path):
        v = read_videos(out).drop(columns=["seconds"]).sort_values("video").to_dict("records")
        t = read_tubes(out)[["video", "tube_id", "first_frame", "last_frame", "x1", "y1", "x2", "y2"]]
        return v, t.sort_values(["video", "tube_id"]).to_dict("records")

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        local_priority()  # as --ray local does: the workers at the priority of the local ones
        t0 = time.perf_counter()
        for attempt in range(3):  # Ray gives its processes 30 s to start: too few on a loaded machine
            try:
                ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
                break
            except Exception as exc:  # noqa: BLE001 - retried, then raised
                if attempt == 2:
                    raise
                print(f"Ray did not start ({exc}); again")
                ray.shutdown()
        started = time.perf_counter() - t0

        t0 = time.perf_counter()
        X.extract(args.paths, a, params, workers=args.cpus, progress=False, quiet=True)
        local = time.perf_counter() - t0

        t1 = time.perf_counter()
        X.extract(args.paths, b, params, progress=False, quiet=True, executor=ExtractExecutor(b, params))
        on_ray = time.perf_counter() - t1
        t2 = time.perf_counter()
        ray.shutdown()
        stopped = time.perf_counter() - t2
        same = rows(Path(a)) == rows(Path(b))

    figures = {
        "videos": n, "cpus": args.cpus, "preset": args.preset, "local_s": round(local, 2),
        "ray_s": round(on_ray, 2), "ray_start_s": round(started, 2), "ray_stop_s": round(stopped, 2),
        "ray_over_local": round(on_ray / local, 3),
        "ray_with_start_stop_over_local": round((started + on_ray + stopped) / local, 3),
        "same_index": same,
    }
    print(f"{n} videos, {args.cpus} CPUs, preset {args.preset}")
    print(f"  local ({args.cpus} worker processes)   {local:8.1f} s")
    print(f"  --ray local ({args.cpus} CPUs)          {on_ray:8.1f} s   x{on_ray / local:.2f} of local")
    print(f"  + Ray start / stop               {started:8.1f} / {stopped:.1f} s   "
          f"x{(started + on_ray + stopped) / local:.2f} of local in all")
    print(f"  same index: {same}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not same:
        raise SystemExit("the Ray run's index differs from the local run's")


if __name__ == "__main__":
    main()
