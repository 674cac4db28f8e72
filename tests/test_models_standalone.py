"""The model package stands on its own (no import of the CLI), and reading the architecture registry (as
the CLI's help does) imports no torch, so ``deepfake --help`` stays instant."""

from __future__ import annotations

import json
import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_models_imports_no_cli_module():
    loaded = _modules_after("import dfdc_models, dfdc_models.archs, dfdc_models.registry, dfdc_models.store, dfdc_models.pretrained, "
                            "dfdc_models.builtin, dfdc_models.synthetic, dfdc_models.tiny")
    assert "torch" in loaded  # (the import above did load the networks' side)
    assert not [m for m in loaded if m == "dfdc_cli" or m.startswith("dfdc_cli.")]


def test_registry_and_cli_help_import_no_torch():
    loaded = _modules_after("import dfdc_models.archs, dfdc_models.specs, dfdc_cli.cli")
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "torchvision", "timm")]


def test_one_error_class_for_the_cli_and_the_models():
    from dfdc_cli.errors import UserError
    from dfdc_models.errors import UserError as ModelUserError

    assert UserError is ModelUserError  # the CLI's one-line error handling catches what models raise


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from dfdc_models.atomic import _UMASK, atomic_dir, write_text

    write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "entry") as d:
        (d / "f").write_text("y")
    # not mkstemp's private 0600 / mkdtemp's 0700: what open() and mkdir() give under this umask
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o666 & ~_UMASK
    assert stat.S_IMODE(os.stat(tmp_path / "entry").st_mode) == 0o777 & ~_UMASK
    assert (tmp_path / "a.txt").read_text() == "x" and (tmp_path / "entry" / "f").read_text() == "y"
