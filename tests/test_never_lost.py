"""What is never lost, never run, never hidden (README "What is never lost"): outputs never
overwrite inputs, a user's file never runs code, a damaged cache entry is rebuilt, a damaged
registry is an error, and every failure is one line naming the file."""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_util import run_cli

from dfdc_cli.errors import UserError


class _Creates:
    """A pickle that, when unpickled by a loader that runs code, creates a file."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return builtins.open, (self.target, "w")


def _malicious(path: Path, marker: Path, wrap: bool = True) -> Path:
    obj = {"model": {"w": torch.zeros(1)}, "epoch": 1, "payload": _Creates(marker)} if wrap else _Creates(marker)
    torch.save(obj, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    return path


# ----------------------------------------------------------------------------------------------
# 5. A user's file never runs code


def test_resume_never_runs_code_from_last_pt(tmp_path):
    from dfdc_cli.train.hooks import Checkpointer

    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    _malicious(run / "last.pt", marker)
    with pytest.raises(UserError, match="last.pt"):
        Checkpointer.resume(SimpleNamespace(), SimpleNamespace(), run)
    assert not marker.exists()


def test_models_import_never_runs_code(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    f = _malicious(tmp_path / "mc3_112.pt", marker)
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", f)
    assert code != 0 and "mc3_112.pt" in err and "Traceback" not in err
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# 7, 9. The submission CSV reads back whole; two videos with one name can be told apart


def _result(video: str, p: float = 0.25):
    from dfdc_cli.scan.results import VideoScan

    return VideoScan(video=video, name=Path(video).name, status="ok", p_fake=p, verdict="REAL")


def test_submission_csv_round_trips_names_with_commas_quotes_and_newlines(tmp_path):
    import pandas as pd

    from dfdc_cli.scan.results import write_submission

    names = ["a,b.mp4", 'say "cheese".mp4', "two\nlines.mp4", "plain.mp4"]
    write_submission(tmp_path / "sub.csv", [_result(f"/v/{n}", 0.1 * i) for i, n in enumerate(names)])
    back = pd.read_csv(tmp_path / "sub.csv")
    assert list(back["filename"]) == names
    assert list(back["label"]) == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_shard_merge_keeps_quoted_names_whole(tmp_path):
    import pandas as pd

    from dfdc_cli.scan.results import write_submission
    from dfdc_cli.scale.shard import merge_outputs

    write_submission(tmp_path / "sub.part-1-of-2.csv", [_result("/v/x,y.mp4", 0.5)])
    write_submission(tmp_path / "sub.part-2-of-2.csv", [_result("/v/a\nb.mp4", 0.25)])
    (m,) = merge_outputs(tmp_path)
    back = pd.read_csv(m.target)
    assert sorted(back["filename"]) == sorted(["x,y.mp4", "a\nb.mp4"]) and m.rows == 2


def test_same_name_in_two_folders_shows_the_shortest_distinguishing_path():
    from dfdc_cli.scan.results import distinct_names

    paths = ["/d/day1/cam/clip.mp4", "/d/day2/cam/clip.mp4", "/d/other.mp4", "/e/day1/cam/clip.mp4"]
    assert distinct_names(paths) == ["d/day1/cam/clip.mp4", "day2/cam/clip.mp4", "other.mp4",
                                     "e/day1/cam/clip.mp4"]
    assert distinct_names(["/a/x.mp4", "/a/x.mp4"]) == ["x.mp4", "x.mp4"]  # the same file twice


@pytest.mark.slow
def test_scan_table_and_csv_tell_same_named_videos_apart(tmp_path, monkeypatch, capsys, carphone, tiny_members):
    import shutil

    import pandas as pd

    for d in ("day1", "day2"):
        (tmp_path / d).mkdir()
        shutil.copy(carphone, tmp_path / d / "clip.mp4")
    odd = tmp_path / "day1" / 'a,b "c".mp4'
    shutil.copy(carphone, odd)
    sub = tmp_path / "out" / "sub.csv"
    sub.parent.mkdir()
    code, out, err = run_cli(monkeypatch, capsys, "scan", tmp_path / "day1", tmp_path / "day2",
                             "--workers", "1", "--csv", sub)
    assert code == 0, err
    back = pd.read_csv(sub)
    assert sorted(back["filename"]) == sorted(['a,b "c".mp4', "day1/clip.mp4", "day2/clip.mp4"])
    assert "day1/clip.mp4" in out and "day2/clip.mp4" in out


# ----------------------------------------------------------------------------------------------
# 1, 8, 2. Outputs never replace inputs, and are checked before any work


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a scan or an eval starts scoring (the output check must come first)."""
    import dfdc_cli.scan.factory

    def started(*_a, **_k):
        pytest.fail("the work started before the output path was checked")

    monkeypatch.setattr(dfdc_cli.scan.factory, "make_scanner", started)


