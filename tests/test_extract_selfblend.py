"""`deepfake extract --label REAL --self-blend`: a folder of real videos becomes real tubes plus
indexed self-blended fakes, which is all `train --fakes self-blended` needs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from dfdc_cli.cli import app
from dfdc_cli.faces.video import read_video


def test_extract_self_blend_indexes_fakes_next_to_their_reals(carphone, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(carphone, videos / "carphone.mp4")
    out = tmp_path / "tubes"
    args = ["extract", str(videos), "--out", str(out), "--workers", "1", "--label", "REAL",
            "--self-blend", "--self-blend-seed", "3", "-q"]

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    tubes = pd.read_csv(out / "tubes.csv", keep_default_na=False)
    assert sorted(tubes["label"]) == ["FAKE", "REAL"]
    real = tubes[tubes.label == "REAL"].iloc[0]
    fake = tubes[tubes.label == "FAKE"].iloc[0]
    # The fake is grouped with its original, so the trainer's split keeps them on one side.
    assert fake["original"] == real["name"] == "carphone.mp4"
    assert fake["tube_path"] != real["tube_path"] and "self-blended" in fake["tube_path"]
    a, b = read_video(real["tube_path"]), read_video(fake["tube_path"])
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.1  # the blend changed the face

    # A second run reuses both the cached extraction and the written fakes: same index, no duplicates.
    mtime = (out / "self-blended").stat().st_mtime_ns
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    again = pd.read_csv(out / "tubes.csv", keep_default_na=False)
    assert sorted(again["tube_path"]) == sorted(tubes["tube_path"])
    assert (out / "self-blended").stat().st_mtime_ns == mtime


def test_extract_rejects_a_bad_label_in_one_line(carphone, tmp_path):
    res = CliRunner().invoke(app, ["extract", str(carphone), "--out", str(tmp_path), "--label", "maybe"])
    assert res.exit_code != 0
    assert "--label" in str(res.exception) or "--label" in res.output
