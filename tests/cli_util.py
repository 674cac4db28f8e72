"""Running the real `deepfake` entry point inside a test (with its one-line error handler)."""

from __future__ import annotations

import sys


def run_cli(monkeypatch, capsys, *args, width: int = 250):
    """Run ``deepfake ARGS...`` through ``dfdc_cli.cli.main``; returns (exit code, stdout, stderr).
    ``width``: the terminal's columns (default: wide, so that tests can read table rows)."""
    from dfdc_cli import ui
    from dfdc_cli.cli import main

    monkeypatch.setattr(ui.console, "width", width)
    monkeypatch.setattr(sys, "argv", ["deepfake", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err
