"""How a batch ends: worker processes that never outlive the process that started them, and
Ctrl-C / SIGTERM that stop a batch cleanly.

Workers (extract's pool, train's DataLoader workers) call :func:`watch_parent` first thing. When
the main process dies, however it died (SIGKILL from an out-of-memory killer or a scheduler's time
limit included), each worker gets SIGTERM within about a second, unwinds (half-written store
entries are removed) and exits; if it cannot unwind in a few seconds it exits at once. With no
worker left, multiprocessing's fork server and resource tracker exit by themselves: they live
exactly as long as a process that may use them.

The CLI runs inside :func:`graceful_signals`: the first Ctrl-C (SIGINT) or SIGTERM raises
:class:`Interrupted` in the main thread, so the batch stops its workers and writes its index on
the way out; a second one ends the process at once. The exit code is 128 + the signal's number
(130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Iterator, Optional

POLL_S = 0.5  # how often a worker checks that the main process is alive
GRACE_S = 3.0  # time a worker has to unwind after SIGTERM before it exits at once
_PR_SET_PDEATHSIG = 1


class Interrupted(BaseException):
    """A run stopped by Ctrl-C or SIGTERM; ``str()`` says what was done and how to resume (or is
    empty), ``signum`` is the signal. Not a KeyboardInterrupt, which Typer turns into a silent
    exit 130 before the CLI can say anything (and SIGTERM is no keyboard); like it, not caught by
    ``except Exception``."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


FORKSERVER_ENV = "DEEPFAKE_FORKSERVER_PARENT"


def forkserver_preload(modules: list[str]) -> list[str]:
    """A fork server preload list that starts with :mod:`dfdc_cli._forkserver`: the fork server
    then ends when this process dies, even while it is still importing the other modules
    (multiprocessing's own check starts after them: minutes for torch on a loaded machine)."""
    os.environ[FORKSERVER_ENV] = str(os.getpid())  # inherited by the fork server, started later
    return ["dfdc_cli._forkserver", *modules]


# ----------------------------------------------------------------------------------------------
# Signals in the main process


@contextlib.contextmanager
def graceful_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread the first time; the
    second time the process exits at once (its workers follow via :func:`watch_parent`).
    Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"hit": False}

    def handler(signum, _frame):
        if state["hit"]:
            os.write(2, f"\n{signal_name(signum)} again: stopped at once\n".encode())
            os._exit(128 + signum)
        state["hit"] = True
        raise Interrupted("", signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if not state["hit"]:  # once stopping, a second signal still ends the process at once
            for s, h in old.items():
                signal.signal(s, h)


# ----------------------------------------------------------------------------------------------
# Workers


def _proc_start(pid: int) -> Optional[str]:
    """The start time of ``pid`` from /proc (None: no such process, or a zombie: it died)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # dead, not yet reaped by its parent
        return None
    return fields[19]


def _alive_check(pid: int):
    """A function telling whether ``pid`` (as it is now) is still alive."""
    if os.path.exists(f"/proc/{pid}/stat"):
        start = _proc_start(pid)
        # The start time tells a reused pid from the process we watch.
        return lambda: start is not None and _proc_start(pid) == start
    parent_is_pid = os.getppid() == pid

    def alive() -> bool:
        if parent_is_pid and os.getppid() != pid:  # reparented: the parent died
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    return alive


def _set_pdeathsig(sig: int) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent thread exits."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _unwinding_sigterm(signum, _frame):
    raise SystemExit(128 + signum)


def main_pid() -> int:
    """The process that started this one: multiprocessing's parent (the process that created the
    Process object, also when a fork server forked it), else the OS parent."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getppid()


def watch_parent(pid: Optional[int] = None, interval: float = POLL_S, grace: float = GRACE_S, *,
                 unwind: bool = True, pdeathsig: bool = True) -> None:
    """End this process when process ``pid`` (default: :func:`main_pid`) dies, however it dies.

    A daemon thread checks every ``interval`` seconds; on the parent's death it sends this
    process SIGTERM (called from the main thread, this installs a SIGTERM handler that raises
    SystemExit, so ``finally`` blocks run, unless a handler is already set or ``unwind`` is
    False), and if the process is still there ``grace`` seconds later, it exits at once. When
    ``pid`` is the direct parent and ``pdeathsig`` is on, Linux's PR_SET_PDEATHSIG sends the
    SIGTERM without waiting for the next check.
    """
    pid = main_pid() if pid is None else int(pid)
    in_main = threading.current_thread() is threading.main_thread()
    if unwind and in_main and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _unwinding_sigterm)
    alive = _alive_check(pid)
    # PDEATHSIG fires when the parent *thread* that started us exits, so it is only right when
    # the parent is the watched process and that thread lives as long as it needs us (DataLoader
    # workers); set before the check below so that a parent dying in between is still seen.
    if pdeathsig and os.getppid() == pid:
        _set_pdeathsig(signal.SIGTERM)

    def end() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(grace)
        finally:
            os._exit(128 + signal.SIGTERM)

    if not alive():
        end()

    def poll() -> None:
        while alive():
            time.sleep(interval)
        end()

    threading.Thread(target=poll, name=f"watch-parent-{pid}", daemon=True).start()
