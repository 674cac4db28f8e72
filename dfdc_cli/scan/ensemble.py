"""The ensemble arithmetic of `deepfake scan` (docs/method.md §5): pure functions, no torch.

Per video: each member's score is the mean of its p(fake) over the video's faces; where the member's
model records a calibration (:mod:`dfdc_models.calibration`) the score goes through it; the video's
p(fake) is the weighted mean over the members (equal weights by default), clipped to [0.001, 0.999].
The verdict (:class:`VerdictRule`): FAKE at p(fake) >= the threshold (0.5) for uncalibrated models;
with a calibration, the band the model records: REAL below its ``lo``, UNSURE from ``lo`` up to
``hi``, FAKE from ``hi``. A video with no face, or that could not be read, keeps the prior 0.5 and
gets no verdict (the seed's rule: 0.5 costs log(2) whatever the truth). A video whose faces only the
low-threshold fallback found is UNSURE whatever its score (``weak``: the "face" may be none).

Ensembles: calibrations apply per member, before the average, and only when every member in use
(weight > 0) records one; otherwise no member's is applied (averaging calibrated with raw scores
means nothing) and the rule is one threshold. The ensemble's band is the widest of its members'
(lowest ``lo``, highest ``hi``): the average of calibrated members was not itself calibrated, so
the band is kept where any member would be unsure.

The tests drive these functions directly; the scanner (:mod:`dfdc_cli.scan.scanner`) and the Ray path
(:mod:`dfdc_cli.scale.cluster`) only call :func:`aggregate_video`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import STATUS_ERROR, STATUS_OK
from dfdc_cli.scan.results import PRIOR, VideoScan  # the records are a leaf: they import nothing of this
from dfdc_cli.scan.span import combine_windows
from dfdc_models.calibration import FAKE, REAL, UNSURE, Calibration, band_verdict


CLIP_LO, CLIP_HI = 0.001, 0.999


def clip_p(p: float) -> float:
    return float(min(max(p, CLIP_LO), CLIP_HI))


def mean_over_faces(scores: Sequence[float]) -> Optional[float]:
    """A member's video score: the mean of its p(fake) over the video's faces (None: no face)."""
    vals = [float(s) for s in scores if s is not None and not math.isnan(s)]
    return float(np.mean(vals)) if vals else None


def combine_members(
    member_scores: Mapping[str, Optional[float]], weights: Optional[Mapping[str, float]] = None
) -> Optional[float]:
    """Weighted mean over the members that gave a score (unclipped); None when none did.

    ``weights`` maps member -> weight (missing members weigh 1; weight 0 leaves a member out).
    """
    num = den = 0.0
    for m, s in member_scores.items():
        if s is None or math.isnan(s):
            continue
        w = 1.0 if weights is None else float(weights.get(m, 1.0))
        num += w * float(s)
        den += w
    return num / den if den > 0 else None


def verdict(p: Optional[float], threshold: float = 0.5) -> Optional[str]:
    """FAKE when p >= threshold, REAL below; None without a score."""
    if p is None:
        return None
    return FAKE if p >= threshold else REAL


WEAK_NOTE = "weak: low-threshold face"  # short: the note column is narrow at 80 columns


@dataclass(frozen=True)
class VerdictRule:
    """How member scores become a video's p(fake) and verdict: the calibrations applied per member
    (none: the raw scores) and the band on p(fake): REAL below ``lo``, UNSURE in [lo, hi), FAKE
    from ``hi`` (lo == hi: one threshold, no UNSURE)."""

    lo: float = 0.5
    hi: float = 0.5
    calibrations: Mapping[str, Calibration] = field(default_factory=dict)
    note: str = ""  # why no calibration is applied although some member records one

    @classmethod
    def single(cls, threshold: float = 0.5) -> "VerdictRule":
        return cls(float(threshold), float(threshold))

    @property
    def calibrated(self) -> bool:
        return bool(self.calibrations)

    @property
    def has_band(self) -> bool:
        return self.hi > self.lo

    def calibrate(self, member_scores: Mapping[str, Optional[float]]) -> dict[str, Optional[float]]:
        """Each member's score through its calibration (unchanged without one)."""
        out: dict[str, Optional[float]] = {}
        for m, s in member_scores.items():
            c = self.calibrations.get(m)
            out[m] = s if s is None or c is None or math.isnan(s) else float(c.apply(float(s)))
        return out

    def verdict(self, p: Optional[float]) -> Optional[str]:
        return None if p is None else band_verdict(p, self.lo, self.hi)

    def title(self) -> str:
        """The rule in a few words (the scan table's title)."""
        if not self.has_band:
            what = "calibrated p(fake)" if self.calibrated else "p(fake)"
            return f"verdict FAKE at {what} >= {self.hi:g}"
        return f"FAKE >= {self.hi:.2f} > UNSURE >= {self.lo:.2f} > REAL"

    def describe(self) -> dict:
        return {"threshold": self.hi, "unsure_band": [self.lo, self.hi] if self.has_band else None,
                "calibrated": sorted(self.calibrations), "calibration_note": self.note or None}


def verdict_rule(calibrations: Mapping[str, Optional[Calibration]], weights: Optional[Mapping[str, float]] = None,
                 threshold: Optional[float] = None) -> VerdictRule:
    """The rule of an ensemble whose members record ``calibrations`` (member -> Calibration or None).

    ``threshold`` (scan --threshold) replaces the band by one threshold on the (calibrated where
    possible) p(fake); None: the band the models record, or 0.5 without calibrations."""
    used = [m for m in calibrations if weights is None or float(weights.get(m, 1.0)) > 0]
    have = [m for m in used if calibrations[m] is not None]
    note = ""
    if used and len(have) == len(used):
        cals = {m: calibrations[m] for m in used}
        lo = min(c.lo for c in cals.values())
        hi = max(c.hi for c in cals.values())
    else:
        cals, lo, hi = {}, 0.5, 0.5
        if have:
            lacking = [m for m in used if calibrations[m] is None]
            note = (f"calibration not applied: {', '.join(lacking)} records none (an ensemble is calibrated "
                    "only when every member is)")
    if threshold is not None:
        lo = hi = float(threshold)
    return VerdictRule(lo, hi, cals, note)


