"""The one error class of the package: a problem the user can fix (a missing or damaged weights file, a
file that matches no architecture, an unknown member), said in one line.

The ``deepfake`` CLI re-exports it as :class:`dfdc_cli.errors.UserError` and prints ``error: <message>``
(exit code 2), so the same exception is a one-line error whether it comes from the CLI or from here.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad path, bad file, missing weights...), reported as one line."""
