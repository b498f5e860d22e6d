"""Pages only render: app.py and screens/ must not import the ML stack or SQLAlchemy (they call services)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


FORBIDDEN = {"torch", "torchvision", "transformers", "timm", "captum", "sqlalchemy"}
UI_FILES = sorted([REPO_ROOT / "app.py", *(REPO_ROOT / "screens").glob("*.py")])


def imported_roots(path: Path) -> set[str]:
    """Top-level package of every import in the file, at any depth (functions and TYPE_CHECKING blocks too)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
            "__import__",
            "import_module",
        ):
            roots |= {a.value.split(".")[0] for a in node.args[:1] if isinstance(a, ast.Constant)}
    return roots


def test_there_are_pages_to_check():
    assert (REPO_ROOT / "screens" / "classify.py") in UI_FILES


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_ui_file_does_not_import_ml_or_sql(path: Path):
    bad = imported_roots(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}: call a service function instead"
