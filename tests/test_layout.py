"""The layout reads as the pipeline (issue 22): stage folders whose imports go one way, no import
circle (counting imports inside functions too), no module over 600 lines, and the models package
standing alone."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 600
# Stage folders, lowest first: a folder imports only from folders before it (and the shared modules
# at the package's top: atomic, errors, paths, ui, runtime, lifecycle). commands/ and cli.py come last.
ORDER = ["dfdc_models", "infra", "scale", "faces", "scan", "evaluate", "report", "train", "commands"]


def _modules() -> dict[str, Path]:
    out = {}
    for top, name in (("dfdc_cli", "dfdc_cli"), ("models", "dfdc_models")):
        for p in (REPO / top).rglob("*.py"):
            parts = [name, *p.relative_to(REPO / top).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project's modules it imports, at its top or inside functions."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        is_pkg = p.name == "__init__.py"
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    absm = ".".join(base + ([node.module] if node.module else []))
                else:
                    absm = node.module or ""
                for a in node.names:
                    sub = f"{absm}.{a.name}"
                    target = sub if sub in mods else absm
                    if target in mods and target != m:
                        edges[m].add(target)
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in mods and a.name != m)
    return edges


def _stage(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "dfdc_models":
        return "dfdc_models"
    if len(parts) >= 2 and parts[1] in ORDER:
        return parts[1]
    if len(parts) >= 2 and parts[1] in ("cli", "__main__"):
        return "commands"
    return "infra"  # the package itself and the shared modules at its top


def test_no_import_circle():
    edges = _imports(_modules())
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t] if t in path else [m, t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_stage_folders_import_one_way():
    edges = _imports(_modules())
    wrong = []
    for m, targets in edges.items():
        for t in targets:
            if t == "dfdc_cli":  # the package's __version__
                continue
            if ORDER.index(_stage(t)) > ORDER.index(_stage(m)):
                wrong.append(f"{m} ({_stage(m)}) imports {t} ({_stage(t)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_over_600_lines():
    big = {str(p.relative_to(REPO)): n for p in _modules().values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big


def test_the_models_package_imports_nothing_of_the_cli():
    edges = _imports(_modules())
    assert not [(m, t) for m, ts in edges.items() if m.startswith("dfdc_models") for t in ts
                if t.startswith("dfdc_cli")]


def test_no_module_imports_another_modules_private_names():
    """A name used across modules is part of a module's interface: it has no leading underscore."""
    mods = _modules()
    crossing = []
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("dfdc_cli", "dfdc_models"):
                crossing += [f"{m} imports {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossing, "\n".join(crossing)
