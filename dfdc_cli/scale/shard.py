"""Job arrays: ``--shard K/N`` gives task K of N its share of the inputs.

The split is by a hash of each video's file NAME, not its position or full path: every task of a
SLURM array or Kubernetes Job computes the same split whatever order the paths were given in, and
whatever folder the shared filesystem is mounted on. Videos with the same name (FaceForensics++
keeps one per manipulation method) go to the same shard, which is still a partition of the inputs.
Each shard writes its own part of the results (``videos.part-K-of-N.csv``, ``scan.part-K-of-N.json``),
so shards writing into one folder never write the same file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from dfdc_cli.atomic import csv_text, index_lock, write_json, write_text
from dfdc_cli.errors import UserError

T = TypeVar("T")
Shard = tuple[int, int]  # (K, N), K = 1..N

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: Optional[str]) -> Optional[Shard]:
    """``"2/8"`` -> (2, 8); None for None. K counts from 1, as ``$SLURM_ARRAY_TASK_ID`` of an
    array submitted with ``--array=1-N`` does."""
    if text is None:
        return None
    m = _SPEC.match(str(text))
    if not m:
        raise UserError(f"--shard: expected K/N such as 2/8, got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise UserError(f"--shard {text}: K must be in 1..N (N >= 1)")
    return k, n


def shard_of(name: str, n: int) -> int:
    """The shard (1..n) that owns a video called ``name``."""
    digest = hashlib.sha256(Path(str(name)).name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select(items: Sequence[T], shard: Optional[Shard], name: Callable[[T], str] = str) -> list[T]:
    """The items of shard K of N (all of them without a shard), in their given order."""
    if shard is None:
        return list(items)
    k, n = shard
    return [it for it in items if shard_of(name(it), n) == k]


def part_path(path: str | Path, shard: Optional[Shard]) -> Path:
    """Where shard K of N writes an output named ``path``: ``scan.json`` -> ``scan.part-K-of-N.json``."""
    path = Path(path)
    if shard is None:
        return path
    k, n = shard
    return path.with_name(f"{path.stem}.part-{k}-of-{n}{path.suffix}")


_PART_FILE = re.compile(r"^(?P<stem>.+)\.part-(?P<k>\d+)-of-(?P<n>\d+)(?P<ext>\.json|\.csv)$")


@dataclass
class Merged:
    """One merged output: ``target`` from the parts K of N found (``missing``: the Ks absent)."""

    target: Path
    n: int
    found: list[int]
    rows: int

    @property
    def missing(self) -> list[int]:
        return [k for k in range(1, self.n + 1) if k not in self.found]


def _parts_by_target(folder: Path) -> dict[tuple[Path, int], list[tuple[int, Path]]]:
    groups: dict[tuple[Path, int], list[tuple[int, Path]]] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _PART_FILE.match(p.name)
        if not m or m.group("stem") in ("videos", "tubes"):  # the index's parts: dfdc_cli.faces.index
            continue
        target = folder / f"{m.group('stem')}{m.group('ext')}"
        groups.setdefault((target, int(m.group("n"))), []).append((int(m.group("k")), p))
    return groups


def merge_outputs(folder: str | Path) -> list[Merged]:
    """Join the scan outputs that shards wrote into ``folder`` (``NAME.part-K-of-N.json|csv``) into
    ``NAME.json|csv``, then remove the parts (under the folder's index lock). JSON: the first
    part's header with every part's ``videos``; CSV (a DFDC submission): every part's rows. Rows
    are sorted by video path (JSON) or file name (CSV)."""
    folder = Path(folder)
    out = []
    with index_lock(folder):
        for (target, n), parts in _parts_by_target(folder).items():
            parts.sort()
            if target.suffix == ".json":
                docs = []
                for _, p in parts:
                    try:
                        docs.append(json.loads(p.read_text()))
                    except (OSError, ValueError) as exc:
                        raise UserError(f"{p}: cannot read ({exc})") from None
                doc = dict(docs[0])
                doc["videos"] = sorted((v for d in docs for v in d.get("videos", [])),
                                       key=lambda v: Path(str(v.get("video", ""))).parts)
                write_json(target, doc)
                rows = len(doc["videos"])
            else:
                header, body = None, []
                for _, p in parts:
                    try:
                        with open(p, newline="") as f:
                            lines = [row for row in csv.reader(f) if row]
                    except (OSError, csv.Error, UnicodeDecodeError) as exc:
                        raise UserError(f"{p}: cannot read ({exc})") from None
                    if lines:
                        header = header or lines[0]
                        body.extend(lines[1:])
                body.sort()
                write_text(target, csv_text(header or ["filename", "label"], body))
                rows = len(body)
            for _, p in parts:
                p.unlink(missing_ok=True)
            out.append(Merged(target, n, [k for k, _ in parts], rows))
    return out
