"""One device resolver and one precision vocabulary for every command (dfdc_cli.runtime)."""

from __future__ import annotations

import pytest
import torch

from dfdc_cli import runtime
from dfdc_cli.errors import UserError


def test_device_auto_cpu_and_errors():
    assert runtime.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert runtime.resolve_device(None) == runtime.resolve_device("auto")
    assert runtime.resolve_device(" CPU ") == "cpu"
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        runtime.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda:1: CUDA is not available"):
            runtime.resolve_device("cuda:1")


def test_precision_vocabulary():
    assert runtime.check_precision("off") == "fp32"  # recipes saved with train.amp = "off"
    assert runtime.check_precision("BF16") == "bf16"
    with pytest.raises(UserError, match="precision must be one of auto, fp32, bf16, fp16"):
        runtime.check_precision("int8")
    # a CPU always computes in fp32, whatever was asked
    for p in runtime.PRECISIONS:
        assert runtime.effective_precision("cpu", p) == "fp32"
        assert runtime.autocast_dtype("cpu", p) is None
    assert runtime.effective_precision("cuda", "auto") == "fp16"


def test_old_run_recipe_with_amp_is_read_as_precision(tmp_path):
    from dfdc_cli.train import recipe as recipes

    r = recipes.resolve_recipe(member="mc3_112")
    text = recipes.dumps_toml(r).replace('precision = "auto"', 'amp = "off"')
    assert 'amp = "off"' in text
    (tmp_path / "recipe.toml").write_text(text)
    back = recipes.load_recipe_file(tmp_path / "recipe.toml")
    assert back["train"]["precision"] == "off" and "amp" not in back["train"]
    recipes.validate_recipe(back)
    assert back["train"]["precision"] == "fp32"
