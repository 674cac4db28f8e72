"""The tube store: one entry per (video content, output-affecting parameters), and what it says.

Layout (``out_dir``)::

    store/<sha[:2]>/<sha256>-<pkey>/   one entry (pkey: :meth:`ExtractParams.key`)
        result.json                    status, reason, video size/fps/frames, tube geometry
        tube0.mp4 tube0.npz [tube0_2d.mp4] ...

An entry is written atomically (it exists whole or not at all), so a second run with the same
parameters is a cache hit without decoding, and an interrupted run resumes where it stopped.
Errors are not cached (they are cheap to retry and may be transient). :func:`records_for` turns an
entry's result (or a video's error) into its index rows (:mod:`dfdc_cli.faces.index`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from dfdc_cli.errors import VideoError
from dfdc_cli.faces.extract.params import EXTRACTOR_VERSION, ExtractParams, fallback_note
from dfdc_cli.faces.index import STATUS_ERROR, STATUS_NO_FACE, STATUS_OK, TubeRecord, VideoRecord, record_from
from dfdc_cli.faces.inputs import VideoInput, missing_reason

STORE = "store"
RESULT_JSON = "result.json"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def entry_dir(out_dir: str | Path, sha: str, params: ExtractParams) -> Path:
    return Path(out_dir) / STORE / sha[:2] / f"{sha}-{params.key()}"


def tube_json(t, files: dict) -> dict:
    """A tube's entry in result.json: its geometry, detector confidence and file names."""
    return {
        "tube_id": t.tube_id,
        "first_frame": t.first_frame,
        "last_frame": t.last_frame,
        "n_frames": t.n_frames,
        "x1": t.box[0],
        "y1": t.box[1],
        "x2": t.box[2],
        "y2": t.box[3],
        "mean_prob": round(float(t.mean_prob), 6),
        "max_prob": round(float(t.max_prob), 6),
        "n_detections": t.n_detections,
        **files,
    }


def lookup(path: str | Path, out_dir: str | Path, params: ExtractParams,
           need_files: bool = True) -> tuple[str, Path, Optional[dict]]:
    """(content sha256, entry folder, the entry's result if it is complete) of a video; raises
    VideoError for a missing, empty or unreadable file. Reads the file, never decodes it.

    ``need_files``: the entry must hold the tube MP4s; without, its result and tracks suffice (the
    tube geometry, what an in-memory scan needs to crop the tubes again without detecting)."""
    path = Path(path)
    if not path.exists():
        raise VideoError(missing_reason(path))
    if path.is_dir():
        raise VideoError("is a folder, not a video file")
    try:
        if path.stat().st_size == 0:
            raise VideoError("empty file (0 bytes)")
        sha = file_sha256(path)
    except OSError as exc:
        raise VideoError(f"cannot read: {exc.strerror or exc}") from None
    entry = entry_dir(out_dir, sha, params).resolve()
    result_path = entry / RESULT_JSON
    if result_path.is_file():
        try:
            res = json.loads(result_path.read_text())
            kinds = ("tube_file", "track_file", "tube2d_file") if need_files else ("track_file",)
            files = [t[k] for t in res["tubes"] for k in kinds if t.get(k)]
            complete = not need_files or all(t.get("tube_file") for t in res["tubes"])
            if complete and all((entry / f).is_file() for f in files):
                res.update(entry=str(entry), cached=True)  # "seconds": the original extraction's
                return sha, entry, res
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged entry is redone
    return sha, entry, None


def new_result(frames, sha: str, params: ExtractParams, tubes: list, stage: str) -> dict:
    """result.json of a fresh extraction of decoded ``frames`` (its tubes' entries added when written)."""
    info = frames.info
    notes = []
    if not tubes:
        notes.append(f"no face tube of >= {params.min_frames} frames")
    if stage:
        notes.append(fallback_note(stage))
    if getattr(frames, "decode_error", None):
        notes.append(f"incomplete video: {frames.decode_error}")
    return {
        "version": EXTRACTOR_VERSION,
        "sha256": sha,
        "params": params.to_dict(),
        "status": STATUS_OK if tubes else STATUS_NO_FACE,
        "reason": "; ".join(notes),
        "n_frames": len(frames),
        "width": frames.width,
        "height": frames.height,
        "fps": round(float(frames.fps), 6),
        "rotation": info.rotation if info else 0,
        "fallback": stage,
        "tubes": [],
    }


def records_for(inp: VideoInput, res: Optional[dict], error: Optional[str], params: ExtractParams) -> tuple[VideoRecord, list[TubeRecord]]:
    """Index rows of one video from its result (or its error)."""
    if res is None:
        return (
            VideoRecord(
                video=inp.path, name=inp.name, status=STATUS_ERROR, reason=error or "unknown error",
                label=inp.label, original=inp.original, part=inp.part,
            ),
            [],
        )
    entry = Path(res["entry"])
    where = {"video": inp.path, "name": inp.name, "label": inp.label, "original": inp.original, "part": inp.part,
             "key": entry.name}
    vrec = record_from(VideoRecord, {**res, **where, "n_tubes": len(res["tubes"]),
                                     "seconds": round(float(res.get("seconds", 0.0)), 3)})
    trecs = [
        record_from(TubeRecord, {
            **t, **where,
            "tube_path": str(entry / t["tube_file"]) if t.get("tube_file") else "",
            "track_path": str(entry / t["track_file"]),
            "tube2d_path": str(entry / t["tube2d_file"]) if t.get("tube2d_file") else "",
        })
        for t in res["tubes"]
    ]
    return vrec, trecs
