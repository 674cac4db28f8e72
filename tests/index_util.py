"""Comparing extract indexes written into different folders (shards, Ray, local runs)."""

from __future__ import annotations

from pathlib import Path

from dfdc_cli.faces.index import read_tubes, read_videos


def index_rows(folder: Path) -> tuple[list[dict], list[dict]]:
    """(videos, tubes) rows of a folder's index (parts merged), in a fixed order, without what
    legitimately differs between two runs: wall times, and the folder in the tube paths."""
    folder = Path(folder).resolve()
    videos = read_videos(folder).drop(columns=["seconds"]).to_dict("records")
    tubes = read_tubes(folder).to_dict("records")
    for t in tubes:
        for k in ("tube_path", "track_path", "tube2d_path"):
            if t[k]:
                t[k] = str(Path(t[k]).relative_to(folder))
    return (sorted(videos, key=lambda v: v["video"]),
            sorted(tubes, key=lambda t: (t["video"], t["tube_id"], t["tube_path"])))


def assert_same_index(a: Path, b: Path) -> None:
    va, ta = index_rows(a)
    vb, tb = index_rows(b)
    assert va == vb
    assert ta == tb
