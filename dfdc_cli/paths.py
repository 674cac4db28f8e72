"""Where the tool keeps its data and caches.

Defaults come from platformdirs; each can be overridden by an environment variable (which the
global ``--data-dir`` / ``--cache-dir`` options set), so every subcommand and the library agree.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

# The data folder and the model store's place are the model package's (it is used without the CLI).
from dfdc_models.paths import APP, ENV_DATA, data_dir, models_dir  # noqa: F401

ENV_CACHE = "DEEPFAKE_CACHE_DIR"


def cache_dir() -> Path:
    """Re-creatable data: the tubes `scan` extracts on the fly."""
    return Path(os.environ.get(ENV_CACHE) or platformdirs.user_cache_dir(APP)).expanduser()


def default_tubes_dir() -> Path:
    """Default output of `deepfake extract` and default `--index` of train/eval."""
    return data_dir() / "tubes"


def scan_tubes_dir() -> Path:
    """Tube store that `deepfake scan` fills and reuses."""
    return cache_dir() / "scan-tubes"


def scan_scores_dir() -> Path:
    """Member scores of scanned tubes (:mod:`dfdc_cli.scan.cache`): what makes a scan resumable."""
    return cache_dir() / "scan-scores"


def runs_dir() -> Path:
    """Training runs (checkpoints, logs, resolved recipes)."""
    return data_dir() / "runs"
