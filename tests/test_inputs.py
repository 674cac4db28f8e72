"""The one folder walker of extract and scan: extensions, hidden files, links (dangling, looping,
to folders), unreadable folders; every input it meets gets a line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dfdc_cli.faces import extract as X
from dfdc_cli.faces import inputs
from dfdc_cli.scan import scanner as scan, inputs as scaninput
from dfdc_cli.faces.index import read_videos

from cli_util import run_cli


def touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def walk(paths, **kw):
    notes: list[str] = []
    found = inputs.walk(paths, on_note=notes.append, **kw)
    return found, notes


def test_one_walker_one_extension_list_for_extract_and_scan(tmp_path):
    d = tmp_path / "in"
    for name in ("b.MOV", "a.mp4", "c.3gp", "sub/d.mkv", "e.m2ts", "notes.txt", "metadata.json",
                 ".hidden.mp4", ".cache/x.mp4", "sub/.y.mp4"):
        touch(d / name)
    found, notes = walk([d])
    names = [f.path.relative_to(d).as_posix() for f in found]
    assert names == ["a.mp4", "b.MOV", "c.3gp", "e.m2ts", "sub/d.mkv"]  # sorted by path, no hidden, videos only
    assert not notes and all(not f.error for f in found)
    # extract and scan take exactly the same inputs (scan used to miss .3gp, .mts, .m2ts, .ogv)
    assert [Path(v.path) for v in inputs.collect_inputs([d])] == scaninput.expand_paths([d]) == [f.path for f in found]
    assert not any(hasattr(m, "VIDEO_EXTS") for m in (scan, scaninput, X))


def test_files_as_given_duplicates_once_links_to_folders_followed(tmp_path):
    d = tmp_path / "in"
    v = touch(d / "v.mp4")
    other = tmp_path / "elsewhere"
    touch(other / "w.mp4")
    (d / "linked").symlink_to(other, target_is_directory=True)
    (d / "again.mp4").symlink_to(v)  # the same file under another name: one input
    found, notes = walk([d, v, d / "missing.mp4", d / ".given_hidden.mp4"])
    assert [f.path for f in found] == [v, other / "w.mp4", d / "missing.mp4", d / ".given_hidden.mp4"]
    assert not notes


def test_symlink_loop_is_reported_once_and_not_followed(tmp_path):
    d = tmp_path / "in"
    touch(d / "sub" / "v.mp4")
    (d / "sub" / "up").symlink_to(d, target_is_directory=True)  # sub/up/sub/up/... forever
    found, notes = walk([d])
    assert [f.path for f in found] == [d / "sub" / "v.mp4"]
    assert len(notes) == 1 and "symbolic link loop" in notes[0] and str(d / "sub" / "up") in notes[0]


def test_dangling_links_get_a_line(tmp_path, monkeypatch, capsys):
    d = tmp_path / "in"
    touch(d / "empty.mp4", b"")
    (d / "x.mp4").symlink_to(tmp_path / "gone.mp4")
    (d / "old_disk").symlink_to(tmp_path / "unmounted")  # may have been a folder of videos
    (d / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not a video: not an input
    (d / "self.mp4").symlink_to(d / "self.mp4")
    found, notes = walk([d])
    assert [f.path.name for f in found] == ["empty.mp4", "self.mp4", "x.mp4"]
    assert len(notes) == 1 and "old_disk" in notes[0] and "dangling symbolic link" in notes[0]
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "extract", d, "--out", out, "-j", "1", "-q")
    assert code == 1
    rows = {r["name"]: r for r in read_videos(out).to_dict("records")}
    assert rows["x.mp4"]["status"] == "error"
    assert rows["x.mp4"]["reason"] == f"dangling symbolic link (its target {tmp_path / 'gone.mp4'} does not exist)"
    assert rows["self.mp4"]["reason"] == "symbolic link loop"
    assert rows["empty.mp4"]["reason"] == "empty file (0 bytes)"
    assert "x.mp4: dangling symbolic link" in " ".join(err.split())
    assert "old_disk: dangling symbolic link" in " ".join(err.split())


def test_unreadable_folder_is_an_input_with_its_error(tmp_path, monkeypatch):
    d = tmp_path / "in"
    touch(d / "a" / "v.mp4", b"")
    touch(d / "locked" / "w.mp4")
    real = os.scandir

    def scandir(path):  # as for a folder without read permission (root reads anything, so faked)
        if Path(path) == d / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(inputs.os, "scandir", scandir)
    found, _ = walk([d])
    assert [(f.path, f.error) for f in found] == [(d / "a" / "v.mp4", ""),
                                                 (d / "locked", "cannot read folder: Permission denied")]
    res = X.extract([d], tmp_path / "out", workers=1, progress=False, quiet=True)
    assert [(v.name, v.status, v.reason) for v in res.videos] == [
        ("v.mp4", "error", "empty file (0 bytes)"),
        ("locked", "error", "cannot read folder: Permission denied"),
    ]
    # scan hands the same path to the extractor, which reports the same error for it
    assert scaninput.expand_paths([d]) == [d / "a" / "v.mp4", d / "locked"]
    assert [Path(v.path) for v in inputs.collect_inputs(scaninput.expand_paths([d]))] == [d / "a" / "v.mp4", d / "locked"]


def test_a_file_that_vanished_after_listing(tmp_path):
    d = tmp_path / "in"
    v = touch(d / "v.mp4")
    listed = scaninput.expand_paths([d])
    v.unlink()
    res = X.extract(listed, tmp_path / "out", workers=1, progress=False, quiet=True)
    assert [(r.name, r.status, r.reason) for r in res.videos] == [("v.mp4", "error", "file not found")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_for_real(tmp_path):
    d = tmp_path / "in"
    touch(d / "locked" / "w.mp4")
    (d / "locked").chmod(0)
    try:
        found, _ = walk([d])
        assert [(f.path, f.error) for f in found] == [(d / "locked", "cannot read folder: Permission denied")]
    finally:
        (d / "locked").chmod(0o755)
