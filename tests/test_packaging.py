"""The package as a user installs it: a wheel built from this tree, installed into a fresh virtual
environment, run from a folder that has nothing to do with the project (issue 22).

The wheel is built once per test session (offline: the build uses the installed setuptools, and the
venv reuses the installed torch & co. through ``--system-site-packages``; the wheel itself goes in
with ``--no-deps``), under a file lock so that pytest-xdist workers share it.

The three collisions a top-level ``models`` package caused: a user's ``models.py`` in the working
folder, a user's ``models/`` package there, and another distribution that ships a top-level
``models`` (installed over ours, then uninstalled).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_folder():
    """The package list is explicit (models/ installs as dfdc_models), so a new stage folder must be
    named there, or the wheel would silently lack it."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "dfdc_cli").rglob("__init__.py")}
    found |= {".".join(("dfdc_models", *p.parent.relative_to(REPO / "models").parts))
              for p in (REPO / "models").rglob("__init__.py")}
    assert mapping == {"dfdc_models": "models"}
    assert listed == found
    assert not [p for p in listed if p.split(".")[0] == "models"]  # nothing under a generic import name


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _build_wheel(dest: Path) -> Path:
    """``pip wheel`` of a copy of the tree (a build writes build/ and *.egg-info next to the sources)."""
    src = dest / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("dfdc_cli", "models"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dest / "dist"), str(src)])
    (wheel,) = (dest / "dist").glob("deepfake-*.whl")
    return wheel


def _venv(dest: Path, wheel: Path) -> Path:
    venv = dest / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    py = venv / "bin" / "python"
    # --ignore-installed: a development install of deepfake outside the venv is neither used nor touched
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)])
    return venv


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, venv): built and installed once per session, shared by the xdist workers."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's folder, above the workers' own
    root = shared / "packaging"
    with FileLock(str(shared / "packaging.lock")):
        done = root / "done.json"
        if not done.exists():
            if root.exists():
                shutil.rmtree(root)
            root.mkdir()
            wheel = _build_wheel(root)
            venv = _venv(root, wheel)
            done.write_text(json.dumps({"wheel": str(wheel), "venv": str(venv)}))
        info = json.loads(done.read_text())
    return Path(info["wheel"]), Path(info["venv"])


@pytest.fixture
def user_dir(tmp_path) -> Path:
    """A working folder unrelated to the project."""
    d = tmp_path / "someone-elses-project"
    d.mkdir()
    return d


def _env(tmp_path: Path, venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["DEEPFAKE_DATA_DIR"] = str(tmp_path / "data")
    env["DEEPFAKE_CACHE_DIR"] = str(tmp_path / "cache")
    env["COLUMNS"] = "80"
    return env


def _where(venv: Path, cwd: Path, env: dict, module: str) -> str:
    """Where the venv's python finds ``module`` (without importing it: no torch start-up)."""
    out = _run([str(venv / "bin" / "python"), "-c", f"import importlib.util as u; print(u.find_spec({module!r}).origin)"],
               cwd=cwd, env=env)
    return out.stdout.strip()


def test_wheel_carries_what_scan_needs_and_no_generic_name(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"dfdc_cli", "dfdc_models"}
    assert "dfdc_models/builtin/builtin.json" in names
    assert [n for n in names if n.startswith("dfdc_models/builtin/") and n.endswith(".pt")]
    assert "dfdc_cli/train/recipes/defaults.toml" in names
    # every module of the tree is in the wheel
    tree = {str(p.relative_to(REPO)) for p in (REPO / "dfdc_cli").rglob("*.py")}
    tree |= {"dfdc_models/" + str(p.relative_to(REPO / "models")) for p in (REPO / "models").rglob("*.py")}
    assert tree <= set(names)


def test_installed_wheel_scans_a_video_from_an_unrelated_folder(installed, user_dir, tmp_path, carphone):
    _, venv = installed
    env = _env(tmp_path, venv)
    assert _where(venv, user_dir, env, "dfdc_cli").startswith(str(venv))
    assert _where(venv, user_dir, env, "dfdc_models").startswith(str(venv))
    clip = user_dir / "call.mp4"
    shutil.copy2(carphone, clip)
    out = subprocess.run([str(venv / "bin" / "deepfake"), "scan", clip.name, "--json", "scan.json"],
                         cwd=user_dir, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "call.mp4" in out.stdout and "the built-in model" in out.stderr
    res = json.loads((user_dir / "scan.json").read_text())
    (video,) = res["videos"]
    assert video["status"] == "ok" and video["n_faces"] >= 1 and video["verdict"] in ("FAKE", "REAL")
    assert res["builtin"] is True and res["tool"].startswith("deepfake ")


def test_a_users_models_py_does_not_shadow_the_package(installed, user_dir, tmp_path):
    _, venv = installed
    env = _env(tmp_path, venv)
    (user_dir / "models.py").write_text("raise SystemExit('the user models.py was imported')\n")
    py = str(venv / "bin" / "python")
    out = _run([py, "-m", "dfdc_cli", "--help"], cwd=user_dir, env=env)
    assert "scan" in out.stdout
    _run([py, "-c", "import dfdc_cli.cli"], cwd=user_dir, env=env)
    assert _where(venv, user_dir, env, "dfdc_models.store").startswith(str(venv))


def test_a_users_models_package_is_neither_used_nor_mixed_in(installed, user_dir, tmp_path):
    _, venv = installed
    env = _env(tmp_path, venv)
    pkg = user_dir / "models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("MINE = True\n")
    (pkg / "registry.py").write_text("raise SystemExit('the user models/registry.py was imported')\n")
    py = str(venv / "bin" / "python")
    out = _run([py, "-c", "import importlib.util as u, dfdc_cli.cli, models; "
                          "print(models.MINE, u.find_spec('dfdc_models.registry').origin)"], cwd=user_dir, env=env)
    mine, ours = out.stdout.split()
    assert mine == "True" and ours.startswith(str(venv))  # the user's models is theirs, ours is ours
    out = _run([str(venv / "bin" / "deepfake"), "models", "list"], cwd=user_dir, env=env)
    assert "Model registry" in out.stdout


def test_another_distribution_with_a_top_level_models_package(installed, tmp_path, user_dir):
    """Installing, then uninstalling, a distribution that ships ``models/registry.py`` changes nothing
    of ours (pip neither overwrites nor deletes our files)."""
    _, venv = installed
    env = _env(tmp_path, venv)
    other = tmp_path / "other"
    (other / "models").mkdir(parents=True)
    (other / "models" / "__init__.py").write_text("")
    (other / "models" / "registry.py").write_text("OTHER = True\n")
    (other / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "other-models"\nversion = "1.0"\n[tool.setuptools]\npackages = ["models"]\n')
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp_path / "otherdist"), str(other)])
    (whl,) = (tmp_path / "otherdist").glob("other_models-*.whl")
    py = str(venv / "bin" / "python")
    deepfake = str(venv / "bin" / "deepfake")
    ours = Path(_where(venv, user_dir, env, "dfdc_models.registry"))
    before = ours.read_bytes()
    try:
        out = _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(whl)], env=env)
        assert "overwrit" not in out.stderr.lower()
        assert ours.read_bytes() == before
        assert "Model registry" in _run([deepfake, "models", "list"], cwd=user_dir, env=env).stdout
    finally:
        _run([py, "-m", "pip", "uninstall", "-y", "-q", "other-models"], env=env)
    assert ours.read_bytes() == before
    assert "Model registry" in _run([deepfake, "models", "list"], cwd=user_dir, env=env).stdout
