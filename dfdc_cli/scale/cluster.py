"""Joining a Ray cluster for one command (``--ray local|auto|ADDRESS``) and describing what Ray gave up on.

Ray (an optional extra: ``pip install "deepfake[ray]"``) schedules the work; each stage maps its own
per-video jobs onto it, beside the stage: extraction in :mod:`dfdc_cli.faces.extract.cluster` (one
task per video, detector actors on GPUs), scans in :mod:`dfdc_cli.scan.cluster` (scan actors over
chunks of the videos). Job arrays without Ray: :mod:`dfdc_cli.scale.shard`.

The tube store (``--out``) and the cache folder must be on a filesystem every node mounts at the
same path (NFS, Lustre, ...): tasks write the store entries there and the driver indexes them.
The GPU path cannot be exercised without GPUs; the tests run the actor path with the detector on
the CPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from rich.markup import escape

from dfdc_cli.errors import UserError
from dfdc_cli.ui import warn

INSTALL = 'Ray is not installed: pip install "deepfake[ray]"  (needed for --ray)'


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


@contextlib.contextmanager
def connect(address: str, num_cpus: Optional[int] = None) -> Iterator[object]:
    """Join (or start) the Ray cluster for one command: ``local`` starts a cluster on this
    machine (``num_cpus`` of its cores; all by default) and stops it afterwards; ``auto`` joins
    the cluster that ``ray start`` runs here; anything else is a cluster address
    (``HOST:6379``, ``ray://HOST:10001``). A driver already connected (a test, a notebook) is
    used as it is.

    A local cluster is this command's own: its ports listen on the loopback address only, its
    session files (logs, sockets, spilled objects) go to a private temporary folder that is
    removed when it stops, and its workers run at this process's priority."""
    if address is not None and address.strip() == "local":
        with local_cluster() as temp_dir:
            with _connect("local", num_cpus, temp_dir) as ray:
                yield ray
        return
    with _connect(address, num_cpus, None) as ray:
        yield ray


@contextlib.contextmanager
def _connect(address: str, num_cpus: Optional[int], temp_dir: Optional[Path]) -> Iterator[object]:
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = (address or "").strip()
    if not address:
        raise UserError("--ray: give local, auto or a cluster address")
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, _node_ip_address=LOOPBACK, _temp_dir=str(temp_dir), **kw)
        else:
            ray.init(address=address, **kw)
    except Exception as exc:  # noqa: BLE001 -- Ray raises bare Exceptions (e.g. a node start timeout)
        ray.shutdown()  # (what a half-started local cluster started, before its folder goes)
        hint = " (start one with `ray start --head`)" if address == "auto" else ""
        raise UserError(f"--ray {address}: cannot join the Ray cluster{hint}: {first_line(exc)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


LOOPBACK = "127.0.0.1"
# Ray's servers (GCS, raylet, object manager, workers, agents) listen on the node's address, which
# is the machine's outward address unless Ray takes clusters to be off (its default on Windows and
# macOS): then it is the loopback address. Ray reads this when it is imported.
_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def local_cluster() -> Iterator[Path]:
    """The settings of a local cluster while it runs (:func:`connect`): loopback-only ports,
    workers at this process's priority (:func:`local_priority`), and a private temporary folder
    for Ray's session files, yielded, and removed (with a warning if it cannot be) at the end.
    The process's environment and Ray's setting are restored afterwards."""
    saved = {k: os.environ.get(k) for k in (_CLUSTERS_ENV, "RAY_worker_niceness")}
    local_priority()
    os.environ[_CLUSTERS_ENV] = "0"
    constants = _ray_constants()
    was = constants.ENABLE_RAY_CLUSTER if constants is not None else None
    if constants is not None:  # Ray imported before: the setting was read then
        constants.ENABLE_RAY_CLUSTER = False
    temp_dir = Path(tempfile.mkdtemp(prefix="deepfake-ray-", dir=_short_temp_root()))
    try:
        yield temp_dir
    finally:
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = was
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _remove_tree(temp_dir)


# Ray's Unix sockets live in <temp>/session_<date>_<time>_<pid>/sockets/plasma_store: about 64 bytes
# below the temporary folder, of the 107 a socket path may have.
_SOCKET_PATH_MAX, _SESSION_SUFFIX = 107, 64 + len("/deepfake-ray-12345678")


def _short_temp_root() -> Optional[str]:
    """The temporary folder (TMPDIR, ...) unless Ray's socket paths under it would be too long;
    then /tmp."""
    root = tempfile.gettempdir()
    if len(root.encode()) + _SESSION_SUFFIX > _SOCKET_PATH_MAX and os.path.isdir("/tmp"):
        return "/tmp"
    return None


def _ray_constants():
    """Ray's constants module when Ray is imported already, else None (read on import)."""
    return sys.modules.get("ray._private.ray_constants")


def _remove_tree(path: Path, tries: int = 5) -> None:
    """Remove ``path``; Ray's processes may still be closing their logs just after shutdown, so
    a failure is retried for a moment, then reported in one line."""
    err: Optional[OSError] = None
    for i in range(tries):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            err = exc
            time.sleep(0.2 * (i + 1))

    warn(escape(f"could not remove Ray's temporary folder {path}: {err.strerror or err}"))


def local_priority() -> None:
    """Ray starts its workers at niceness 15 (to keep its own daemons responsive): on a machine
    shared with other work they then get a fraction of the CPU that this command's local workers
    would. A local cluster is this command's own, so its workers run at the driver's priority
    (``RAY_worker_niceness`` set by the user wins)."""
    os.environ.setdefault("RAY_worker_niceness", "0")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_failure(exc: BaseException, tries: int) -> str:
    """One line for a task or actor that Ray gave up on."""
    ray = require_ray()
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, UserError):
        raise exc.cause
    what = type(exc).__name__
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.RayActorError)):
        return f"Ray worker died ({what}) in {tries} tries"
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return f"Ray worker killed for memory ({what}) in {tries} tries"
    return f"Ray: {what}: {first_line(exc)}"


def run_with(address: Optional[str], num_cpus: Optional[int], fn: Callable):
    """``fn()`` inside :func:`connect` when ``address`` is given, else as it is."""
    if address is None:
        return fn()
    with connect(address, num_cpus):
        return fn()
