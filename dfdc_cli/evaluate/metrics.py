"""Binary classification metrics for p(fake) scores, in numpy (scipy for the ranks; no scikit-learn).

Conventions: ``y`` is 1 for FAKE and 0 for REAL, ``p`` is p(fake). A prediction is FAKE when
``p >= threshold`` (0.5 by default), the same rule `deepfake scan` uses for its verdict.

Log loss is the competition's binary log loss, with scores clipped to [0.001, 0.999] as the seed did
before submitting (docs/method.md §5). Kaggle's scorer itself clipped at 1e-15, so an unclipped
submission could score worse than ours on confident mistakes; with the seed's clip in place the two
agree.

Degenerate inputs never raise: a metric that is undefined (ROC AUC, average precision or EER with only
one class present; anything on zero samples) is NaN, and :func:`binary_metrics` says why in ``notes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.stats import rankdata

from dfdc_cli.scan.ensemble import CLIP_LO

CLIP = CLIP_LO  # the seed's clip: p in [0.001, 0.999], the ensemble's own


def labels_and_scores(y, p) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0 REAL / 1 FAKE) and finite scores as float arrays of one length, or ValueError."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {p.size}")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (REAL) or 1 (FAKE)")
    if np.any(~np.isfinite(p)):
        raise ValueError("scores must be finite")
    return y, p


def clip_probs(p, eps: float = CLIP) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)


def log_loss(y, p, eps: float = CLIP) -> float:
    """Mean binary cross-entropy of p(fake) after clipping to [eps, 1 - eps]."""
    y, p = labels_and_scores(y, p)
    if y.size == 0:
        return math.nan
    p = clip_probs(p, eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def roc_auc(y, p) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half). NaN unless both classes occur."""
    y, p = labels_and_scores(y, p)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan

    r = rankdata(p)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, from (0, 0) (threshold +inf) to (1, 1).

    Point i counts ``p >= thresholds[i]`` as FAKE. With one class only, the missing rate is NaN.
    """
    y, p = labels_and_scores(y, p)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(ps[1:] != ps[:-1]), ps.size - 1] if ps.size else np.zeros(0, int)
    tps = np.cumsum(ys)[last] if ps.size else np.zeros(0)
    fps = (last + 1) - tps
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, ps[last]] if ps.size else np.array([np.inf])
    n_pos, n_neg = (tps[-1], fps[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tps / n_pos if n_pos > 0 else np.full_like(tps, np.nan)
        fpr = fps / n_neg if n_neg > 0 else np.full_like(fps, np.nan)
    return fpr, tpr, thresholds


def average_precision(y, p) -> float:
    """Area under the precision-recall curve as a step sum: sum_k (R_k - R_{k-1}) P_k over distinct
    score thresholds (scikit-learn's definition). NaN when there is no FAKE; defined (= precision of
    the whole set) when there is no REAL."""
    y, p = labels_and_scores(y, p)
    n_pos = y.sum()
    if y.size == 0 or n_pos == 0:
        return math.nan
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(ps[1:] != ps[:-1]), ps.size - 1]
    tps = np.cumsum(ys)[last]
    predicted = last + 1
    precision = tps / predicted
    recall = tps / n_pos
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def confusion(y, p, threshold: float = 0.5) -> dict[str, int]:
    """Counts at a threshold (FAKE when p >= threshold); FAKE is the positive class."""
    y, p = labels_and_scores(y, p)
    pred = p >= threshold
    pos = y == 1
    return {
        "tp": int(np.sum(pred & pos)),
        "fp": int(np.sum(pred & ~pos)),
        "tn": int(np.sum(~pred & ~pos)),
        "fn": int(np.sum(~pred & pos)),
    }


def accuracy(y, p, threshold: float = 0.5) -> float:
    y, p = labels_and_scores(y, p)
    if y.size == 0:
        return math.nan
    return float(np.mean((p >= threshold) == (y == 1)))


def balanced_accuracy(y, p, threshold: float = 0.5) -> float:
    """Mean of the per-class recalls (TPR and TNR) over the classes present (as scikit-learn does:
    with one class only it is that class's recall)."""
    y, p = labels_and_scores(y, p)
    if y.size == 0:
        return math.nan
    pred = p >= threshold
    recalls = []
    if np.any(y == 1):
        recalls.append(np.mean(pred[y == 1]))
    if np.any(y == 0):
        recalls.append(np.mean(~pred[y == 0]))
    return float(np.mean(recalls))


def eer(y, p) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs: the point of the ROC curve where the
    false-positive rate equals the false-negative rate (1 - TPR), linearly interpolated between the
    two ROC points that bracket it. (NaN, NaN) unless both classes occur."""
    fpr, tpr, thr = roc_curve(y, p)
    if fpr.size < 2 or np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan, math.nan
    fnr = 1.0 - tpr
    diff = fnr - fpr  # +1 at (0, 0), -1 at (1, 1), non-increasing
    i = int(np.flatnonzero(diff <= 0)[0])
    if diff[i] == 0:
        return float(fpr[i]), float(thr[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    rate = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    # The threshold between the two points (thr[i - 1] may be +inf at the first point).
    lo, hi = thr[i], thr[i - 1]
    th = float(lo) if not np.isfinite(hi) else float(hi + t * (lo - hi))
    return float(rate), th


def calibration_bins(y, p, n_bins: int = 10) -> dict[str, list]:
    """Reliability diagram data on equal-width bins of p: mean p, fraction FAKE and count per bin
    (empty bins left out), plus the expected calibration error (count-weighted |mean p - fraction|)."""
    y, p = labels_and_scores(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    mean_p, frac, count, lo, hi = [], [], [], [], []
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if not m.any():
            continue
        mean_p.append(float(p[m].mean()))
        frac.append(float(y[m].mean()))
        count.append(int(m.sum()))
        lo.append(float(edges[b]))
        hi.append(float(edges[b + 1]))
        ece += m.sum() * abs(p[m].mean() - y[m].mean())
    return {
        "bin_lo": lo,
        "bin_hi": hi,
        "mean_p": mean_p,
        "frac_fake": frac,
        "count": count,
        "ece": float(ece / y.size) if y.size else math.nan,
    }


@dataclass(frozen=True)
class Metric:
    """One figure of every report: its function and its column header (eval's tables, summary.md/html)."""

    fn: Callable[[np.ndarray, np.ndarray], float]
    label: str

    def __call__(self, y, p) -> float:
        return self.fn(y, p)


# The one place to add a metric: name -> Metric. Every report gives these figures (and bootstraps them),
# in this order; metrics.json uses the names, the tables the labels.
METRICS: dict[str, Metric] = {
    "log_loss": Metric(log_loss, "log loss"),
    "roc_auc": Metric(roc_auc, "ROC AUC"),
    "average_precision": Metric(average_precision, "AP"),
    "accuracy": Metric(accuracy, "acc@0.5"),
    "balanced_accuracy": Metric(balanced_accuracy, "bal acc"),
    "eer": Metric(lambda y, p: eer(y, p)[0], "EER"),
}


def binary_metrics(y, p, threshold: float = 0.5) -> dict:
    """Every figure of a report for one set of scores: metrics, counts and notes on undefined ones."""
    y, p = labels_and_scores(y, p)
    n_fake = int(y.sum())
    n_real = int(y.size - n_fake)
    out: dict = {name: fn(y, p) for name, fn in METRICS.items()}
    out["eer_threshold"] = eer(y, p)[1]
    out["threshold"] = threshold
    out["n"] = int(y.size)
    out["n_fake"] = n_fake
    out["n_real"] = n_real
    out.update(confusion(y, p, threshold))
    notes = []
    if y.size == 0:
        notes.append("no samples: every metric is undefined")
    elif n_fake == 0 or n_real == 0:
        only = "FAKE" if n_real == 0 else "REAL"
        notes.append(
            f"only {only} samples: ROC AUC and EER are undefined (NaN)"
            + ("; average precision is undefined (NaN)" if n_fake == 0 else "")
            + "; balanced accuracy is the recall of the one class present"
        )
    elif y.size and np.all(p == p[0]):
        notes.append("all scores are equal: ROC AUC is 0.5 by construction")
    out["notes"] = notes
    return out


def bootstrap_ci(
    y,
    p,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    metrics: Optional[Sequence[str]] = None,
    groups=None,
) -> dict[str, dict]:
    """Percentile bootstrap confidence intervals: resample the samples (or whole ``groups``, e.g. the
    tubes of one video together) with replacement ``n`` times, with a seeded generator.

    Returns ``{metric: {"lo", "hi", "level", "n_valid"}}``; resamples where a metric is undefined
    (e.g. one class drawn) are skipped and counted out of ``n_valid``.
    """
    y, p = labels_and_scores(y, p)
    names = list(metrics or METRICS)
    rng = np.random.default_rng(seed)
    if groups is None:
        units = [np.array([i]) for i in range(y.size)]
    else:
        g = np.asarray(groups)
        _, inverse = np.unique(g, return_inverse=True)
        units = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)] if g.size else []
    k = len(units)
    values: dict[str, list[float]] = {m: [] for m in names}
    if k:
        for _ in range(n):
            pick = rng.integers(0, k, size=k)
            idx = np.concatenate([units[j] for j in pick])
            ys, ps = y[idx], p[idx]
            for m in names:
                v = METRICS[m](ys, ps)
                if not math.isnan(v):
                    values[m].append(v)
    alpha = (1.0 - level) / 2.0
    out = {}
    for m in names:
        v = np.asarray(values[m])
        if v.size:
            lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
            out[m] = {"lo": float(lo), "hi": float(hi), "level": level, "n_valid": int(v.size)}
        else:
            out[m] = {"lo": math.nan, "hi": math.nan, "level": level, "n_valid": 0}
    return out
