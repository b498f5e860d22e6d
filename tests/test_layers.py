"""The layers' import rules: screens render, services orchestrate, hs_model / hs_train / db do the work.

    screens/, app.py  ->  services/  ->  hs_model/ (inference), db/ (storage)  ->  hs_core/ (settings, nomenclature)
                                     ->  hs_train/ (training: only inside the fine-tune use case, imported lazily)

Every import counts, at any depth (inside functions and TYPE_CHECKING blocks too), except where a rule says
"at module level". The command-line entry points (``hs_model/__main__.py``, ``db/__main__.py``) are composition
roots: they wire the layers together (``python -m db users create`` calls the auth service) and are exempt.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ML = {"torch", "torchvision", "transformers", "timm", "captum"}


def imported_roots(source: str, *, module_level_only: bool = False) -> set[str]:
    """Top-level package of every absolute import in `source` (function bodies too, unless `module_level_only`)."""
    tree = ast.parse(source)
    nodes = list(ast.iter_child_nodes(tree)) if module_level_only else list(ast.walk(tree))
    if module_level_only:  # module level includes `if` / `try` blocks, but not TYPE_CHECKING ones
        stack, nodes = nodes, []
        while stack:
            node = stack.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            nodes.append(node)
            if isinstance(node, ast.If | ast.Try):
                stack.extend(ast.iter_child_nodes(node))
    roots = set()
    for node in nodes:
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


def files(*parts: str) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        path = REPO_ROOT / part
        out += [path] if path.is_file() else sorted(p for p in path.rglob("*.py") if "migrations" not in p.parts)
    return out


# (files, forbidden top-level packages, module level only?)
RULES = {
    "hs_core imports no other layer and no ML or database library": (
        files("hs_core"),
        {"db", "services", "screens", "hs_model", "hs_train", "streamlit", "sqlalchemy", *ML},
        False,
    ),
    "hs_model (inference) imports neither db, services, streamlit nor training code": (
        [p for p in files("hs_model") if p.name != "__main__.py"],
        {"db", "services", "screens", "streamlit", "hs_train", "sqlalchemy"},
        False,
    ),
    "hs_train imports neither the app (services, screens, streamlit) nor the database": (
        files("hs_train"),
        {"db", "services", "screens", "streamlit", "sqlalchemy"},
        False,
    ),
    "db imports neither services nor the model packages": (
        [p for p in files("db") if p.name != "__main__.py"],
        {"services", "screens", "streamlit", "hs_model", "hs_train", *ML},
        False,
    ),
    "services never import screens or streamlit, and training code only lazily": (
        files("services"),
        {"screens", "streamlit", "hs_train"},
        True,
    ),
    "screens and app.py import neither the ML stack, SQLAlchemy nor the model packages (they call services)": (
        files("app.py", "screens"),
        {*ML, "sqlalchemy", "hs_model", "hs_train"},
        False,
    ),
}
CASES = [(rule, path) for rule, (paths, _, _) in RULES.items() for path in paths]


def test_every_layer_has_files_to_check():
    for rule, (paths, _, _) in RULES.items():
        assert paths, rule


@pytest.mark.parametrize(("rule", "path"), CASES, ids=[f"{p.relative_to(REPO_ROOT)}" for _, p in CASES])
def test_imports_follow_the_layer_rules(rule: str, path: Path):
    _, forbidden, module_level_only = RULES[rule]
    bad = imported_roots(path.read_text(), module_level_only=module_level_only) & forbidden
    assert not bad, f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}: breaks '{rule}'"


def test_the_checker_sees_imports_inside_functions_and_type_checking_blocks():
    source = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from hs_train.finetune import FinetuneConfig
        def f():
            import torch.nn
            from db.models import User
        """
    )
    assert {"torch", "db", "hs_train"} <= imported_roots(source)
    assert "hs_train" not in imported_roots(source, module_level_only=True)
    assert "torch" not in imported_roots(source, module_level_only=True)


def test_the_app_modules_load_no_training_code():
    """Importing every screen and service (what the app imports) must not load hs_train."""
    modules = [f"services.{p.stem}" for p in files("services") if p.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'hs_train'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_the_nomenclature_loads_without_torch():
    code = "import sys, hs_core.nomenclature as n; n.HsCode.parse('6109.10'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_the_readme_documents_every_setting():
    from hs_core.settings import VARIABLES

    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name for name in VARIABLES if f"| `{name}` |" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"


def test_settings_are_read_from_the_environment_when_it_changes(monkeypatch, tmp_path):
    from hs_core.settings import SettingsError, get_settings

    monkeypatch.setenv("HS_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HS_DATA_DIR", "")  # empty = unset, for every variable alike
    assert get_settings().model_dir == tmp_path
    assert get_settings().data_dir.name == "data"
    monkeypatch.setenv("HS_TORCH_THREADS", "two")
    with pytest.raises(SettingsError, match="HS_TORCH_THREADS"):
        get_settings()
