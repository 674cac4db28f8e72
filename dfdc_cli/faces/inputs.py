"""Which files a batch takes: the one folder walker and the one list of video extensions that
`deepfake extract` and `deepfake scan` share.

Rules: files given by name are taken as given (even when missing: they get an error row later);
folders are searched recursively, following symbolic links to folders, taking files with a video
extension and skipping hidden files and folders (names starting with "."). Every input the walker
meets gets a line: a folder that cannot be read becomes an input of its own with the reason as its
error; a dangling link named like a video is kept (reading it says why it fails); a symbolic link
back to a folder being walked (a loop) is reported once, as a note, and not followed.

:func:`collect_inputs` adds what a DFDC ``metadata.json`` beside a video says (label, original).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

VIDEO_EXTS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
    ".mts", ".m2ts", ".ogv",
})


@dataclass(frozen=True)
class Found:
    """One input: ``path`` is absolute (a file's symbolic links resolved when it exists, so one file
    reached twice is one input); ``error`` is why it cannot be read, known from listing alone
    ("" when it is a file to open)."""

    path: Path
    error: str = ""


def is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTS


def missing_reason(path: str | os.PathLike) -> str:
    """Why a path that does not exist cannot be read: a dangling link, a link loop, or missing."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symbolic link loop"
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"dangling symbolic link (its target {target} does not exist)"
    return "file not found"


def _key(p: Path) -> Path:
    return p.resolve() if p.exists() else p.absolute()


def _inside(p: Path, folder: Optional[Path]) -> bool:
    if folder is None:
        return False
    r = Path(os.path.realpath(p))  # (Path.resolve raises on a link loop)
    return r == folder or folder in r.parents


def walk(paths: Iterable[str | os.PathLike], exclude: Optional[str | os.PathLike] = None,
         on_note: Optional[Callable[[str], None]] = None) -> list[Found]:
    """The inputs of ``paths`` in the given order, each folder's files sorted by path, every file
    once. ``exclude``: a folder whose contents are never inputs (extract's own output folder).
    ``on_note`` gets the lines that are not inputs (a symbolic link loop, a dangling link that may
    have been a folder); default: printed as warnings."""
    if on_note is None:
        from dfdc_cli.ui import warn

        on_note = warn
    skip = Path(exclude).expanduser().resolve() if exclude is not None else None
    out: list[Found] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p).expanduser()
        found = _walk_folder(p, skip, on_note) if p.is_dir() else [Found(p)]
        for f in found:
            key = _key(f.path)
            if key not in seen:
                seen.add(key)
                out.append(Found(key, f.error))
    return out


def _walk_folder(root: Path, skip: Optional[Path], on_note: Callable[[str], None]) -> list[Found]:
    found: list[Found] = []
    st = os.stat(root)
    visited = {(st.st_dev, st.st_ino)}  # a folder reached again by another link is walked once
    # Depth first, siblings sorted by name: the same order as sorting the file paths.
    stack: list[tuple[Path, bool, frozenset]] = [(root, True, frozenset(visited))]
    while stack:
        path, is_dir, chain = stack.pop()
        if not is_dir:
            found.append(Found(path))
            continue
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            found.append(Found(path, f"cannot read folder: {exc.strerror or exc}"))
            continue
        children = []
        for e in entries:
            if e.name.startswith("."):
                continue
            child = path / e.name
            try:
                child_is_dir = e.is_dir()  # follows symbolic links
            except OSError:
                child_is_dir = False
            if child_is_dir:
                if _inside(child, skip):
                    continue
                try:
                    cst = os.stat(child)
                except OSError as exc:
                    found.append(Found(child, f"cannot read folder: {exc.strerror or exc}"))
                    continue
                ident = (cst.st_dev, cst.st_ino)
                if ident in chain:
                    on_note(f"{child}: symbolic link loop (back to {os.path.realpath(child)}), not followed")
                    continue
                if ident in visited:
                    continue
                visited.add(ident)
                children.append((child, True, chain | {ident}))
            elif is_video_name(e.name):
                if not _inside(child, skip):
                    children.append((child, False, chain))
            elif e.is_symlink() and not os.path.exists(child) and not Path(e.name).suffix:
                # Could have been a folder of videos (an unmounted disk, a moved dataset).
                on_note(f"{child}: {missing_reason(child)}, skipped")
        stack.extend(reversed(children))
    return found


@dataclass
class VideoInput:
    """One video of a batch, with what its folder's DFDC metadata says of it."""

    path: str  # absolute
    label: str = ""
    original: str = ""
    part: str = ""
    error: str = ""  # known before reading it (a folder that cannot be read)

    @property
    def name(self) -> str:
        return Path(self.path).name


def _load_metadata(folder: Path, cache: dict) -> dict:
    if folder not in cache:
        meta = {}
        mp = folder / "metadata.json"
        if mp.is_file():
            try:
                raw = json.loads(mp.read_text())
                if isinstance(raw, dict):
                    meta = {k: v for k, v in raw.items() if isinstance(v, dict)}
            except (OSError, ValueError):
                meta = {}
        cache[folder] = meta
    return cache[folder]


def collect_inputs(paths: Iterable[str | Path], exclude: Optional[Path] = None,
                   default_label: str = "", on_note: Optional[Callable[[str], None]] = None) -> list[VideoInput]:
    """Video files from files and folders (:func:`walk`: recursive, the shared
    video extensions, hidden files skipped, duplicates dropped), in the given order. A DFDC
    ``metadata.json`` beside a video gives its label and original; ``part`` is the video's folder
    name. Paths that do not exist and folders that cannot be read are kept (they get an error
    status). ``default_label`` labels the videos that no metadata.json labels (e.g. a folder of
    real videos for self-blended training)."""
    metas: dict = {}
    out = []
    for f in walk(paths, exclude=exclude, on_note=on_note):
        qp = f.path
        meta = _load_metadata(qp.parent, metas).get(qp.name, {}) if not f.error and qp.parent.is_dir() else {}
        label = str(meta.get("label") or default_label).upper()
        out.append(VideoInput(str(qp), label, str(meta.get("original") or ""), qp.parent.name, f.error))
    return out

