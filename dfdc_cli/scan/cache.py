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
import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from dfdc_cli import __version__
from dfdc_cli.atomic import write_json
from dfdc_cli.faces.index import STATUS_OK


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

    def _read(self, key: str) -> dict:
        path = self._path(key)
        if not path.exists():
            return {}
        try:
            raw = json.loads(path.read_text())
            scores = {str(m): {int(t): float(p) for t, p in tubes.items()} for m, tubes in raw["scores"].items()}
            frames = {str(m): {int(t): [float(v) for v in ps] for t, ps in tubes.items()}
                      for m, tubes in (raw.get("frames") or {}).items()}
            if not all(math.isfinite(p) for tubes in scores.values() for p in tubes.values()):
                raise ValueError("a score is not a number")
            if not all(math.isfinite(v) for tubes in frames.values() for ps in tubes.values() for v in ps):
                raise ValueError("a frame score is not a number")
            return {"scores": scores, "frames": frames}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.warnings.append(f"score cache entry {path} is unreadable ({exc}); recomputed")
            return {}

    def get(self, key: str) -> dict[str, dict[int, float]]:
        """Every member model's tube scores stored for this video ({} when none)."""
        return self._read(key).get("scores", {})

    def get_frames(self, key: str) -> dict[str, dict[int, list[float]]]:
        """The frame models' per-frame scores stored for this video: member model -> tube id -> list."""
        return self._read(key).get("frames", {})

    def put(self, key: str, scores: Mapping[str, Mapping[int, float]], tube_paths: Sequence[str] = (),
            frames: Optional[Mapping[str, Mapping[int, Sequence[float]]]] = None) -> None:
        """Merge ``scores`` (member model -> tube id -> p) and ``frames`` (member model -> tube id
        -> per-frame p, frame models) into the video's entry."""
        old = self._read(key)
        merged = old.get("scores", {})
        merged_frames = old.get("frames", {})
        for m, tubes in scores.items():
            merged[m] = {int(t): float(p) for t, p in tubes.items()}
            merged_frames.pop(m, None)
        for m, tubes in (frames or {}).items():
            merged_frames[m] = {int(t): [float(v) for v in ps] for t, ps in tubes.items()}
        doc = {
            "tubes": list(tube_paths),
            "scores": {m: {str(t): p for t, p in sorted(tubes.items())} for m, tubes in merged.items()},
        }
        if merged_frames:
            doc["frames"] = {m: {str(t): ps for t, ps in sorted(tubes.items())} for m, tubes in merged_frames.items()}
        write_json(self._path(key), doc)


def _wants_frames(m) -> bool:
    """A frame model whose per-frame scores the scanner keeps."""
    return getattr(m, "kind", "") == "2d" and getattr(m, "predict_frames", None) is not None


def numeric_mode(device: str, precision: Optional[str]) -> str:
    """``v<version>-<device type>-<precision>``; autocast only runs on CUDA, so CPU is always fp32."""
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    prec = precision if (dev == "cuda" and precision) else "fp32"
    return f"v{__version__}-{dev}-{prec}"