def _one_error_line(err: str, *words: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("case", ["input", "other_video", "folder", "missing_folder", "twice", "input_in_folder"])
def test_scan_refuses_an_output_path_before_any_work(case, tmp_path, monkeypatch, capsys, carphone, no_work):
    import shutil

    v, w = tmp_path / "v.mp4", tmp_path / "w.mp4"
    shutil.copy(carphone, v)
    shutil.copy(carphone, w)
    (tmp_path / "adir").mkdir()
    before = v.read_bytes()
    args = {
        "input": (["--csv", v, v, w], "input"),
        "other_video": (["--csv", v, w], "existing video"),  # the issue's `scan --csv v.mp4 w.mp4`
        "folder": (["--json", tmp_path / "adir", v], "folder"),
        "missing_folder": (["--csv", tmp_path / "nope" / "s.csv", v], "does not exist"),
        "twice": (["--csv", tmp_path / "s.out", "--json", tmp_path / "s.out", v], "same file"),
        "input_in_folder": (["--json", w, tmp_path], "input"),
    }[case]
    code, out, err = run_cli(monkeypatch, capsys, "scan", *args[0])
    assert code == 2
    _one_error_line(err, args[1])
    assert v.read_bytes() == before and w.read_bytes() == before


def test_eval_report_never_lands_in_an_extract_index(tmp_path, monkeypatch, capsys, carphone, no_work):
    import shutil

    index = tmp_path / "tubes"
    index.mkdir()
    (index / "videos.csv").write_text("video,name,status,reason\n/x/a.mp4,a.mp4,ok,\n")
    (index / "tubes.csv").write_text("video,name,tube_id,tube_path\n/x/a.mp4,a.mp4,0,/x/t0.mp4\n")
    tables = {p.name: p.read_bytes() for p in index.iterdir() if p.suffix == ".csv"}
    assert set(tables) == {"videos.csv", "tubes.csv"}
    shutil.copy(carphone, tmp_path / "v.mp4")
    val = tmp_path / "val.csv"
    val.write_text("filename,label\nv.mp4,FAKE\n")
    code, out, err = run_cli(monkeypatch, capsys, "eval", "--val", val, "--out", index)
    assert code == 2
    _one_error_line(err, str(index), "tube index")
    assert {p.name: p.read_bytes() for p in index.iterdir() if p.suffix == ".csv"} == tables


def test_extract_index_never_lands_in_an_eval_report(tmp_path, monkeypatch, capsys, carphone):
    import dfdc_cli.faces.extract as X

    report = tmp_path / "report"
    report.mkdir()
    for name in ("metrics.json", "summary.md", "videos.csv", "tubes.csv"):
        (report / name).write_text(name)
    monkeypatch.setattr(X, "extract", lambda *a, **k: pytest.fail("extract started"))
    code, out, err = run_cli(monkeypatch, capsys, "extract", carphone, "--out", report)
    assert code == 2
    _one_error_line(err, "eval")
    assert (report / "videos.csv").read_text() == "videos.csv"


# ----------------------------------------------------------------------------------------------
# 4. A damaged registry is an error, never a silent change of judge


@pytest.mark.parametrize("damage", ["manifest", "active", "weights"])
def test_a_damaged_registry_stops_scan_instead_of_changing_the_judge(damage, tmp_path, monkeypatch, capsys,
                                                                      bikes, tiny_members):
    from dfdc_models import store

    e = store.active("mc3_112")
    if damage == "manifest":
        (e.path / "manifest.json").write_text('{"member": "mc3_112", "model_')  # truncated
        named = e.path / "manifest.json"
    elif damage == "active":
        (e.path.parent / "ACTIVE").write_bytes(b"\x00\x17garbage\n")
        named = e.path.parent / "ACTIVE"
    else:
        (e.path / "weights.pt").unlink()
        named = e.path / "weights.pt"
    code, out, err = run_cli(monkeypatch, capsys, "scan", bikes)
    assert code == 2
    _one_error_line(err, str(named), "damaged")
    # naming the member does not get round it either
    code, out, err = run_cli(monkeypatch, capsys, "scan", bikes, "--members", "mc3_112")
    assert code == 2 and str(named) in err
    code, out, err = run_cli(monkeypatch, capsys, "models", "list")
    assert code == 0
    row = next(ln for ln in out.splitlines() if ln.startswith("mc3_112"))
    assert "damaged" in row
    assert str(named) in err.replace("\n", "")


def test_a_damaged_registry_with_nothing_else_registered_does_not_fall_back_on_the_builtin_model(
        tmp_path, monkeypatch, capsys, bikes, tiny_members):
    from dfdc_models import builtin, paths, store

    assert builtin.member(), "this installation ships a built-in model"
    for m in tiny_members:
        if m != "mc3_112":
            store.remove(m, store.active(m).model_id)
    (paths.models_dir() / "mc3_112" / "ACTIVE").write_text("not-a-model-id\n")
    code, out, err = run_cli(monkeypatch, capsys, "scan", bikes)
    assert code == 2 and "ACTIVE" in err and "judged by" not in err


# ----------------------------------------------------------------------------------------------
# 10. NaN / Inf is an error of that member on that video, never a number in the output


def test_a_member_giving_nan_is_an_error_for_that_member_and_video(tmp_path):
    import json
    import math

    from test_scan import Brightness3d, fake_extractor, member, scanner
    from torch import nn

    from dfdc_cli.scan.results import to_json

    class NanWhenBright(nn.Module):
        """A broken network: NaN for tubes brighter than mid-grey, -Inf for the darkest."""

        def __init__(self):
            super().__init__()
            self.k = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            m = x.mean(dim=(1, 2, 3, 4))
            logit = torch.where(m > 128, torch.full_like(m, math.nan), torch.zeros_like(m))
            return torch.stack([logit, torch.zeros_like(m)], 1)

    ext = fake_extractor(tmp_path, {"a.mp4": [60, 200], "d.mp4": [90], "e.mp4": [220]})
    sc = scanner([member(Brightness3d(4.0), "mc3_112", "good"), member(NanWhenBright(), "r2plus1d_112", "broken")],
                 extractor=ext)
    a, d = sc.scan([tmp_path / "a.mp4", tmp_path / "d.mp4"])
    # a: "broken" gave NaN for face 1: it has no score for the video (not a mean over the face it did)
    assert a.status == "ok" and a.members["broken"] is None
    assert "broken" in a.reason and "nan" in a.reason and "face 1" in a.reason
    assert a.p_fake == pytest.approx(a.members["good"]) and all("broken" not in f.members for f in a.faces)
    assert d.members["broken"] == pytest.approx(0.5) and not d.reason
    # the only member gives NaN: an error with the reason, the prior, no verdict
    sc2 = scanner([member(NanWhenBright(), "r2plus1d_112", "broken")], extractor=ext)
    (e,) = sc2.scan([tmp_path / "e.mp4"])
    assert e.status == "error" and "nan" in e.reason and e.p_fake == 0.5 and e.verdict is None
    # strict JSON: no bare NaN anywhere
    text = json.dumps(to_json([a, d, e], sc.describe()), allow_nan=False)
    assert "NaN" not in text


def test_models_import_refuses_non_finite_weights(tmp_path, monkeypatch, capsys):
    from models_util import shared_state_dict

    from dfdc_models import store

    sd = shared_state_dict("mc3_112")
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    sd[key] = sd[key].clone()
    sd[key][0] = float("nan")
    f = tmp_path / "mc3_112_nan.pt"
    torch.save(sd, f)
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", f, "--as", "mc3_112")
    assert code != 0 and key in err and "NaN" in err and "Traceback" not in err
    assert store.list_entries() == []


# ----------------------------------------------------------------------------------------------
# 11. A file far larger than any member's weights is refused before it is read


@pytest.fixture
def never_read(monkeypatch):
    """Fail when the file is read whole or handed to torch.load."""
    real = Path.read_bytes
    big: list[Path] = []

    def read_bytes(self):
        if any(self == b for b in big):
            pytest.fail(f"{self} was read")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    return big


def test_size_cap_follows_the_largest_layout():
    from dfdc_models.checkpoint import size_cap
    from dfdc_models.registry import largest_layout_bytes

    largest = largest_layout_bytes()
    assert largest > 200e6  # r3d34's weights, ~253 MB in fp32
    assert 4 * largest < size_cap() < 10 * largest


def test_a_huge_file_is_refused_before_it_is_read(tmp_path, monkeypatch, capsys, never_read):
    from dfdc_models.checkpoint import size_cap

    f = tmp_path / "huge.pt"
    with open(f, "wb") as fh:  # sparse: 3 GB long, nothing on disk
        fh.truncate(max(3 << 30, size_cap() + 1))
    never_read.append(f)
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", f, "--as", "mc3_112")
    assert code != 0 and "huge.pt" in err and "limit" in err and "Traceback" not in err


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path, monkeypatch, capsys, never_read):
    import struct
    import zipfile

    from dfdc_models.checkpoint import size_cap

    f = tmp_path / "bomb.pt"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        z.writestr("bomb/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("bomb/data/0", b"\0" * 64)
    # The central directory says the tensor unpacks to more than the cap (as a deflated bomb's does).
    raw = bytearray(f.read_bytes())
    at = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, at + 24, min(size_cap() + 1, 0xFFFFFFFE))
    f.write_bytes(bytes(raw))
    assert sum(i.file_size for i in zipfile.ZipFile(f).infolist()) > size_cap()
    code, out, err = run_cli(monkeypatch, capsys, "models", "import", f, "--as", "mc3_112")
    assert code != 0 and "bomb.pt" in err and "unpacks to" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------
