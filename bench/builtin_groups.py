"""Per-group figures of a frame model from one `deepfake eval` report (bench/train_builtin.sh).

    python bench/builtin_groups.py EVAL_DIR VAL_DIR MEMBER [--threshold T] [--json OUT]
                                   [--calibration CAL_JSON [--plot GROUP=PNG]]

EVAL_DIR: a `deepfake eval --val VAL_DIR/all.csv` report (its videos.csv has every video's p(fake));
VAL_DIR: the CSVs of `bench/corpus_split.py eval-csvs` (one per group). For each group: video ROC AUC,
log loss and AP with 95% bootstrap intervals (1,000 resamples, seed 0: the same functions and
resampling as `deepfake eval`), and the FAKE / REAL counts called at the threshold. Computing them from
the one report gives the numbers `deepfake eval --val VAL_DIR/<group>.csv` prints, without scoring
every video again.

With ``--calibration`` (a ``calibration.json`` of `deepfake models calibrate`, fitted on another group,
e.g. ``tune``), each group also gets the log loss of the calibrated p(fake) and its verdicts in the
recorded band (FAKE / UNSURE / REAL per class); ``--plot test=FILE.png`` draws that group's
reliability diagram before and after."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfdc_cli.evaluate import metrics as M  # noqa: E402
from dfdc_models.calibration import Calibration  # noqa: E402

ORDER = ("swaps", "corpus_fakes", "ghost", "wav2lip", "generated", "all", "swaps_tune", "swaps_test", "tune", "test")


def scores(videos: pd.DataFrame, table: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    by_path = dict(zip(videos["video"].astype(str), videos[column].astype(float)))
    y = np.array([1 if lab == "FAKE" else 0 for lab in table["label"]])
    p = np.array([by_path.get(str(f), np.nan) for f in table["filename"]], dtype=float)
    if np.isnan(p).any():
        raise SystemExit(f"{int(np.isnan(p).sum())} video(s) of the group have no score in the report")
    return y, p


def calibrated_figures(y: np.ndarray, p: np.ndarray, cal: Calibration) -> dict:
    q = cal.apply(p)
    verdicts = np.array([cal.verdict(float(v)) for v in q])
    out = {"log_loss_calibrated": float(M.log_loss(y, q))}
    for cls, name in ((1, "fake"), (0, "real")):
        for v in ("FAKE", "UNSURE", "REAL"):
            out[f"{name}_{v.lower()}"] = int(((y == cls) & (verdicts == v)).sum())
    return out


def reliability_plot(path: str, y: np.ndarray, p: np.ndarray, cal: Calibration, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1)
    for q, label, colour in ((p, f"raw (log loss {M.log_loss(y, p):.3f})", "tab:red"),
                             (cal.apply(p), f"calibrated ({M.log_loss(y, cal.apply(p)):.3f})", "tab:blue")):
        b = M.calibration_bins(y, q, n_bins=5)
        keep = [i for i, n in enumerate(b["count"]) if n]
        ax.plot([b["mean_p"][i] for i in keep], [b["frac_fake"][i] for i in keep], "o-", color=colour, label=label)
    ax.axvspan(cal.lo, cal.hi, color="0.9", label=f"UNSURE [{cal.lo:.2f}, {cal.hi:.2f})")
    ax.set(xlabel="p(fake)", ylabel="fraction FAKE", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def group_figures(videos: pd.DataFrame, table: pd.DataFrame, column: str, threshold: float) -> dict:
    y, p = scores(videos, table, column)
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
    ap.add_argument("--calibration", default="", help="calibration.json of `deepfake models calibrate`")
    ap.add_argument("--plot", action="append", default=[], help="GROUP=PNG: reliability before/after")
    a = ap.parse_args()
    videos = pd.read_csv(Path(a.eval_dir) / "videos.csv")
    column = a.column or a.member
    cal = None
    if a.calibration:
        doc = json.loads(Path(a.calibration).read_text())
        cal = Calibration.from_dict(doc["members"][a.member]["calibration"])
    out = {}
    for g in ORDER:
        f = Path(a.val_dir) / f"{g}.csv"
        if f.is_file():
            table = pd.read_csv(f, dtype=str)
            out[g] = group_figures(videos, table, column, a.threshold)
            if cal is not None:
                out[g].update(calibrated_figures(*scores(videos, table, column), cal))
    for spec in a.plot:
        g, _, png = spec.partition("=")
        y, p = scores(videos, pd.read_csv(Path(a.val_dir) / f"{g}.csv", dtype=str), column)
        reliability_plot(png, y, p, cal, f"{a.member}: {g} ({int(y.sum())} fake, {int((1 - y).sum())} real)")
    print(f"{'group':<13} {'fake':>4} {'real':>4}  {'AUC':>5} {'[95% CI]':<13} {'logloss':>7}  fake>=t real>=t")
    for g, r in out.items():
        lo, hi = r["roc_auc_ci"] or (float("nan"), float("nan"))
        line = (f"{g:<13} {r['n_fake']:>4} {r['n_real']:>4}  {r['roc_auc']:.3f} [{lo:.2f}, {hi:.2f}]  {r['log_loss']:7.3f}"
                f"  {r['fake_called_fake']:>7} {r['real_called_fake']:>6}")
        if cal is not None:
            line += (f"   calibrated log loss {r['log_loss_calibrated']:.3f}; fakes F/U/R {r['fake_fake']}/"
                     f"{r['fake_unsure']}/{r['fake_real']}, reals F/U/R {r['real_fake']}/{r['real_unsure']}/{r['real_real']}")
        print(line)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
