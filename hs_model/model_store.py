"""Model versions on disk: ``<root>/<version>/weights.safetensors + card.json``, written once and never changed.

A version folder is written atomically (a hidden temporary folder renamed into place). The database records
each folder's hash (`services.model_registry`); `verify_folder` checks the files against it before loading, so a
swapped or edited file is refused. Nothing here touches the database.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hs_core.settings import get_settings
from hs_model.checkpoint import (
    CARD,
    PHOTO_PRECEDENTS_CARD,
    PHOTO_PRECEDENTS_INDEX,
    PRECEDENTS_CARD,
    PRECEDENTS_INDEX,
    WEIGHTS,
    CheckpointError,
    ModelCard,
    save_checkpoint,
    sha256_file,
)

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 3600  # a temporary folder this old belongs to a crashed writer


def store_root() -> Path:
    """Where model versions live: ``HS_MODEL_REGISTRY`` (default ``var/models``)."""
    return get_settings().model_registry


def shipped_model_dir() -> Path:
    """The shipped default model: ``HS_MODEL_DIR`` (default ``assets/model``)."""
    return get_settings().model_dir


def new_version_id(prefix: str = "ft") -> str:
    """A fresh, sortable, unique version id, e.g. ``ft-20261125-171900-3fa2``."""
    return f"{prefix}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


# -- files --------------------------------------------------------------------------------------------------------
def folder_digest(folder: Path) -> str:
    """The hash the database records for a version folder: of its weights, or of its card when it has none
    (the zero-shot model is a card alone)."""
    weights = folder / WEIGHTS
    target = weights if weights.is_file() else folder / CARD
    if not target.is_file():
        raise CheckpointError(f"No model files in {folder}.")
    stat = target.stat()
    return _cached_digest(str(target), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


@functools.lru_cache(maxsize=64)
def _cached_digest(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    # Keyed by what any write changes (ctime cannot be set back by a user), so the app can check every rerun.
    del size, mtime_ns, ctime_ns, inode
    return sha256_file(Path(path))


def _sweep_stale(root: Path) -> None:
    for tmp in root.glob(f"{_TMP_PREFIX}*"):
        try:
            if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def write_version(
    tensors: Mapping[str, Any], card: ModelCard, root: Path | None = None, companions: Sequence[Path] = ()
) -> tuple[Path, ModelCard]:
    """Write a new version folder atomically: everything goes to a hidden folder first, renamed when complete.

    Args:
        companions: files copied in beside the weights (a fine-tune's parent's precedent index).

    Raises:
        FileExistsError: A version with this id already exists under the root.
    """
    root = root or store_root()
    root.mkdir(parents=True, exist_ok=True)
    _sweep_stale(root)
    final = root / card.version
    if final.exists():
        raise FileExistsError(f"Model version {card.version} already exists in {root}.")
    tmp = root / f"{_TMP_PREFIX}{card.version}-{uuid.uuid4().hex[:8]}"
    try:
        card = save_checkpoint(tmp, dict(tensors), card)
        for src in companions:
            shutil.copy2(src, tmp / src.name)
        os.rename(tmp, final)  # atomic on one filesystem; readers never see a half-written version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, card


def precedent_files(folder: Path, head_independent: bool = False) -> list[Path]:
    """The precedent index files in a model folder: the text index's pair, then the photo index's pair (each pair
    both or none).

    Args:
        head_independent: only what a new head over the same towers can reuse: a text index of raw text-tower
            vectors (an index in the model's joint space belongs to the head that made it) and the photo index
            (the image tower's pooled vectors, always head-independent).
    """
    files = _pair(folder, PRECEDENTS_INDEX, PRECEDENTS_CARD)
    if files and head_independent:
        try:
            space = json.loads(files[1].read_text()).get("config", {}).get("space", "raw")
        except (OSError, ValueError):
            space = None
        if space != "raw":
            files = []
    return files + _pair(folder, PHOTO_PRECEDENTS_INDEX, PHOTO_PRECEDENTS_CARD)


def _pair(folder: Path, index: str, card: str) -> list[Path]:
    files = [folder / index, folder / card]
    return files if all(f.is_file() for f in files) else []


def remove_version_folder(folder: Path) -> None:
    """Undo `write_version` when the database refused the version (only ever used before registration)."""
    shutil.rmtree(folder, ignore_errors=True)


def copy_into_store(src: Path, version: str, root: Path) -> Path:
    """Copy a shipped model folder into the store (as it is now: later releases do not change history), with
    the precedent index shipped beside it (a copy made before the store carried indexes gets it added)."""
    dest = root / version
    want = folder_digest(src)
    if dest.exists():
        if folder_digest(dest) != want:
            raise CheckpointError(f"{dest} exists with other weights than {src}; move it away or rename the version.")
        _add_missing_index(src, dest)
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{_TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name in (WEIGHTS, CARD):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        for path in precedent_files(src):
            shutil.copy2(path, tmp / path.name)
        if folder_digest(tmp) != want:
            raise CheckpointError(f"{src} changed while it was being copied; try again.")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _add_missing_index(src: Path, dest: Path) -> None:
    """Give a stored copy of a shipped version the indexes that ship with the same weights, when it lacks them."""
    have = {p.name for p in precedent_files(dest)}
    files = [p for p in precedent_files(src) if p.name not in have]  # whole pairs: a pair is both files or none
    for path in files:  # each file lands whole (copy then rename); an index loads only when both are there
        tmp = dest / f"{_TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
        shutil.copy2(path, tmp)
        os.replace(tmp, dest / path.name)
    if files:
        log.info("precedent files %s of %s added to its stored copy %s", [p.name for p in files], src, dest)


def zero_shot_folder(root: Path) -> Path:
    from hs_model.config import TowerConfig
    from hs_model.predict import zero_shot_card

    card = zero_shot_card(TowerConfig.from_env())
    dest = root / card.version
    if not (dest / CARD).is_file():
        tmp = root / f"{_TMP_PREFIX}{card.version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        (tmp / CARD).write_text(card.to_json())
        try:
            os.rename(tmp, dest)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def verify_folder(folder: Path, expected_sha256: str, version_id: str) -> Path:
    """The folder after checking its files against the hash recorded when it was registered.

    Raises:
        CheckpointError: Missing folder or a file whose hash differs from the recorded one.
    """
    try:
        digest = folder_digest(folder)
    except CheckpointError:
        raise CheckpointError(f"The files of model version {version_id} are missing from {folder}.") from None
    if digest != expected_sha256:
        raise CheckpointError(
            f"The files of model version {version_id} do not match the hash recorded when it was registered "
            f"(expected {expected_sha256[:12]}…, found {digest[:12]}…): they were changed; refusing to load them."
        )
    return folder