# 6. A damaged cache entry is rebuilt, not a lasting failure


@pytest.mark.slow
def test_a_truncated_track_in_the_scan_cache_is_rebuilt(tmp_path, monkeypatch, capsys, carphone, tiny_members):
    import json

    from dfdc_cli.paths import scan_tubes_dir

    js = tmp_path / "scan.json"
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, "--workers", "1", "--json", js)
    assert code == 0, err
    first = json.loads(js.read_text())["videos"][0]
    (npz,) = list(scan_tubes_dir().rglob("tube0.npz"))
    npz.write_bytes(npz.read_bytes()[:100])  # truncated
    for _ in range(2):  # --rescore must not keep failing either
        code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, "--workers", "1", "--rescore", "--json", js)
        assert code == 0, err
        v = json.loads(js.read_text())["videos"][0]
        assert v["status"] == "ok" and v["p_fake"] == pytest.approx(first["p_fake"], abs=1e-6)
        if _ == 0:
            assert "rebuilt" in v["reason"] and "tube0.npz" in v["reason"]
            assert "warning" in err and "rebuilt" in err
        else:
            assert "rebuilt" not in v["reason"] + err  # the entry is whole again


# ----------------------------------------------------------------------------------------------
# 3. A full or read-only disk: the batch goes on, each failure is one line, what can be written is