class ScanScores:
    """How a scan uses the score cache for a chunk of videos (:class:`dfdc_cli.scan.inputs.Extracted`)
    and its members (:class:`dfdc_cli.scan.members.Member`): which members' scores of a video are
    stored already, whether a video must be decoded at all, and storing what was computed.

    ``cache`` None: nothing is reused or stored. ``reuse`` False (``--rescore``): nothing is reused,
    new scores are still stored. Members without a model id (ready objects in tests) are never
    cached. A failed write turns the cache off for the rest of the run, with a warning.
    """

    def __init__(self, cache: Optional[ScoreCache], members: Sequence, reuse: bool = True):
        self.cache = cache
        self.members = list(members)
        self.reuse = bool(reuse)

    @staticmethod
    def _tube_files(e) -> list[str]:
        if e.key:  # scanned in memory: the entry names the video
            return [e.video]
        return [str(p) for r in e.tubes for p in (r.get("tube_path"), r.get("tube2d_path")) if p]

    def keys(self, extracted: Sequence) -> list[Optional[str]]:
        """Per video: its key in the score cache. In memory: the video's content and the scan
        settings (:func:`dfdc_cli.scan.inputs.video_key`); tubes read from files (an extract index):
        those files."""
        if self.cache is None:
            return [None] * len(extracted)
        return [(e.key or tube_set_key(self._tube_files(e))) if e.status == STATUS_OK and e.tubes else None
                for e in extracted]

    def needs_pixels(self, key: str, tube_ids: Sequence[int]) -> bool:
        """Whether some member still has to score this video (the extractor skips decoding it
        otherwise). Called from the extraction thread."""
        if self.cache is None or not self.reuse:
            return True
        entry = self.cache._read(key)
        stored, frames = entry.get("scores", {}), entry.get("frames", {})
        ids = {int(t) for t in tube_ids}  # (one window's tubes, when the video was read in windows)
        return any(not m.model_id or not ids <= set(stored.get(member_key(m.name, m.model_id)) or ())
                   or (_wants_frames(m) and member_key(m.name, m.model_id) not in frames)
                   for m in self.members)

    def cached(self, extracted: Sequence, keys: Sequence[Optional[str]],
               frames_out: Optional[list[dict]] = None) -> list[dict]:
        """Per video: member -> {tube id: p} for the members the score cache already has in full.
        ``frames_out`` (one dict per video) receives their per-frame scores: member -> {tube id: list}."""
        out: list[dict] = [dict() for _ in extracted]
        if self.cache is None or not self.reuse:
            return out
        for vi, (e, key) in enumerate(zip(extracted, keys)):
            if key is None:
                continue
            entry = self.cache._read(key)
            stored, stored_frames = entry.get("scores", {}), entry.get("frames", {})
            ids = {int(r["tube_id"]) for r in e.tubes}
            for m in self.members:
                mk = member_key(m.name, m.model_id)
                got = stored.get(mk) if m.model_id else None
                if _wants_frames(m) and mk not in stored_frames:
                    continue  # (stored before frame scores were kept: scored again, for the timeline)
                if got is not None and set(got) == ids:
                    out[vi][m.name] = got
                    if frames_out is not None and mk in stored_frames:
                        frames_out[vi][m.name] = stored_frames[mk]
        self.flush_warnings()
        return out

    def store(self, extracted: Sequence, keys: Sequence[Optional[str]], cached: Sequence[Mapping],
              fresh: Sequence[Mapping[int, Mapping[str, float]]], errors: Sequence[str],
              fresh_frames: Optional[Sequence[Mapping[int, Mapping[str, list]]]] = None) -> None:
        """Store each member's scores of each video whose every tube it scored. ``fresh``: per
        video, tube id -> {member: p} computed in this run; ``fresh_frames`` likewise, the frame
        models' per-frame scores."""
        if self.cache is None:
            return
        for vi, (e, key) in enumerate(zip(extracted, keys)):
            if key is None or errors[vi]:
                continue
            ids = {int(r["tube_id"]) for r in e.tubes}
            new, new_frames = {}, {}
            for m in self.members:
                if not m.model_id or m.name in cached[vi]:
                    continue
                got = {tid: sc[m.name] for tid, sc in fresh[vi].items() if m.name in sc}
                if set(got) == ids:
                    new[member_key(m.name, m.model_id)] = got
                    fr = {tid: sc[m.name] for tid, sc in (fresh_frames[vi] if fresh_frames else {}).items()
                          if m.name in sc}
                    if set(fr) == ids:
                        new_frames[member_key(m.name, m.model_id)] = fr
            if not new:
                continue
            try:
                self.cache.put(key, new, self._tube_files(e), new_frames)
            except OSError as exc:
                from dfdc_cli.ui import warn

                warn(f"score cache not written ({exc}); scores of this run will not be reused")
                self.cache = None
                return

    def flush_warnings(self) -> None:
        if self.cache is not None and self.cache.warnings:
            from dfdc_cli.ui import warn

            for w in self.cache.warnings:
                warn(w)
            self.cache.warnings.clear()
