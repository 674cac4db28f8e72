"""A model's calibration, recorded with the model: how its video-level score becomes a p(fake) that
means what it says, and the verdict band chosen with it (REAL below ``lo``, UNSURE from ``lo`` up to
``hi``, FAKE from ``hi``).

It is stored as a JSON object under ``"calibration"`` in the built-in model's ``builtin.json`` and in
a registry entry's ``manifest.json``; ``deepfake models calibrate`` fits and records it
(:mod:`dfdc_cli.evaluate.calibrate`). A model without one keeps the uncalibrated score, one threshold (0.5)
and no UNSURE band. Pure numpy (scan's arithmetic imports it; no torch).

The maps, on the score ``s`` (a member's mean p(fake) over a video's faces):

* ``platt``: ``sigmoid(a * logit(s) + b)`` (Platt scaling on the logit, ``a > 0``);
* ``temperature``: ``sigmoid(logit(s) / t)`` (``t > 0``);
* ``isotonic``: the non-decreasing step fit, linearly interpolated between its knots ``x`` -> ``y``
  and constant beyond them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

VERSION = 1
METHODS = ("platt", "temperature", "isotonic")
# Scores are squeezed into (EPS, 1 - EPS) before the logit: members output sigmoid/softmax values that
# round to exactly 0 or 1 in float32, and a map must stay finite there. Small enough to keep every
# distinct float32 score distinct (1 - 6e-8 is float32's last step below 1): no new ties, same AUC.
EPS = 1e-12
FAKE, REAL, UNSURE = "FAKE", "REAL", "UNSURE"


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def band_verdict(p: float, lo: float, hi: float) -> str:
    """FAKE at p >= hi, REAL below lo, UNSURE between (none when lo == hi)."""
    if p >= hi:
        return FAKE
    return REAL if p < lo else UNSURE


@dataclass(frozen=True)
class Calibration:
    method: str  # one of METHODS
    params: Mapping[str, Any]  # platt: a, b; temperature: t; isotonic: x, y
    lo: float  # verdict band on the calibrated p(fake): REAL below lo, UNSURE in [lo, hi), FAKE from hi
    hi: float
    rule: str = ""  # how lo and hi were chosen, in words
    fitted_on: Mapping[str, Any] = field(default_factory=dict)  # provenance and the fit's figures

    def apply(self, s):
        """The calibrated p(fake) of score(s) ``s`` (a float for a float)."""
        scalar = np.ndim(s) == 0
        x = np.asarray(s, dtype=np.float64)
        if self.method == "platt":
            out = sigmoid(float(self.params["a"]) * logit(x) + float(self.params["b"]))
        elif self.method == "temperature":
            out = sigmoid(logit(x) / float(self.params["t"]))
        else:
            out = np.interp(x, np.asarray(self.params["x"], float), np.asarray(self.params["y"], float))
        return float(out) if scalar else out

    def verdict(self, p: float) -> str:
        return band_verdict(p, self.lo, self.hi)

    def to_dict(self) -> dict:
        params = {k: (list(map(float, v)) if isinstance(v, (list, tuple, np.ndarray)) else float(v))
                  for k, v in self.params.items()}
        return {"version": VERSION, "method": self.method, "params": params, "lo": float(self.lo),
                "hi": float(self.hi), "rule": self.rule, "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_dict(cls, d: Any) -> "Calibration":
        """A recorded calibration, checked; ValueError says what is wrong with it."""
        if not isinstance(d, Mapping):
            raise ValueError("the calibration is not a JSON object")
        if d.get("version") != VERSION:
            raise ValueError(f"calibration version {d.get('version')!r} is not {VERSION}")
        method, params = d.get("method"), d.get("params")
        if method not in METHODS:
            raise ValueError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
        if not isinstance(params, Mapping):
            raise ValueError("the calibration has no params object")
        want = {"platt": ("a", "b"), "temperature": ("t",), "isotonic": ("x", "y")}[method]
        missing = [k for k in want if k not in params]
        if missing:
            raise ValueError(f"{method} calibration lacks {', '.join(missing)}")
        if method == "isotonic":
            try:
                x = np.asarray(params["x"], dtype=np.float64)
                y = np.asarray(params["y"], dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError("isotonic knots are not numbers") from None
            if x.ndim != 1 or x.shape != y.shape or x.size < 1:
                raise ValueError("isotonic knots x and y must be lists of equal length")
            if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                raise ValueError("isotonic knots must be finite")
            if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0) or y.min() < 0 or y.max() > 1:
                raise ValueError("isotonic knots must rise (x strictly, y within [0, 1])")
        else:
            for k in want:
                v = params[k]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{method} parameter {k} must be a finite number")
            positive = "a" if method == "platt" else "t"
            if params[positive] <= 0:
                raise ValueError(f"{method} parameter {positive} must be > 0 (a calibration keeps the order)")
        lo, hi = d.get("lo"), d.get("hi")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) \
                or not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"the verdict band needs 0 <= lo <= hi <= 1 (got lo={lo!r}, hi={hi!r})")
        return cls(str(method), dict(params), float(lo), float(hi), str(d.get("rule") or ""),
                   dict(d.get("fitted_on") or {}))


def read(d: Optional[Mapping], where: str) -> Optional[Calibration]:
    """The calibration recorded under ``"calibration"`` of a model's description ``d`` (None when
    it records none); a damaged one is a ValueError naming ``where``."""
    if not isinstance(d, Mapping) or d.get("calibration") is None:
        return None
    try:
        return Calibration.from_dict(d["calibration"])
    except ValueError as exc:
        raise ValueError(f"{where}: damaged calibration ({exc})") from None
