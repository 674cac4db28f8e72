"""Calibrated p(fake): fit a model's calibration on held-out labelled video scores, choose its UNSURE
band, report and draw it, and record it with the model (:mod:`dfdc_models.calibration` is the record).

What a fit does (``deepfake eval --calibrate`` and ``deepfake models calibrate``):

1. per member, the held-out videos it scored (a video with no face keeps the prior 0.5 and is left
   out) with their labels: ``y`` and the raw score ``s`` (the member's mean p(fake) over faces);
2. the map: Platt scaling on the logit by default. Held-out sets here are small (60-150 videos), and
   two parameters cannot overfit them the way isotonic regression's steps do; temperature (one
   parameter, no shift) and isotonic are there to compare. Platt's targets are his smoothed ones
   ((n_fake + 1) / (n_fake + 2) and 1 / (n_real + 2)), which keep a small set that a score separates
   perfectly from driving the slope to infinity;
3. log loss and expected calibration error before and after, the "after" both in sample and
   cross-validated (5 folds, stratified, seeded): with ~100 videos the in-sample figure flatters;
   the cross-validated log loss of every method is reported beside the chosen one;
4. the UNSURE band (:func:`choose_band`), checked on the cross-validated p(fake): how many videos it
   leaves UNSURE, the false-positive and false-negative rates of the verdicts it gives, and whether
   the decided verdicts are right as often as the rule promises;
5. ``calibration.json`` and ``calibration-<member>.png`` (reliability before and after, and the
   calibrated scores of each class with the band) in the report folder.

:func:`record` writes a fitted calibration into the model it was fitted on: a registry entry's
``manifest.json``, or the built-in model's ``builtin.json``; it refuses when that model has changed
since the evaluation (another model id).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy.optimize import isotonic_regression, minimize, minimize_scalar

from dfdc_cli.atomic import atomic_path, write_json
from dfdc_cli.errors import UserError
from dfdc_cli.evaluate import metrics as M
from dfdc_cli.evaluate.report import pyplot, reliability_axes
from dfdc_cli.scan.results import finite
from dfdc_models import builtin, store
from dfdc_models.calibration import METHODS, Calibration, band_verdict, logit, sigmoid

CALIBRATION_JSON = "calibration.json"
DEFAULT_METHOD = "platt"
DEFAULT_BAND = "odds:2"
FOLDS = 5
MIN_PER_CLASS = 5  # fewer videos of a class than this cannot say anything about a calibration
BAND_HELP = ("UNSURE band rule: 'odds:K' (default odds:2: FAKE when the calibrated odds are K:1 or more "
             "for fake, REAL when K:1 or more for real, UNSURE between), 'rates:FPR,FNR' (the narrowest "
             "band whose verdicts call at most that share of the held-out REAL videos FAKE and FAKE ones "
             "REAL), or 'none' (one threshold, 0.5).")


# ----------------------------------------------------------------------------------------------
# The maps


def _nll(z: np.ndarray, t: np.ndarray) -> float:
    """Cross-entropy of targets ``t`` against sigmoid(``z``), from the logits: exact and convex where
    probabilities round to 0 or 1 (clipping them instead leaves plateaus a line search stalls on)."""
    return float(np.sum(np.logaddexp(0.0, z) - t * z))


def platt_targets(y: np.ndarray) -> np.ndarray:
    n_fake = float(y.sum())
    n_real = float(y.size - n_fake)
    return np.where(y == 1, (n_fake + 1) / (n_fake + 2), 1.0 / (n_real + 2))


def fit_platt(y, s) -> dict:
    """a, b of ``sigmoid(a * logit(s) + b)`` minimising the log loss against Platt's targets."""
    y, s = M.labels_and_scores(y, s)
    z, t = logit(s), platt_targets(y)

    def f(w):
        u = w[0] * z + w[1]
        g = sigmoid(u) - t
        return _nll(u, t), np.array([np.sum(g * z), np.sum(g)])

    res = minimize(f, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = (float(v) for v in res.x)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise UserError("the Platt fit did not converge on these scores")
    if a <= 0:
        raise UserError("on these videos the score does not rise with fakeness (Platt slope <= 0): a "
                        "calibration would reverse the model's order; check the labels")
    return {"a": a, "b": b}


def fit_temperature(y, s) -> dict:
    """t of ``sigmoid(logit(s) / t)`` minimising the log loss (the labels as they are)."""
    y, s = M.labels_and_scores(y, s)
    z = logit(s)
    # log(1/t) in a bounded range: t -> 0 makes every score 0 or 1, a negative t reverses the order.
    # The loss is convex in 1/t, so unimodal in its log, where the search spans 1e-3..1e3 evenly.
    res = minimize_scalar(lambda v: _nll(math.exp(v) * z, y), bounds=(math.log(1e-3), math.log(1e3)),
                          method="bounded")
    return {"t": float(math.exp(-res.x))}


def fit_isotonic(y, s) -> dict:
    """The non-decreasing least-squares fit of the labels on the scores (scipy's pool-adjacent-
    violators), as knots: one per distinct score, the fitted value of its block."""
    y, s = M.labels_and_scores(y, s)
    xs, inv = np.unique(s, return_inverse=True)
    sums = np.bincount(inv, weights=y)
    counts = np.bincount(inv).astype(np.float64)
    fitted = isotonic_regression(sums / counts, weights=counts, increasing=True).x
    return {"x": [float(v) for v in xs], "y": [float(min(max(v, 0.0), 1.0)) for v in fitted]}


FITS = {"platt": fit_platt, "temperature": fit_temperature, "isotonic": fit_isotonic}


def fit_map(y, s, method: str = DEFAULT_METHOD) -> Calibration:
    """The calibration map alone (band 0.5/0.5, no provenance)."""
    if method not in FITS:
        raise UserError(f"--method: {method!r} is not one of {', '.join(METHODS)}")
    return Calibration(method, FITS[method](y, s), 0.5, 0.5)


def folds(y: np.ndarray, k: int = FOLDS, seed: int = 0) -> list[np.ndarray]:
    """Stratified folds (test indices), each class shuffled with a seeded generator and dealt out."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            out[j % k].append(int(i))
    return [np.array(sorted(f), dtype=np.int64) for f in out if f]


def cross_val_apply(y, s, method: str = DEFAULT_METHOD, k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-fold calibrated p: each video calibrated by a map fitted on the other folds."""
    y, s = M.labels_and_scores(y, s)
    out = np.empty_like(s)
    for test in folds(y, k, seed):
        train = np.setdiff1d(np.arange(y.size), test)
        out[test] = fit_map(y[train], s[train], method).apply(s[test])
    return out


# ----------------------------------------------------------------------------------------------
# The UNSURE band


def parse_band(text: str) -> tuple[str, tuple[float, ...]]:
    """``odds:K`` / ``rates:FPR,FNR`` / ``none`` -> (rule, numbers)."""
    raw = (text or "").strip().lower()
    kind, _, rest = raw.partition(":")
    try:
        nums = tuple(float(v) for v in rest.split(",")) if rest.strip() else ()
    except ValueError:
        raise UserError(f"--band: {text!r}: expected odds:K, rates:FPR,FNR or none") from None
    if kind == "none" and not nums:
        return "none", ()
    if kind == "odds" and len(nums) == 1 and nums[0] >= 1:
        return "odds", nums
    if kind == "rates" and len(nums) == 2 and all(0 <= v < 1 for v in nums):
        return "rates", nums
    raise UserError(f"--band: {text!r}: expected odds:K (K >= 1), rates:FPR,FNR (each in [0, 1)) or none")


def _midpoints(p: np.ndarray) -> np.ndarray:
    """Candidate thresholds: halfway between consecutive distinct values, and beyond both ends."""
    u = np.unique(p)
    return np.r_[0.0, (u[1:] + u[:-1]) / 2.0, np.nextafter(1.0, 2.0)] if u.size else np.array([0.5])


def choose_band(y, p, band: str = DEFAULT_BAND) -> tuple[float, float, str]:
    """(lo, hi, the rule in words) on calibrated p(fake) ``p`` of labelled videos ``y``.

    ``odds:K`` (the default, K = 2): lo = 1/(K+1), hi = K/(K+1). On a calibrated p this is Chow's
    reject rule: a verdict is given only where the probability of being wrong is at most 1/(K+1);
    it does not depend on the held-out sample beyond the calibration (2 parameters), so a small set
    cannot move it. ``rates:FPR,FNR``: hi is the lowest threshold calling at most FPR of the REAL
    videos FAKE, lo the highest calling at most FNR of the FAKE videos REAL (empirical; with a
    dozen videos of a class a rate moves in steps of ~8%); where the two overlap, one threshold
    halfway gives both and no video is UNSURE. ``none``: one threshold, 0.5."""
    y, p = M.labels_and_scores(y, p)
    kind, nums = parse_band(band)
    if kind == "none":
        return 0.5, 0.5, "one threshold 0.5, no UNSURE band"
    if kind == "odds":
        k = nums[0]
        lo, hi = 1.0 / (k + 1.0), k / (k + 1.0)
        return lo, hi, (f"odds {k:g}:1 on the calibrated p(fake): FAKE from {hi:.3f}, REAL below {lo:.3f} "
                        f"(a verdict only where it is wrong at most 1 time in {k + 1:g})")
    fpr_max, fnr_max = nums
    cands = _midpoints(p)
    real, fake = p[y == 0], p[y == 1]
    fpr = np.array([np.mean(real >= t) if real.size else 0.0 for t in cands])
    fnr = np.array([np.mean(fake < t) if fake.size else 0.0 for t in cands])
    hi = float(cands[np.flatnonzero(fpr <= fpr_max)[0]])
    lo = float(cands[np.flatnonzero(fnr <= fnr_max)[-1]])
    if lo >= hi:
        lo = hi = (lo + hi) / 2.0
    hi = min(hi, 1.0)
    return lo, hi, (f"rates: FAKE from {hi:.3f} (at most {fpr_max:.0%} of held-out REAL videos called FAKE), "
                    f"REAL below {lo:.3f} (at most {fnr_max:.0%} of held-out FAKE videos called REAL)")


def band_check(y, p, lo: float, hi: float, promise: Optional[float] = None) -> dict:
    """What the band does on labelled videos: how many it leaves UNSURE, the false-positive rate
    (REAL videos called FAKE, of all REAL), the false-negative rate (FAKE called REAL, of all FAKE),
    and the error rate of the verdicts it gives; ``promise`` (the odds rule's 1/(K+1)): whether
    that error rate is within it."""
    y, p = M.labels_and_scores(y, p)
    v = np.array([band_verdict(float(x), lo, hi) for x in p])
    n_real, n_fake = int(np.sum(y == 0)), int(np.sum(y == 1))
    decided = v != "UNSURE"
    wrong = ((v == "FAKE") & (y == 0)) | ((v == "REAL") & (y == 1))
    out = {
        "n": int(y.size), "unsure": int(np.sum(~decided)),
        "fake_verdicts": int(np.sum(v == "FAKE")), "real_verdicts": int(np.sum(v == "REAL")),
        "false_positive_rate": float(np.sum((v == "FAKE") & (y == 0)) / n_real) if n_real else math.nan,
        "false_negative_rate": float(np.sum((v == "REAL") & (y == 1)) / n_fake) if n_fake else math.nan,
        "unsure_real": int(np.sum(~decided & (y == 0))), "unsure_fake": int(np.sum(~decided & (y == 1))),
        "error_rate_decided": float(wrong.sum() / decided.sum()) if decided.any() else math.nan,
    }
    if promise is not None and decided.any():
        out["promise"] = promise
        out["within_promise"] = bool(out["error_rate_decided"] <= promise + 1e-12)
    return out


# ----------------------------------------------------------------------------------------------
# A whole fit


def _figures(y: np.ndarray, p: np.ndarray) -> dict:
    return {"log_loss": M.log_loss(y, p), "ece": M.calibration_bins(y, p)["ece"]}


def fit(y, s, method: str = DEFAULT_METHOD, band: str = DEFAULT_BAND, *, member: str = "", model_id: str = "",
        source: str = "", seed: int = 0) -> tuple[Calibration, np.ndarray]:
    """Fit the calibration of raw scores ``s`` on labels ``y`` and choose its band. Returns the
    record (its ``fitted_on`` carries the figures) and the out-of-fold calibrated p (for plots)."""
    y, s = M.labels_and_scores(y, s)
    n_fake, n_real = int(y.sum()), int(y.size - y.sum())
    if min(n_fake, n_real) < MIN_PER_CLASS:
        raise UserError(f"{member or 'calibration'}: {n_fake} FAKE and {n_real} REAL scored videos; a calibration "
                        f"needs at least {MIN_PER_CLASS} of each")
    cal = fit_map(y, s, method)
    p_in = cal.apply(s)
    p_cv = cross_val_apply(y, s, method, seed=seed)
    compare = {}
    for m in METHODS:
        try:
            compare[m] = M.log_loss(y, cross_val_apply(y, s, m, seed=seed))
        except UserError:
            compare[m] = None
    lo, hi, rule = choose_band(y, p_in, band)
    kind, nums = parse_band(band)
    promise = 1.0 / (nums[0] + 1.0) if kind == "odds" else None
    fitted_on = {
        "member": member, "model_id": model_id, "source": source,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n": int(y.size), "n_fake": n_fake, "n_real": n_real,
        "before": _figures(y, np.asarray(s)), "after": _figures(y, p_in), "after_cv": _figures(y, p_cv),
        "cv": {"folds": FOLDS, "seed": seed, "log_loss_by_method": compare},
        "band": band, "band_check_cv": band_check(y, p_cv, lo, hi, promise),
        "single_threshold_check_cv": band_check(y, p_cv, 0.5, 0.5),
    }
    return Calibration(method, cal.params, lo, hi, rule, fitted_on), p_cv


# ----------------------------------------------------------------------------------------------
# From an evaluation: scan.json (or VideoScan records) -> calibration.json and plots


def scored(videos: Sequence[Mapping], member: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, raw scores) of the labelled videos ``member`` scored (records as in scan.json)."""
    ys, ss = [], []
    for v in videos:
        s = (v.get("members") or {}).get(member)
        lab = str(v.get("label") or "").upper()
        if s is None or lab not in ("FAKE", "REAL") or v.get("status") != "ok":
            continue
        ys.append(1.0 if lab == "FAKE" else 0.0)
        ss.append(float(s))
    return np.array(ys), np.array(ss)


def calibrate_report(videos: Sequence[Mapping], models: Mapping[str, str], out_dir: Path,
                     method: str = DEFAULT_METHOD, band: str = DEFAULT_BAND, source: str = "",
                     only: Optional[Sequence[str]] = None) -> dict:
    """Fit every member's calibration (``models``: member -> model id) from evaluated videos (dicts
    as in the report's scan.json, with their labels) and write ``calibration.json`` and one
    ``calibration-<member>.png`` per member into ``out_dir``. Returns the document written."""
    names = list(only) if only else list(models)
    unknown = [m for m in names if m not in models]
    if unknown:
        raise UserError(f"--member: {', '.join(unknown)} was not evaluated in this report "
                        f"(members: {', '.join(models)})")
    doc: dict = {"method": method, "band": band, "source": source,
                 "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "members": {}}
    out_dir = Path(out_dir)
    fits = {}
    for m in names:  # every fit first: a member that cannot be fitted leaves no half-written report
        y, s = scored(videos, m)
        fits[m] = (y, s, *fit(y, s, method, band, member=m, model_id=str(models[m] or ""), source=source))
    target = out_dir / CALIBRATION_JSON
    try:
        for m, (y, s, cal, p_cv) in fits.items():
            png = out_dir / f"calibration-{m}.png"
            target = png
            plot_fit(png, y, s, p_cv, cal, m)
            doc["members"][m] = {"model_id": models[m], "calibration": cal.to_dict(), "plot": png.name}
        target = out_dir / CALIBRATION_JSON
        write_json(target, finite(doc))
    except OSError as exc:
        raise UserError(f"{target}: cannot be written ({exc.strerror or exc})") from None
    return doc


def read_report(report: Path) -> tuple[list[dict], dict[str, str], str]:
    """The evaluated videos (scan.json's records, labelled) and the member -> model id map of an
    eval report folder (or of its scan.json given directly)."""
    report = Path(report)
    path = report / "scan.json" if report.is_dir() else report
    if not path.is_file():
        raise UserError(f"{path}: no such file (give a `deepfake eval` report folder)")
    try:
        doc = json.loads(path.read_text())
        videos, models = doc["videos"], doc["models"]
        if not isinstance(videos, list) or not isinstance(models, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not the scan.json of a `deepfake eval` report ({type(exc).__name__})") from None
    if not any(str(v.get("label") or "") for v in videos):
        raise UserError(f"{path}: its videos carry no labels (a `deepfake eval` report's scan.json does)")
    return videos, {str(k): str(v or "") for k, v in models.items()}, str(path.parent.resolve())


def calibrate_eval_report(report: Path, method: str = DEFAULT_METHOD, band: str = DEFAULT_BAND,
                          only: Optional[Sequence[str]] = None) -> tuple[dict, Path]:
    """Fit from an eval report folder's scan.json and write calibration.json and the plots beside
    it. Returns the document and the folder."""
    videos, models, folder = read_report(report)
    return calibrate_report(videos, models, Path(folder), method, band, source=folder, only=only), Path(folder)


def summary_line(member: str, cal: Calibration) -> str:
    f = cal.fitted_on
    b, a, cv = f["before"], f["after"], f["after_cv"]
    chk = f["band_check_cv"]
    band = (f"UNSURE band [{cal.lo:.3f}, {cal.hi:.3f}): {chk['unsure']} of {chk['n']} videos UNSURE"
            if cal.hi > cal.lo else f"one threshold {cal.hi:.3f}")
    return (f"{member}: {cal.method}, log loss {b['log_loss']:.3f} -> {a['log_loss']:.3f} "
            f"(cross-validated {cv['log_loss']:.3f}), ECE {b['ece']:.3f} -> {cv['ece']:.3f}; {band}; "
            f"false positives {_pct(chk['false_positive_rate'])}, false negatives {_pct(chk['false_negative_rate'])} "
            f"({f['n']} videos: {f['n_fake']} FAKE, {f['n_real']} REAL)")


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0%}"


# ----------------------------------------------------------------------------------------------
# Recording with the model


def record(doc: Mapping, builtin_dir: Optional[Path] = None, to_builtin: bool = False) -> list[str]:
    """Write each member's calibration of ``doc`` (calibration.json) into the model it was fitted
    on: its registry entry, or the built-in model (``builtin_dir``: its folder, default the
    package's). ``to_builtin``: into the built-in model whatever model was evaluated, when it is
    the same member (a registered model exported as the built-in one, whose fp16 copy scores
    within ~1e-3 of it). Returns one line per model, saying where."""
    done = []
    for member, rec in doc.get("members", {}).items():
        model_id = str(rec.get("model_id") or "")
        cal = Calibration.from_dict(rec.get("calibration"))
        if to_builtin:
            where = Path(builtin_dir) if builtin_dir is not None else builtin.folder()
            if builtin.member(where) != member:
                raise UserError(f"{member}: the built-in model in {where} is "
                                f"{builtin.member(where) or 'missing'}, not {member}")
            path = builtin.set_calibration(cal.to_dict(), where)
            done.append(f"{member}: recorded in the built-in model's {path} (fitted on {model_id or 'an unnamed model'})")
        elif model_id.startswith("builtin-"):
            where = Path(builtin_dir) if builtin_dir is not None else builtin.folder()
            current = builtin.model_id(where)
            if current != model_id:
                raise UserError(f"{member}: the calibration was fitted on the built-in model {model_id}, but "
                                f"{where} holds {current or 'none'}; evaluate the current one again")
            path = builtin.set_calibration(cal.to_dict(), where)
            done.append(f"{member}: recorded in the built-in model's {path}")
        elif model_id:
            entry = store.set_calibration(member, model_id, cal.to_dict())
            done.append(f"{member}: recorded in registry entry {entry.model_id} ({entry.path / store.MANIFEST})")
        else:
            raise UserError(f"{member}: the report does not say which model was evaluated (no model id); "
                            "only registered or built-in models can record a calibration")
    return done


# ----------------------------------------------------------------------------------------------
# The plot


def plot_fit(path: Path, y: np.ndarray, s: np.ndarray, p_cv: np.ndarray, cal: Calibration, member: str,
             n_bins: int = 10) -> None:
    """Left: reliability before (raw score) and after (cross-validated calibrated p). Right: the
    calibrated p of each class, with the UNSURE band."""
    plt = pyplot()
    f = cal.fitted_on
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 5), dpi=100)
    for p, style, label in ((s, "s--", f"before (log loss {f['before']['log_loss']:.3f}, "
                                         f"ECE {f['before']['ece']:.3f})"),
                            (p_cv, "o-", f"after, cross-validated ({f['after_cv']['log_loss']:.3f}, "
                                         f"{f['after_cv']['ece']:.3f})")):
        c = M.calibration_bins(y, p, n_bins)
        ax.plot(c["mean_p"], c["frac_fake"], style, lw=2 if style == "o-" else 1.2, label=label)
        for mp, fr, n in zip(c["mean_p"], c["frac_fake"], c["count"]):
            ax.annotate(str(n), (mp, fr), textcoords="offset points", xytext=(4, -10), fontsize=6, color="grey")
    reliability_axes(ax, "mean p(fake) in the bin", f"{member}: reliability ({cal.method}; {f['n']} videos)")
    bins = np.linspace(0, 1, 21)
    bx.hist([p_cv[y == 0], p_cv[y == 1]], bins=bins, label=["REAL", "FAKE"], color=["tab:green", "tab:red"],
            alpha=0.8)
    if cal.hi > cal.lo:
        bx.axvspan(cal.lo, cal.hi, color="gold", alpha=0.3, label=f"UNSURE [{cal.lo:.2f}, {cal.hi:.2f})")
    else:
        bx.axvline(cal.hi, color="k", lw=1, label=f"threshold {cal.hi:.2f}")
    bx.set_xlabel("calibrated p(fake), cross-validated")
    bx.set_ylabel("videos")
    bx.set_title("calibrated scores by class")
    bx.set_xlim(0, 1)
    bx.legend(loc="upper center", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
