"""The import contract of README's layout table, checked on the source (no imports run).

``ssl_models`` is torch only (no Ray, no sslpipe package); ``storage`` sits below everything and
imports no sslpipe package nor Ray; ``curation`` (numpy/faiss/torch algorithms) never imports ``pipelines`` nor Ray:
the Ray Data readers and stages live in ``pipelines`` (``pipelines.readers``, ``pipelines.embedding``). A module-level or
function-level import both count: a lazy import still ties the layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: package -> top-level modules it must never import
FORBIDDEN = {
    "ssl_models": {"ray", "curation", "pipelines", "storage"},
    "storage": {"ray", "curation", "pipelines", "ssl_models", "torch"},
    "curation": {"pipelines", "ray"},
}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if module.split(".")[0] in FORBIDDEN[package]:
                found.append(f"{path.relative_to(REPO)} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_the_layout_table_allows(package: str) -> None:
    assert violations(package) == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The contract test can fail: a lazy ``import ray`` inside a function is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import ray.data\n    from pipelines.config import load_config\n")
    assert imported_modules(probe) >= {"ray.data", "pipelines.config"}