@pytest.fixture
def full_disk(monkeypatch):
    """Folders (added to the returned list) where every atomic write fails with ENOSPC, as on a full
    or read-only disk (tests run as root, whom chmod does not stop)."""
    import errno
    import os
    import tempfile

    full: list[Path] = []

    def guard(real):
        def make(*a, dir=None, **k):
            if dir is not None and any(Path(dir).resolve().is_relative_to(f.resolve()) for f in full):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dir))
            return real(*a, dir=dir, **k)
        return make

    monkeypatch.setattr(tempfile, "mkstemp", guard(tempfile.mkstemp))
    monkeypatch.setattr(tempfile, "mkdtemp", guard(tempfile.mkdtemp))
    return full


@pytest.mark.slow
def test_scan_goes_on_without_a_full_cache_and_writes_what_it_can(tmp_path, monkeypatch, capsys, carphone, bikes,
                                                                 tiny_members, full_disk):
    import json

    import pandas as pd

    from dfdc_cli.paths import cache_dir

    first = tmp_path / "first.json"
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, "--workers", "1", "--json", first)
    assert code == 0, err
    p_car = json.loads(first.read_text())["videos"][0]["p_fake"]
    full = tmp_path / "full"
    full.mkdir()
    full_disk.extend([cache_dir(), full])
    sub, js = tmp_path / "sub.csv", full / "scan.json"
    code, out, err = run_cli(monkeypatch, capsys, "scan", carphone, bikes, "--workers", "1", "--rescore",
                             "--json", js, "--csv", sub)
    assert code == 1 and "Traceback" not in err, err
    back = pd.read_csv(sub)  # the CSV is written although the JSON could not be
    assert list(back["filename"]) == ["carphone_pristine.mp4", "bikes.mp4"]
    assert back["label"][0] == pytest.approx(p_car, abs=1e-5)
    assert not js.exists()
    lines = [ln for ln in err.splitlines() if "No space left" in ln]
    assert any(str(js) in ln and "--json" in ln for ln in lines), err
    assert any("bikes.mp4" in ln and "not stored in the cache" in ln for ln in lines), err  # new: not cached
    assert any("score cache" in ln for ln in lines), err


