"""The ensemble arithmetic of `deepfake scan` (docs/method.md §5): pure functions, no torch.

Per video: each member's p(fake) is the mean over the video's faces; the video's p(fake) is the
weighted mean over the members (equal weights by default), clipped to [0.001, 0.999]; the verdict
is FAKE at p(fake) >= the threshold (0.5). A video with no face, or that could not be read, keeps
the prior 0.5 and gets no verdict (the seed's rule: 0.5 costs log(2) whatever the truth).

The tests drive these functions directly; the scanner (:mod:`dfdc_cli.scan`) and the Ray path
(:mod:`dfdc_cli.cluster`) only call :func:`aggregate_video`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np

from .errors import UserError
from .index import STATUS_ERROR, STATUS_OK

if TYPE_CHECKING:
    from .scanresult import VideoScan

CLIP_LO, CLIP_HI = 0.001, 0.999
PRIOR = 0.5  # p(fake) of a video with no face or that failed (the seed's rule)


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
    return "FAKE" if p >= threshold else "REAL"


def aggregate_video(
    result: "VideoScan",
    face_scores: Mapping[int, Mapping[str, float]],
    members: Sequence[str],
    weights: Optional[Mapping[str, float]] = None,
    threshold: float = 0.5,
) -> "VideoScan":
    """Fill a video's per-member, per-face and ensemble figures from per-tube member scores.

    ``face_scores``: tube_id -> {member: p(fake)}; the faces listed in ``result.faces``. A video with
    status no_face/error (or whose faces got no score at all) keeps the prior and no verdict.
    """
    if result.status != STATUS_OK:
        result.members = {m: None for m in members}
        result.p_fake, result.p_fake_raw, result.verdict = PRIOR, None, None
        return result
    for face in result.faces:
        face.members = {m: float(face_scores[face.tube_id][m]) for m in members
                        if m in face_scores.get(face.tube_id, {})}
        p = combine_members(face.members, weights)
        face.p_fake = None if p is None else clip_p(p)
    result.n_faces = len(result.faces)
    result.members = {m: mean_over_faces([f.members[m] for f in result.faces if m in f.members])
                      for m in members}
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
    result.p_fake = clip_p(raw)
    result.verdict = verdict(result.p_fake, threshold)
    return result


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
