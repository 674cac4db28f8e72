"""What a scan report costs: `deepfake scan` beside `deepfake report` of its JSON, measured in one run
on the same videos, for each ``--span``.

For each span, in a fresh cache folder: the scan's first run (extraction and scoring), its second run
(scores from the cache), then the report rebuilt from the scan's JSON (strips, thumbnails, timelines,
Grad-CAM). Wall and CPU seconds of each command (CPU: user + system of the child processes), the
report's size, and the ratios report / first scan, so that the figures hold on another machine.

Usage (the README's table: the six sample videos, the built-in model)::

    python bench/bench_report.py ../shared/data/dfdc ../shared/data/ffpp --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], env: dict) -> tuple[float, float]:
    """(wall s, CPU s) of ``deepfake ARGS`` in a child process; its failure stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dfdc_cli", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):  # 1: some video failed, which is a result, not a crash
        sys.exit(f"deepfake {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("videos", nargs="+", help="video files or folders")
    ap.add_argument("--spans", default="first,whole", help="comma-separated --span values")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--members", default=None, help="scan's --members (default: what scan uses)")
    ap.add_argument("--work", type=Path, default=None, help="keep the JSONs and reports here")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    a = ap.parse_args()

    work = a.work or Path(tempfile.mkdtemp(prefix="bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for span in a.spans.split(","):
        env = dict(os.environ, DEEPFAKE_CACHE_DIR=str(work / f"cache-{span}"))
        shutil.rmtree(work / f"cache-{span}", ignore_errors=True)
        scan_json, report = work / f"scan-{span}.json", work / f"report-{span}"
        shutil.rmtree(report, ignore_errors=True)
        scan = ["scan", *a.videos, "--span", span, "--workers", str(a.workers), "--json", str(scan_json)]
        if a.members:
            scan += ["--members", a.members]
        first = _run(scan, env)
        scan_json.unlink()
        cached = _run(scan, env)
        rep = _run(["report", str(scan_json), "--out", str(report)], env)
        doc = json.loads(scan_json.read_text())
        n = len(doc["videos"])
        windows = sum(len(v.get("windows") or []) for v in doc["videos"])
        size = _size(report)
        rows.append(dict(span=span, videos=n, windows=windows, scan_first_wall=first[0], scan_first_cpu=first[1],
                         scan_cached_wall=cached[0], scan_cached_cpu=cached[1], report_wall=rep[0], report_cpu=rep[1],
                         report_bytes=size, judged_by=doc.get("judged_by", "")))

    print(f"{rows[0]['judged_by']}; {os.cpu_count()} CPU cores, --workers {a.workers}; load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'span':<7}{'videos':>7}{'windows':>8}  {'scan 1st wall/CPU s':>20}  {'cached wall/CPU s':>18}  "
          f"{'report wall/CPU s':>18}  {'report/scan wall':>16}  {'MB, per video':>14}")
    for r in rows:
        print(f"{r['span']:<7}{r['videos']:>7}{r['windows']:>8}  "
              f"{r['scan_first_wall']:>10.1f} /{r['scan_first_cpu']:>7.1f}  "
              f"{r['scan_cached_wall']:>9.1f} /{r['scan_cached_cpu']:>6.1f}  "
              f"{r['report_wall']:>9.1f} /{r['report_cpu']:>6.1f}  "
              f"{r['report_wall'] / r['scan_first_wall']:>16.2f}  "
              f"{r['report_bytes'] / 1e6:>6.2f}, {r['report_bytes'] / 1e6 / max(r['videos'], 1):.2f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
