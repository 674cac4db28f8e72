"""Where the model store lives: ``data_dir()/models``. The data folder comes from platformdirs, or from
``$DEEPFAKE_DATA_DIR`` (which the CLI's global ``--data-dir`` sets), so the CLI and a library user of
:mod:`dfdc_models` find the same registered weights."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "deepfake"
ENV_DATA = "DEEPFAKE_DATA_DIR"


def data_dir() -> Path:
    """Persistent data: extracted training tubes and the model registry."""
    return Path(os.environ.get(ENV_DATA) or platformdirs.user_data_dir(APP)).expanduser()


def models_dir() -> Path:
    """The model registry's weights: one folder per imported or trained model."""
    return data_dir() / "models"
