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
from dfdc_cli.scan.options import ScanOptions
from dfdc_cli.scan.scanner import Scanner


def make_scanner(options: ScanOptions, items: Optional[Sequence[Extracted]] = None):
    """The scanner of `deepfake scan` and `deepfake eval` for ``options``; scores are cached under the
    cache dir. ``items``: index items to score (``--index``, aligned with the paths scanned) instead of
    extracting. With ``options.ray``: a :class:`~dfdc_cli.scan.cluster.RayScanner` whose actors scan;
    the members are loaded here, on the CPU."""
    precision = check_precision(options.precision)
    names = resolve_members(options.members)
    kwargs = dict(weights=parse_weights(options.weights, names), threshold=options.threshold,
                  device=options.device, workers=options.workers, batch_size=options.batch_size,
                  precision=precision, score_dir=scan_scores_dir().resolve(),
                  reuse_scores=not options.rescore, keep_tubes=options.keep_tubes, span=options.span,
                  windows=options.windows)
    if options.ray is not None:
        base = Scanner(members=names, **{**kwargs, "device": "cpu", "score_dir": None})
        return RayScanner(base, kwargs, items=items)
    extractor = items_extractor(items) if items is not None else None
    return Scanner(members=names, extractor=extractor, **kwargs)
