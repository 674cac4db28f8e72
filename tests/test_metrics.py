"""Metrics against hand-computed values, degenerate cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dfdc_cli.evaluate import metrics as M

# Two REAL (0.1, 0.4) and two FAKE (0.35, 0.8).
Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


def test_log_loss_by_hand():
    assert M.log_loss([1, 0], [0.9, 0.2]) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)


def test_log_loss_uses_the_seeds_clip():
    # A confident mistake costs -ln(0.001), not infinity; a confident hit costs -ln(0.999).
    assert M.log_loss([1], [0.0]) == pytest.approx(-math.log(0.001))
    assert M.log_loss([0], [1.0]) == pytest.approx(-math.log(0.001))
    assert M.log_loss([1], [1.0]) == pytest.approx(-math.log(0.999))
    assert M.log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))


def test_roc_auc_by_hand():
    # Pairs (fake, real): 0.35>0.1 yes, 0.35>0.4 no, 0.8>both yes -> 3/4.
    assert M.roc_auc(Y, P) == pytest.approx(0.75)
    assert M.roc_auc([0, 1], [0.2, 0.8]) == 1.0
    assert M.roc_auc([1, 0], [0.2, 0.8]) == 0.0


def test_roc_auc_ties_count_half():
    assert M.roc_auc([0, 1, 1], [0.3, 0.3, 0.9]) == pytest.approx(0.75)
    from scipy.stats import rankdata  # what roc_auc ranks with: ties share their average rank

    assert rankdata([3, 1, 3, 2]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_all_equal_scores():
    y = [0, 1, 0, 1, 1]
    p = [0.5] * 5
    out = M.binary_metrics(y, p)
    assert out["roc_auc"] == 0.5
    assert out["eer"] == pytest.approx(0.5)
    assert out["average_precision"] == pytest.approx(3 / 5)  # one threshold: precision 3/5, recall 1
    assert any("equal" in n for n in out["notes"])


def test_one_class_only():
    out = M.binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert math.isnan(out["roc_auc"]) and math.isnan(out["eer"])
    assert out["average_precision"] == 1.0
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["balanced_accuracy"] == pytest.approx(2 / 3)
    assert out["n_fake"] == 3 and out["n_real"] == 0
    assert out["notes"] and "only FAKE" in out["notes"][0]
    out = M.binary_metrics([0, 0], [0.9, 0.2])
    assert math.isnan(out["roc_auc"]) and math.isnan(out["average_precision"])
    assert out["balanced_accuracy"] == 0.5


def test_empty():
    out = M.binary_metrics([], [])
    assert out["n"] == 0 and math.isnan(out["log_loss"]) and math.isnan(out["accuracy"])


def test_average_precision_by_hand():
    # Descending: 0.8 F (P 1, R .5), 0.4 R (P .5, R .5), 0.35 F (P 2/3, R 1), 0.1 R.
    assert M.average_precision(Y, P) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_accuracy_and_balanced_accuracy():
    y = [1, 1, 1, 0]
    p = [0.9, 0.5, 0.1, 0.9]  # 0.5 counts as FAKE (p >= threshold)
    assert M.accuracy(y, p) == pytest.approx(0.5)
    assert M.balanced_accuracy(y, p) == pytest.approx((2 / 3 + 0) / 2)
    assert M.confusion(y, p) == {"tp": 2, "fp": 1, "tn": 0, "fn": 1}
    assert M.accuracy(y, p, threshold=0.95) == pytest.approx(0.25)


def test_roc_curve_points():
    fpr, tpr, thr = M.roc_curve(Y, P)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1]
    assert tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert thr[0] == np.inf and thr[1:].tolist() == [0.8, 0.4, 0.35, 0.1]


def test_eer_exact_and_interpolated():
    assert M.eer(Y, P) == (pytest.approx(0.5), pytest.approx(0.4))
    assert M.eer([0, 1], [0.2, 0.8]) == (0.0, 0.8)
    # ROC (0,0) (0,.5) (1/3,.5) (2/3,.5) ...: FPR = FNR half way between the 0.8 and 0.7 points.
    rate, thr = M.eer([1, 0, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.1])
    assert rate == pytest.approx(0.5)
    assert thr == pytest.approx(0.75)


def test_calibration_bins():
    c = M.calibration_bins([0, 1, 1, 0], [0.05, 0.15, 0.95, 0.92], n_bins=10)
    assert c["count"] == [1, 1, 2]
    assert c["frac_fake"] == [0.0, 1.0, 0.5]
    assert c["ece"] == pytest.approx((0.05 + 0.85 + 2 * abs(0.935 - 0.5)) / 4)


def test_bootstrap_is_seeded_and_brackets():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    a = M.bootstrap_ci(y, p, n=200, seed=3)
    b = M.bootstrap_ci(y, p, n=200, seed=3)
    assert a == b
    point = M.binary_metrics(y, p)
    for name, ci in a.items():
        assert ci["lo"] <= point[name] <= ci["hi"], name
        assert ci["n_valid"] == 200
    # Perfect separation: the AUC interval is [1, 1].
    ci = M.bootstrap_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n=100, seed=0)["roc_auc"]
    assert ci["lo"] == 1.0 and ci["hi"] == 1.0 and 0 < ci["n_valid"] < 100


def test_bootstrap_groups_resample_whole_groups():
    # Two groups, each one class: a resample either has both groups or one; never a mix inside one.
    ci = M.bootstrap_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n=50, seed=1, groups=["a", "a", "b", "b"])
    assert ci["roc_auc"]["lo"] == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        M.log_loss([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        M.log_loss([0, 1], [0.1])
