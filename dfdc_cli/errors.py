"""Errors that reach the user as one line, never as a traceback."""

from __future__ import annotations


# A problem the user can fix (bad path, bad option, missing weights...): the CLI prints
# ``error: <message>`` and exits with code 2. Defined by the model package, which raises it without
# the CLI, so that one class covers both.
from dfdc_models.errors import UserError  # noqa: F401


class VideoError(Exception):
    """One video cannot be processed. Recorded per video; a batch goes on."""
