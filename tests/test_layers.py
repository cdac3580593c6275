"""The layers cannot drift: the import-linter contract in pyproject.toml, plus what it cannot express.

Import-linter sees external packages only at the top level (`ray`, not `ray.serve`), so the checks on
Ray's subpackages scan every module's imports here, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "seqctr"
RAY_INTERNALS = ("ray._private", "ray.serve._private", "ray.train._internal", "ray.data._internal", "ray._raylet")


def imported_modules(source: str) -> set[str]:
    """Every module a source file imports, at any depth (`from a import b` counts as a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(package: Path, rule: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        for name in sorted(imported_modules(path.read_text())):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(package.parent)} imports {name} ({rule})")
    return found


def test_import_linter_contract_is_kept(monkeypatch):
    monkeypatch.chdir(REPO)
    assert lint_imports(config_filename=str(REPO / "pyproject.toml")) == 0  # prints the broken contract


def test_no_ray_internals_anywhere():
    assert violations(PACKAGE, "private Ray API", RAY_INTERNALS) == []


def test_platform_never_imports_ray_serve_and_only_cli_imports_typer():
    assert violations(PACKAGE / "platform", "platform is shared by every stage", ("ray.serve",)) == []
    outside_cli = [p for p in PACKAGE.iterdir() if p.is_dir() and p.name not in ("cli", "__pycache__")]
    assert [v for p in outside_cli for v in violations(p, "only seqctr.cli imports typer", ("typer",))] == []
    assert [v for v in violations(PACKAGE, "typer", ("typer",)) if "seqctr/cli/" not in v] == []


@pytest.mark.parametrize(
    "source",
    ["import ray._private.utils", "def f():\n    from ray.serve._private.api import serve_start\n"],
)
def test_the_scan_sees_imports_at_any_depth(tmp_path, source):
    (tmp_path / "mod.py").write_text(source)
    assert violations(tmp_path, "planted", RAY_INTERNALS)
