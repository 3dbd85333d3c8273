"""Imports point one way: gateway -> channels, llm, speech -> models; speech imports nothing of ours."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"gateway", "speech", "llm", "channels", "models"}
ALLOWED = {
    "gateway": OURS,
    "channels": {"channels", "models"},
    "llm": {"llm", "models"},
    "speech": {"speech"},
    "models": {"models"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    wrong = {f"{path.relative_to(ROOT)} imports {sorted(_imports(path) - ALLOWED[package])}"
             for path in (ROOT / package).rglob("*.py") if _imports(path) - ALLOWED[package]}
    assert not wrong
