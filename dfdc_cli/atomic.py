"""Atomic file writes (they live in :mod:`dfdc_models.atomic`, which the model store uses without the CLI)
and the lock on a folder's tables (the tube index, shards' merged outputs)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
from pathlib import Path
from typing import Iterator, Sequence

from dfdc_models.atomic import atomic_dir, atomic_path, write_json, write_text  # noqa: F401


def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """CSV through the csv module, so that names with commas, quotes or line breaks read back whole."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


LOCK_FILE = ".index.lock"


@contextlib.contextmanager
def index_lock(index_dir: str | Path) -> Iterator[None]:
    """Exclusive lock on a folder's tables (``.index.lock``; flock works across the nodes of NFS v4
    and of most cluster filesystems, Lustre only when mounted with ``-o flock``)."""
    d = Path(index_dir)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