@pytest.mark.slow
def test_extract_into_a_full_folder_fails_each_video_in_one_line(tmp_path, monkeypatch, capsys, carphone, full_disk):
    out_dir = tmp_path / "tubes"
    out_dir.mkdir()
    full_disk.append(out_dir)
    code, out, err = run_cli(monkeypatch, capsys, "extract", carphone, "--out", out_dir, "--workers", "1")
    assert code != 0 and "Traceback" not in err, err
    assert any("carphone_pristine.mp4" in ln and "No space left" in ln for ln in err.splitlines()), err
    assert any("videos.csv" in ln and "No space left" in ln for ln in err.splitlines()), err


@pytest.mark.slow
def test_extract_whose_index_cannot_be_written_still_shows_what_it_did(tmp_path, monkeypatch, capsys, carphone):
    """The tubes are stored but the index tables cannot be written: the summary of the run still
    shows, then one line says why the index is behind, and the exit code says it failed."""
    import errno
    import os

    from dfdc_cli.faces import index as I

    def no_space(out_dir, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out_dir) / I.VIDEOS_CSV))

    monkeypatch.setattr(I, "write_index", no_space)
    out_dir = tmp_path / "tubes"
    code, out, err = run_cli(monkeypatch, capsys, "extract", carphone, "--out", out_dir, "--workers", "1", width=120)
    assert code != 0 and "Traceback" not in err, err
    assert "deepfake extract" in out and "1 processed" in out and "not brought up to date" in out, out  # the summary
    lines = [ln for ln in err.splitlines() if "could not be written" in ln]
    assert len(lines) >= 1 and all("No space left" in ln for ln in lines), err
    assert "kept in the tube store" in err.replace("\n", " "), err
    assert not (out_dir / I.VIDEOS_CSV).exists()


@pytest.mark.slow
def test_eval_whose_report_cannot_be_written_still_prints_its_figures(tmp_path, monkeypatch, capsys, carphone,
                                                                      bikes, tiny_members, full_disk):
    import csv

    val = tmp_path / "val.csv"
    with val.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "label"])
        w.writerow([carphone, "REAL"])
        w.writerow([bikes, "FAKE"])
    out = tmp_path / "report"
    out.mkdir()
    full_disk.append(out)
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "--val", val, "--out", out, "--workers", "1", width=120)
    assert code == 1 and "Traceback" not in err, err
    assert "video level" in stdout and "ensemble" in stdout  # the figures are printed all the same
    bad = [ln for ln in err.splitlines() if "the report is incomplete" in ln]
    assert len(bad) == 1 and "No space left" in bad[0] and str(out) in bad[0], err
    assert not (out / "metrics.json").exists()


def test_tubes_show_never_writes_its_sheet_over_the_tube(tmp_path, monkeypatch, capsys, carphone):
    import shutil

    tube = tmp_path / "tube0.mp4"
    shutil.copy(carphone, tube)
    before = tube.read_bytes()
    code, out, err = run_cli(monkeypatch, capsys, "tubes", "show", tube, "--out", tube)
    assert code == 2
    _one_error_line(err, str(tube), "input")
    assert tube.read_bytes() == before
    code, out, err = run_cli(monkeypatch, capsys, "tubes", "blend", tube, "--out", tube)
    assert code == 2 and "input" in err and tube.read_bytes() == before
