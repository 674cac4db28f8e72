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
    from dfdc_cli.trainhooks import Checkpointer

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
