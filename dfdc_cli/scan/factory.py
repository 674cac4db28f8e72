"""The scanner that `deepfake scan` and `deepfake eval` run, built from their options: a local
:class:`~dfdc_cli.scan.scanner.Scanner`, or a :class:`~dfdc_cli.scan.cluster.RayScanner` whose actors
scan across a Ray cluster."""

from __future__ import annotations

from typing import Optional, Sequence

from dfdc_cli.paths import scan_scores_dir
from dfdc_cli.runtime import check_precision
from dfdc_cli.scan.cluster import RayScanner
from dfdc_cli.scan.ensemble import parse_weights
from dfdc_cli.scan.inputs import Extracted, items_extractor
from dfdc_cli.scan.members import resolve_members
from dfdc_cli.scan.scanner import Scanner


def make_scanner(members: Optional[Sequence[str]], weights: Optional[str], threshold: Optional[float], device, workers,
                 batch_size: int, precision: str = "auto", rescore: bool = False, ray: bool = False,
                 items: Optional[Sequence[Extracted]] = None, keep_tubes: bool = False,
                 span: str = "first", windows: int = 8):
    """The scanner of `deepfake scan` and `deepfake eval`: ``members`` (None: the available ones),
    ``weights`` as given to --weights; scores are cached under the cache dir. ``items``: index
    items to score (``--index``, aligned with the paths scanned) instead of extracting. ``ray``: a
    :class:`~dfdc_cli.scan.cluster.RayScanner` whose actors scan; the members are loaded here, on the CPU."""
    precision = check_precision(precision)
    names = resolve_members(members)
    options = dict(weights=parse_weights(weights, names), threshold=threshold, device=device, workers=workers,
                   batch_size=batch_size, precision=precision, score_dir=scan_scores_dir().resolve(),
                   reuse_scores=not rescore, keep_tubes=keep_tubes, span=span, windows=windows)
    if ray:
        base = Scanner(members=names, **{**options, "device": "cpu", "score_dir": None})
        return RayScanner(base, options, items=items)
    extractor = items_extractor(items) if items is not None else None
    return Scanner(members=names, extractor=extractor, **options)
