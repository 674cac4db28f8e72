"""The first module that extract's fork server imports (:func:`dfdc_cli.lifecycle.forkserver_preload`):
it makes the fork server end when the process that started it dies, however it dies.

Imported anywhere else it does nothing: it acts only in a process whose parent is the one named
by the environment variable that ``forkserver_preload`` sets just before the fork server starts.
"""

from __future__ import annotations

import os

from dfdc_cli.lifecycle import FORKSERVER_ENV, watch_parent

if os.environ.get(FORKSERVER_ENV) == str(os.getppid()):
    # No SIGTERM handler (the fork server's children would inherit it) and no PDEATHSIG (the
    # thread that started the fork server, e.g. scan's producer, may end before the process).
    watch_parent(os.getppid(), unwind=False, pdeathsig=False)
