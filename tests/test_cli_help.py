"""Help text reads well at any width: paragraphs are reflowed by the terminal, lists keep their lines."""

from __future__ import annotations

import os

from typer.testing import CliRunner

from dfdc_cli.cli import app
from dfdc_cli.ui import reflow


def test_reflow_joins_wrapped_lines_keeps_lists_and_paragraphs():
    text = """First line
    wrapped here.

    A paragraph written over
    three source
    lines.

    - item one
    - item two
      continued
    1. numbered"""
    assert reflow(text) == (
        "First line wrapped here.\n\nA paragraph written over three source lines.\n\n"
        "- item one\n- item two\n  continued\n1. numbered"
    )
    assert reflow(None) is None and reflow("") == ""


def test_command_help_wraps_at_80_columns():
    env = dict(os.environ, COLUMNS="80", TERMINAL_WIDTH="80")
    out = CliRunner().invoke(app, ["scan", "--help"], env=env).output
    lines = [ln.strip() for ln in out.splitlines()]
    # The source breaks its line after "long side 480 px,"; unreflowed, the terminal wraps the long
    # source line before it and leaves that fragment on a line of its own.
    assert "Face tubes are extracted" in out
    assert "long side 480 px," not in lines
    assert all(len(ln) <= 80 for ln in out.splitlines())
