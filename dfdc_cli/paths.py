"""Where the tool keeps its data and caches.

Defaults come from platformdirs; each can be overridden by an environment variable (which the
global ``--data-dir`` / ``--cache-dir`` options set), so every subcommand and the library agree.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "deepfake"
ENV_DATA = "DEEPFAKE_DATA_DIR"
ENV_CACHE = "DEEPFAKE_CACHE_DIR"


def data_dir() -> Path:
    """Persistent data: extracted training tubes and the model registry."""
    return Path(os.environ.get(ENV_DATA) or platformdirs.user_data_dir(APP)).expanduser()


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
    """Member scores of scanned tubes (:mod:`dfdc_cli.scorecache`): what makes a scan resumable."""
    return cache_dir() / "scan-scores"


def models_dir() -> Path:
    """The model registry's weights: one folder per imported or trained model."""
    return data_dir() / "models"


def runs_dir() -> Path:
    """Training runs (checkpoints, logs, resolved recipes)."""
    return data_dir() / "runs"
