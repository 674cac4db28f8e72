"""Shared terminal output: one console for results, one for messages, one progress bar style."""

from __future__ import annotations

import inspect
import re
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


def progress(transient: bool = False) -> Progress:
    """A progress bar on stderr, so stdout stays machine-readable."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=err_console,
        transient=transient,
    )


def warn(msg: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False, soft_wrap=True)


def fail_line(path: str, reason: str) -> None:
    """The one-line message for a video that could not be processed."""
    err_console.print(f"[red]failed[/red] {path}: {reason}", highlight=False, soft_wrap=True)


def middle_ellipsis(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: a long one keeps its start and its end (the
    extension, and about a third of the width) around an ellipsis, so names stay recognisable
    (``a_very_long_video_n…_take_3.mp4``)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    _, dot, ext = text.rpartition(".")
    keep_ext = len(ext) + 1 if dot and len(ext) + 1 < width // 2 else 0
    tail = max(keep_ext, (width - 1) // 3)
    head = width - 1 - tail
    return text[:head] + "…" + (text[-tail:] if tail else "")


_LIST_LINE = re.compile(r"^\s*(?:[-*] |\d+[.)] |\s{2,})")


def reflow(text: Optional[str]) -> Optional[str]:
    """Help text written as wrapped source lines -> one line per paragraph, so that the terminal
    wraps it at its own width (Typer keeps single line breaks, which at 80 columns leaves every
    source line ragged). List items and indented lines keep their own lines."""
    if not text:
        return text
    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        lines = para.split("\n")
        merged: list[str] = []
        for line in lines:
            if merged and not _LIST_LINE.match(line) and not line.startswith("\b"):
                merged[-1] = merged[-1].rstrip() + " " + line.strip()
            else:
                merged.append(line)
        out.append("\n".join(merged))
    return "\n\n".join(out)


def reflow_app(app) -> None:
    """Apply :func:`reflow` to the help of every command and group registered on a Typer app."""
    for info in app.registered_commands:
        info.help = reflow(info.help or (info.callback.__doc__ if info.callback else None))
    for group in app.registered_groups:
        group.help = reflow(group.help)
        sub = group.typer_instance
        if sub is not None:
            sub.info.help = reflow(sub.info.help)
            reflow_app(sub)
