"""Atomic file writes (they live in :mod:`dfdc_models.atomic`, which the model store uses without the CLI)."""

import csv
import io
from typing import Sequence

from dfdc_models.atomic import atomic_dir, atomic_path, write_json, write_text  # noqa: F401


def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """CSV through the csv module, so that names with commas, quotes or line breaks read back whole."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()
