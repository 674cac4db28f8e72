"""Output paths, checked before any work starts: an output never replaces a file the command reads
(a scanned video, a label file, an index table), never an existing video, and a path that cannot
be written (a folder, a missing folder) is refused at once rather than after an hour of scanning.

Each check raises a one-line :class:`~dfdc_cli.errors.UserError` naming the option, the path and
the reason. Report folders and tube indexes are kept apart: an eval report is never written into
a `deepfake extract` folder (both have a ``videos.csv`` and a ``tubes.csv``), nor an index into a
report folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from dfdc_cli.errors import UserError
from dfdc_cli.evaluate.report import REPORT_FILES
from dfdc_cli.faces.index import has_index
from dfdc_cli.faces.inputs import is_video_name

# What marks a folder as an eval report (written by dfdc_cli.evaluate.report.write_report).
REPORT_MARKERS = ("metrics.json", "summary.md")


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.absolute() == b.absolute()


def _parent_problem(path: Path) -> Optional[str]:
    """Why the folder ``path`` would be written in cannot take it (None when it can)."""
    parent = path.absolute().parent
    if not parent.exists():
        return f"its folder {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its folder {parent} is not writable"
    return None


def _ancestor_problem(path: Path) -> Optional[str]:
    anc = path.absolute().parent
    while not anc.exists():
        anc = anc.parent
    return None if anc.is_dir() else f"{anc} is not a folder"


def check_output_file(path: Optional[Path], option: str, inputs: Iterable[Path] = (),
                      video_ok: bool = False, make_folder: bool = False) -> Optional[Path]:
    """Refuse an output file that is one of ``inputs``, an existing video (unless ``video_ok``: the
    command writes a video), a folder, or in a folder that does not exist (unless ``make_folder``:
    the command makes it; then the nearest existing folder above must be one). Returns ``path``."""
    if path is None:
        return None
    path = Path(path).expanduser()
    names = {path.name, path.resolve().name}
    for src in inputs:  # by name first: a batch has many inputs, and only a same-named one can be it
        if Path(src).name in names and _same(path, Path(src)):
            raise UserError(f"{option} {path}: that is an input of this command; it is never overwritten "
                            "(choose another file name)")
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {path}: is not a regular file")
    if path.exists() and not video_ok and is_video_name(path.name):
        raise UserError(f"{option} {path}: is an existing video; it is never overwritten (choose another file name)")
    why = _parent_problem(path) if not make_folder else _ancestor_problem(path)
    if why:
        raise UserError(f"{option} {path}: {why}")
    return path


def check_distinct(paths: dict[str, Optional[Path]]) -> None:
    """Two outputs of one command must not be the same file."""
    seen: dict[Path, str] = {}
    for option, p in paths.items():
        if p is None:
            continue
        key = Path(p).expanduser().absolute()
        if key in seen:
            raise UserError(f"{option} and {seen[key]} name the same file {p}")
        seen[key] = option


def is_report(folder: Path) -> bool:
    return all((Path(folder) / m).is_file() for m in REPORT_MARKERS)


def check_report_dir(path: Path, option: str, inputs: Iterable[Path] = ()) -> Path:
    """An eval report folder: refuse an existing file, a folder holding a `deepfake extract` index
    (the report's videos.csv/tubes.csv would replace the index's), and a folder that would replace
    one of ``inputs``; a missing folder is created later (its parents too)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, not a folder")
    if path.is_dir() and has_index(path) and not is_report(path):
        raise UserError(f"{option} {path}: holds a tube index of `deepfake extract` (videos.csv/tubes.csv), "
                        "which a report would overwrite; choose another folder")

    for src in inputs:
        for name in REPORT_FILES:
            if _same(path / name, Path(src)):
                raise UserError(f"{option} {path}: the report's {name} would overwrite the input {src}")
    why = _ancestor_problem(path / "report")
    if why:
        raise UserError(f"{option} {path}: {why}")
    return path


def check_index_dir(path: Path, option: str) -> Path:
    """A `deepfake extract` output folder must not be an eval report (its videos.csv/tubes.csv)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, not a folder")
    if path.is_dir() and is_report(path):
        raise UserError(f"{option} {path}: is a `deepfake eval` report, whose videos.csv/tubes.csv the tube "
                        "index would overwrite; choose another folder")
    return path
