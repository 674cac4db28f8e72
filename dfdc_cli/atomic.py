"""Atomic file writes (they live in :mod:`dfdc_models.atomic`, which the model store uses without the CLI)."""

from dfdc_models.atomic import atomic_dir, atomic_path, write_json, write_text  # noqa: F401
