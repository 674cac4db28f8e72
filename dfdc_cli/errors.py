"""Errors that reach the user as one line, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad path, bad option, missing weights...).

    The CLI prints ``error: <message>`` and exits with code 2.
    """


class VideoError(Exception):
    """One video cannot be processed. Recorded per video; a batch goes on."""