def aggregate_video(
    result: "VideoScan",
    face_scores: Mapping[int, Mapping[str, float]],
    members: Sequence[str],
    weights: Optional[Mapping[str, float]] = None,
    rule: Union[float, VerdictRule] = 0.5,
) -> "VideoScan":
    """Fill a video's per-member, per-face and ensemble figures from per-tube member scores.

    ``face_scores``: tube_id -> {member: p(fake)}; the faces listed in ``result.faces``. ``rule``:
    a :class:`VerdictRule` (or a plain threshold). A video with status no_face/error (or whose faces
    got no score at all) keeps the prior and no verdict; a ``weak`` one (faces found only by the
    low-threshold fallback) is UNSURE, with the verdict its scores give in ``model_verdict``.
    """
    if not isinstance(rule, VerdictRule):
        rule = VerdictRule.single(rule)
    if result.status != STATUS_OK:
        result.members = {m: None for m in members}
        result.p_fake, result.p_fake_raw, result.verdict = PRIOR, None, None
        return result
    for face in result.faces:
        face.members = {m: float(face_scores[face.tube_id][m]) for m in members
                        if m in face_scores.get(face.tube_id, {})}
        p = combine_members(rule.calibrate(face.members), weights)
        face.p_fake = None if p is None else clip_p(p)
    # Faces seen together: tubes are not linked across windows, so a person read in three windows
    # is three tubes but one face.
    result.n_faces = most_faces_in_a_window(result.faces)
    result.members, result.window = _over_windows(result, members, weights, rule)
    result.members_calibrated = rule.calibrate(result.members) if rule.calibrated else {}
    missing = [m for m, s in result.members.items() if s is None]
    raw = combine_members(result.members, weights)
    if raw is None:
        result.status = STATUS_ERROR
        result.reason = "no member could score any face tube"
        result.p_fake, result.p_fake_raw, result.verdict = PRIOR, None, None
        return result
    if missing:
        note = f"not scored by {', '.join(missing)}"
        result.reason = f"{result.reason}; {note}" if result.reason else note
    result.p_fake_raw = float(raw)
    p = combine_members(result.members_calibrated, weights) if rule.calibrated else raw
    result.p_fake = clip_p(p)
    result.verdict = rule.verdict(result.p_fake)
    if result.weak:
        result.model_verdict = result.verdict
        result.verdict = UNSURE
        note = f"{WEAK_NOTE}; scores say {result.model_verdict}"
        result.reason = f"{result.reason}; {note}" if result.reason else note
    return result


def most_faces_in_a_window(faces) -> int:
    """The number of faces of a video: the most face tubes of any one window it was read in."""
    return max(Counter(int(f.window) for f in faces).values(), default=0)


def window_figures(faces, members: Sequence[str], weights, rule: "VerdictRule") -> tuple[dict, Optional[float]]:
    """The seed's figures of one window's faces: per member the mean over faces, and the weighted
    mean over members (of the calibrated scores where the rule calibrates; unclipped; None when no
    member scored)."""
    per_member = {m: mean_over_faces([f.members[m] for f in faces if m in f.members]) for m in members}
    return per_member, combine_members(rule.calibrate(per_member) if rule.calibrated else per_member, weights)


def _over_windows(result: "VideoScan", members: Sequence[str], weights,
                  rule: "VerdictRule") -> tuple[dict, Optional[int]]:
    """(per-member figures, deciding window) of a video: the seed's figures when its faces are in
    one window; otherwise those of the window with the highest p(fake)
    (:func:`dfdc_cli.scan.span.combine_windows`). Fills each of ``result.windows``' members/p_fake."""
    by_window: dict[int, list] = {}
    for f in result.faces:
        by_window.setdefault(int(f.window), []).append(f)
    figures = {k: window_figures(fs, members, weights, rule) for k, fs in by_window.items()}
    for w in result.windows:
        per_member, p = figures.get(int(w["window"]), ({m: None for m in members}, None))
        w["members"] = per_member
        w["p_fake"] = None if p is None else clip_p(p)
    if not figures:
        return {m: None for m in members}, None
    if len(figures) == 1:
        k = next(iter(figures))
        return figures[k][0], k
    _, k = combine_windows({k: p for k, (_, p) in figures.items()})
    if k is None:
        return {m: None for m in members}, None
    return figures[k][0], k


def parse_weights(text: Optional[str], members: Sequence[str]) -> dict[str, float]:
    """``"mc3_112=2,i3d_224=0.5"`` -> weights for ``members`` (unlisted members weigh 1)."""
    weights = {m: 1.0 for m in members}
    if not text:
        return weights
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise UserError(f"--weights: expected MEMBER=WEIGHT, got {part!r}")
        if name not in weights:
            raise UserError(f"--weights: {name!r} is not one of the members in use ({', '.join(members)})")
        try:
            w = float(value)
        except ValueError:
            raise UserError(f"--weights: {value!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise UserError(f"--weights: weight of {name} must be >= 0")
        weights[name] = w
    if sum(weights.values()) <= 0:
        raise UserError("--weights: at least one member needs a positive weight")
    return weights
