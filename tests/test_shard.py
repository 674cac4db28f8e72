"""Job arrays (--shard K/N): the split, per-shard index parts, merged reads, `deepfake index merge`,
concurrent shards, and sharded scans."""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import threading
from pathlib import Path

import pytest

from dfdc_cli.faces import extract as X
from dfdc_cli.errors import UserError
from dfdc_cli.faces.index import (
    VIDEO_COLUMNS, VideoRecord, merge_parts, parts_of, read_videos, table_paths, write_index,
)
from dfdc_cli.scale.shard import parse_shard, part_path, select, shard_of

from cli_util import run_cli
from index_util import assert_same_index, index_rows

TRAIN = X.PRESETS["train"]


def test_parse_shard():
    assert parse_shard("2/8") == (2, 8) and parse_shard(" 1 / 1 ") == (1, 1) and parse_shard(None) is None
    for bad in ("0/4", "5/4", "1/0", "a/b", "2", "-1/3"):
        with pytest.raises(UserError):
            parse_shard(bad)


def test_split_is_a_partition_stable_under_reordering_and_folders():
    names = [f"v{i:04d}.mp4" for i in range(400)]
    n = 4
    shares = [select(names, (k, n)) for k in range(1, n + 1)]
    assert sorted(x for s in shares for x in s) == sorted(names)  # each video in exactly one shard
    assert all(60 < len(s) < 140 for s in shares)  # and the shards are of similar size
    shuffled = random.Random(0).sample(names, len(names))
    assert [set(select(shuffled, (k, n))) for k in range(1, n + 1)] == [set(s) for s in shares]
    # by file name: where the shared filesystem is mounted does not matter
    assert shard_of("/mnt/a/x/v0001.mp4", 7) == shard_of("/scratch/v0001.mp4", 7) == shard_of("v0001.mp4", 7)
    assert part_path("out/scan.json", (2, 5)) == Path("out/scan.part-2-of-5.json")


def test_two_concurrent_shards_give_the_index_of_one_run(tmp_path, small_batch, small_batch_index, monkeypatch, capsys):
    out = tmp_path / "sharded"
    errors = []

    def shard(k):
        try:
            # reversed path order in one shard: the split must not depend on it
            paths = sorted(small_batch.iterdir(), reverse=(k == 2))
            X.extract(paths, out, TRAIN, workers=1, progress=False, quiet=True, shard=(k, 2))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=shard, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert parts_of(out) == [(1, 2), (2, 2)]
    assert not table_paths(out)[0].exists()  # each shard wrote only its own part
    for k in (1, 2):
        part = read_videos_file(table_paths(out, (k, 2))[0])
        assert len(part) == 2 and all(shard_of(n, 2) == k for n in part["name"])
    assert_same_index(out, small_batch_index)  # reading the folder merges the parts
    assert list(read_videos(out)["name"]) == list(read_videos(small_batch_index)["name"])  # in one run's order

    # `deepfake index merge` folds the parts into the main tables: same rows, no parts left
    before = index_rows(out)
    code, stdout, err = run_cli(monkeypatch, capsys, "index", "merge", out)
    assert code == 0, err
    assert f"2 of 2 parts merged (4 videos, {len(before[1])} tubes)" in stdout
    assert parts_of(out) == [] and table_paths(out)[0].exists()
    assert index_rows(out) == before
    code, stdout, _ = run_cli(monkeypatch, capsys, "index", "merge", out)
    assert code == 0 and "no parts to merge" in stdout  # merging twice is harmless


def test_a_shard_rerun_replaces_its_rows_and_the_cli_writes_its_part(tmp_path, small_batch, small_batch_index, monkeypatch, capsys):
    out = tmp_path / "out"
    shutil.copytree(small_batch_index / "store", out / "store")  # the tube store is shared: cache hits
    code, stdout, err = run_cli(monkeypatch, capsys, "extract", small_batch, "--out", out, "--preset", "train",
                                "-j", "1", "--shard", "1/2", "--quiet")
    assert code in (0, 1), err
    part = table_paths(out, (1, 2))[0]
    assert part.exists() and not table_paths(out)[0].exists()
    first = read_videos_file(part)
    code, *_ = run_cli(monkeypatch, capsys, "extract", small_batch, "--out", out, "--preset", "train",
                       "-j", "1", "--shard", "1/2", "--quiet")
    assert read_videos_file(part)["video"].tolist() == first["video"].tolist()  # replaced, not appended
    code, _, err = run_cli(monkeypatch, capsys, "extract", small_batch, "--shard", "3/2")
    assert code == 2 and "--shard" in err


def read_videos_file(path):
    from dfdc_cli.faces.index import read_table

    return read_table(Path(path), VIDEO_COLUMNS)


def _hammer(folder: str, k: int, rounds: int) -> None:
    """One shard writing its part again and again, one more video each time."""
    for i in range(1, rounds + 1):
        rows = [VideoRecord(video=f"/v/s{k}-{j}.mp4", name=f"s{k}-{j}.mp4", status="ok") for j in range(i)]
        write_index(Path(folder), rows, [], shard=(k, 2))


def _merge_loop(folder: str, rounds: int) -> None:
    for _ in range(rounds):
        merge_parts(folder)


def test_concurrent_part_writes_and_merges_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), k, 25)) for k in (1, 2)]
    procs.append(ctx.Process(target=_merge_loop, args=(str(tmp_path), 40)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    names = set(read_videos(tmp_path)["name"])
    assert names == {f"s{k}-{j}.mp4" for k in (1, 2) for j in range(25)}
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # no half-written table left


def test_sharded_scans_merge_to_one_scans_results(tmp_path, monkeypatch, capsys, carphone, bikes, tiny_members):
    d = tmp_path / "in"
    d.mkdir()
    for src in (carphone, bikes):
        shutil.copy(src, d / src.name)
    (d / "notes.mp4").write_text("not a video\n")
    assert {shard_of(p.name, 2) for p in d.iterdir()} == {1, 2}
    whole = tmp_path / "whole.json"
    code, _, err = run_cli(monkeypatch, capsys, "scan", d, "--workers", "1", "--json", whole, "--csv", tmp_path / "whole.csv")
    assert code == 1, err
    res = tmp_path / "res"
    res.mkdir()  # an output's folder must exist (a typo is refused before the work, not created)
    for k in (1, 2):
        run_cli(monkeypatch, capsys, "scan", d, "--workers", "1", "--shard", f"{k}/2", "--rescore",
                "--json", res / "scan.json", "--csv", res / "sub.csv")
    assert sorted(p.name for p in res.iterdir()) == [
        "scan.part-1-of-2.json", "scan.part-2-of-2.json", "sub.part-1-of-2.csv", "sub.part-2-of-2.csv"]
    code, stdout, err = run_cli(monkeypatch, capsys, "index", "merge", res)
    assert code == 0, err
    merged, one = json.loads((res / "scan.json").read_text()), json.loads(whole.read_text())
    assert merged["members"] == one["members"]
    got = {v["name"]: v for v in merged["videos"]}
    assert [v["name"] for v in merged["videos"]] == [v["name"] for v in one["videos"]]
    for v in one["videos"]:
        assert got[v["name"]]["status"] == v["status"]
        assert got[v["name"]]["p_fake"] == pytest.approx(v["p_fake"], abs=1e-6)
    assert sorted((res / "sub.csv").read_text().splitlines()) == sorted((tmp_path / "whole.csv").read_text().splitlines())
