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
    loaded = _modules_after("import models, models.archs, models.registry, models.store, models.pretrained, "
                            "models.builtin, models.synthetic, models.tiny")
    assert "torch" in loaded  # (the import above did load the networks' side)
    assert not [m for m in loaded if m == "dfdc_cli" or m.startswith("dfdc_cli.")]


def test_registry_and_cli_help_import_no_torch():
    loaded = _modules_after("import models.archs, models.specs, dfdc_cli.cli")
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "torchvision", "timm")]


def test_one_error_class_for_the_cli_and_the_models():
    from dfdc_cli.errors import UserError
    from models.errors import UserError as ModelUserError

    assert UserError is ModelUserError  # the CLI's one-line error handling catches what models raise
