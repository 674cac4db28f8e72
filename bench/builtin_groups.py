"""Per-group figures of a frame model from one `deepfake eval` report (bench/train_builtin.sh).

    python bench/builtin_groups.py EVAL_DIR VAL_DIR MEMBER [--threshold T] [--json OUT]

EVAL_DIR: a `deepfake eval --val VAL_DIR/all.csv` report (its videos.csv has every video's p(fake));
VAL_DIR: the CSVs of `bench/corpus_split.py eval-csvs` (one per group). For each group: video ROC AUC,
log loss and AP with 95% bootstrap intervals (1,000 resamples, seed 0: the same functions and
resampling as `deepfake eval`), and the FAKE / REAL counts called at the threshold. Computing them from
the one report gives the numbers `deepfake eval --val VAL_DIR/<group>.csv` prints, without scoring
every video again."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfdc_cli import metrics as M  # noqa: E402

ORDER = ("swaps", "corpus_fakes", "ghost", "wav2lip", "generated", "all", "swaps_tune", "swaps_test", "tune", "test")


def group_figures(videos: pd.DataFrame, table: pd.DataFrame, column: str, threshold: float) -> dict:
    by_path = dict(zip(videos["video"].astype(str), videos[column].astype(float)))
    rows = [(1 if lab == "FAKE" else 0, by_path.get(str(f), np.nan)) for f, lab in zip(table["filename"], table["label"])]
    y = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows], dtype=float)
    if np.isnan(p).any():
        raise SystemExit(f"{int(np.isnan(p).sum())} video(s) of the group have no score in the report")
    ci = M.bootstrap_ci(y, p, n=1000, seed=0)
    out = {"n_fake": int(y.sum()), "n_real": int((1 - y).sum())}
    for k in ("roc_auc", "log_loss", "average_precision"):
        out[k] = float(M.METRICS[k](y, p))
        out[f"{k}_ci"] = [ci[k]["lo"], ci[k]["hi"]] if ci.get(k) else None
    out["fake_called_fake"] = int(((p >= threshold) & (y == 1)).sum())
    out["real_called_fake"] = int(((p >= threshold) & (y == 0)).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("eval_dir")
    ap.add_argument("val_dir")
    ap.add_argument("member")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--column", default="", help="videos.csv column of the scores (default: the member's)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    videos = pd.read_csv(Path(a.eval_dir) / "videos.csv")
    out = {}
    for g in ORDER:
        f = Path(a.val_dir) / f"{g}.csv"
        if f.is_file():
            out[g] = group_figures(videos, pd.read_csv(f, dtype=str), a.column or a.member, a.threshold)
    print(f"{'group':<13} {'fake':>4} {'real':>4}  {'AUC':>5} {'[95% CI]':<13} {'logloss':>7}  fake>=t real>=t")
    for g, r in out.items():
        lo, hi = r["roc_auc_ci"] or (float("nan"), float("nan"))
        print(f"{g:<13} {r['n_fake']:>4} {r['n_real']:>4}  {r['roc_auc']:.3f} [{lo:.2f}, {hi:.2f}]  {r['log_loss']:7.3f}"
              f"  {r['fake_called_fake']:>7} {r['real_called_fake']:>6}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
