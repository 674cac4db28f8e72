"""The score cache: what each member said about each face tube, so that scanning is resumable.

Extraction is already cached by content; without this, an interrupted scan of a large folder (or
a re-scan after registering one more member) would run every model again on every tube. Here a
video's entry is keyed by its tube files (path, size, modification time: the tube store is
content-addressed, so that names the pixels the members saw) and holds, per member model
(``<member>:<model_id>``, the id being the weights' sha256 prefix), p(fake) of each tube.

Entries live under ``<cache dir>/scan-scores/<numeric mode>/`` where the numeric mode names the
tool version, device type and precision (fp16 on a GPU does not give the digits fp32 on a CPU
gives, and a new version may change the input preparation). A member's scores are stored only
when it scored every tube of the video. Files are written atomically; a corrupt or unreadable entry
is reported and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .atomic import write_json


def tube_set_key(tube_paths: Sequence[str]) -> Optional[str]:
    """Key of a video's tube files, or None when one of them is missing (nothing to cache)."""
    h = hashlib.sha256()
    for p in tube_paths:
        try:
            st = os.stat(p)
        except OSError:
            return None
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def member_key(name: str, model_id: str) -> str:
    return f"{name}:{model_id}"


class ScoreCache:
    """Per video (its tube files) and member model: p(fake) of each tube id."""

    def __init__(self, root: str | Path, mode: str):
        self.root = Path(root) / mode
        self.warnings: list[str] = []

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, dict[int, float]]:
        """Every member model's tube scores stored for this video ({} when none)."""
        path = self._path(key)
        if not path.exists():
            return {}
        try:
            raw = json.loads(path.read_text())
            return {str(m): {int(t): float(p) for t, p in tubes.items()} for m, tubes in raw["scores"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.warnings.append(f"score cache entry {path} is unreadable ({exc}); recomputed")
            return {}

    def put(self, key: str, scores: Mapping[str, Mapping[int, float]], tube_paths: Sequence[str] = ()) -> None:
        """Merge ``scores`` (member model -> tube id -> p) into the video's entry."""
        merged = self.get(key)
        for m, tubes in scores.items():
            merged[m] = {int(t): float(p) for t, p in tubes.items()}
        write_json(self._path(key), {
            "tubes": list(tube_paths),
            "scores": {m: {str(t): p for t, p in sorted(tubes.items())} for m, tubes in merged.items()},
        })


def numeric_mode(device: str, precision: Optional[str]) -> str:
    """``v<version>-<device type>-<precision>``; autocast only runs on CUDA, so CPU is always fp32."""
    from . import __version__

    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    prec = precision if (dev == "cuda" and precision) else "fp32"
    return f"v{__version__}-{dev}-{prec}"
