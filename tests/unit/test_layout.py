"""The tree keeps production code apart from the local runtime.

``dags/``, ``include/`` and ``plugins/`` are what a production Airflow runs (compose
mounts exactly those); ``local_runtime/`` only serves this machine (embedded
PostgreSQL, local Airflow, stand-ins, world generator, benchmark). Production code
must never import it, not even lazily inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("dags", "include", "plugins")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__",
        ) and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value))
    return found


def production_files() -> list[Path]:
    return sorted(p for top in PRODUCTION if (ROOT / top).is_dir() for p in (ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("path", production_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_production_never_imports_the_local_runtime(path: Path) -> None:
    local = sorted(m for m in imported_modules(path) if m == "local_runtime" or m.startswith("local_runtime."))
    assert not local, f"{path.relative_to(ROOT)} imports {local}: production code must not need the local runtime"


def test_the_guard_sees_a_lazy_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from local_runtime.standins import storage\n    return storage\n")
    assert "local_runtime.standins" in imported_modules(bad)
