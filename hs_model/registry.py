"""Model versions on disk (`<root>/<version>/weights.safetensors + card.json`) and their records in the database.

A version folder is written once, atomically (a hidden temporary folder renamed into place), and never
changed after; the database holds its hash, its card and the append-only log of activations. Loading a
version checks the files against the hash the database recorded, so a swapped or edited file is refused.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.model_versions import activate_model_version, active_model_version, list_model_versions, register_model_version
from db.models import ModelActivation, ModelVersion
from db.queries import add_audit_event
from hs_model.checkpoint import CARD, WEIGHTS, CheckpointError, ModelCard, read_card, save_checkpoint, sha256_file
from hs_model.config import DEFAULT_MODEL_DIR, REPO_ROOT

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 3600  # a temporary folder this old belongs to a crashed writer


def registry_root() -> Path:
    """Where model versions live: env ``HS_MODEL_REGISTRY`` or ``<repo>/var/models``."""
    return Path(os.environ.get("HS_MODEL_REGISTRY") or REPO_ROOT / "var" / "models")


def shipped_model_dir() -> Path:
    """The shipped default model: env ``HS_MODEL_DIR`` (as the app reads it) or ``assets/model``."""
    return Path(os.environ.get("HS_MODEL_DIR") or DEFAULT_MODEL_DIR)


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


def write_version(tensors: Mapping[str, Any], card: ModelCard, root: Path | None = None) -> tuple[Path, ModelCard]:
    """Write a new version folder atomically: everything goes to a hidden folder first, renamed when complete.

    Raises:
        FileExistsError: A version with this id already exists under the root.
    """
    root = root or registry_root()
    root.mkdir(parents=True, exist_ok=True)
    _sweep_stale(root)
    final = root / card.version
    if final.exists():
        raise FileExistsError(f"Model version {card.version} already exists in {root}.")
    tmp = root / f"{_TMP_PREFIX}{card.version}-{uuid.uuid4().hex[:8]}"
    try:
        card = save_checkpoint(tmp, dict(tensors), card)
        os.rename(tmp, final)  # atomic on one filesystem; readers never see a half-written version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, card


def remove_version_folder(folder: Path) -> None:
    """Undo `write_version` when the database refused the version (only ever used before registration)."""
    shutil.rmtree(folder, ignore_errors=True)


def _copy_into_registry(src: Path, version: str, root: Path) -> Path:
    """Copy a shipped model folder into the registry (as it is now: later releases do not change history)."""
    dest = root / version
    want = folder_digest(src)
    if dest.exists():
        if folder_digest(dest) != want:
            raise CheckpointError(f"{dest} exists with other weights than {src}; move it away or rename the version.")
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{_TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name in (WEIGHTS, CARD):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        if folder_digest(tmp) != want:
            raise CheckpointError(f"{src} changed while it was being copied; try again.")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _zero_shot_folder(root: Path) -> Path:
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


# -- database -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionRecord:
    """A registered version as plain data."""

    id: str
    path: Path
    sha256: str
    parent_id: str | None
    status: str
    created_at: datetime
    created_by: int | None
    card: dict[str, Any]
    metrics: dict[str, Any]

    @classmethod
    def of(cls, row: ModelVersion) -> VersionRecord:
        return cls(
            row.id,
            Path(row.path),
            row.sha256,
            row.parent_id,
            row.status,
            row.created_at,
            row.created_by,
            dict(row.card or {}),
            dict(row.metrics or {}),
        )

    @property
    def gate(self) -> dict[str, Any]:
        """The evaluation gate's verdict recorded at creation (empty for the shipped model)."""
        return dict(self.metrics.get("gate") or {})


def register_folder(
    session: Session, folder: Path, *, created_by: int | None = None, metrics: Mapping[str, Any] | None = None
) -> VersionRecord:
    """Record a version folder (its card, metrics and hash) as a ``candidate``."""
    card = read_card(folder)
    row = register_model_version(
        session,
        version_id=card.version,
        path=str(folder.resolve()),
        sha256=folder_digest(folder),
        parent_id=card.parent,
        card=_json_card(card),
        metrics=dict(metrics if metrics is not None else card.metrics),
        created_by=created_by,
    )
    add_audit_event(
        session, action="model_registered", user_id=created_by, detail={"version_id": card.version, "kind": card.kind}
    )
    return VersionRecord.of(row)


def _json_card(card: ModelCard) -> dict[str, Any]:
    import json

    return json.loads(card.to_json())


def ensure_default_registered(session: Session, root: Path | None = None, shipped: Path | None = None) -> VersionRecord:
    """With no version in the database, register and activate the shipped model (zero-shot when none is installed).

    Returns:
        The active version (existing or just registered).
    """
    active = active_model_version(session)
    if active is not None:
        return VersionRecord.of(active)
    versions = list_model_versions(session)
    if versions:  # registered but never activated (e.g. an interrupted first start): activate the oldest
        first = min(versions, key=lambda v: v.created_at)
        activate_model_version(session, first.id, reason="first version")
        return VersionRecord.of(first)
    root = root or registry_root()
    shipped = shipped or shipped_model_dir()
    if (shipped / CARD).is_file():
        folder = _copy_into_registry(shipped, read_card(shipped).version, root)
    else:
        log.info("no shipped model in %s: registering the zero-shot model as the first version", shipped)
        folder = _zero_shot_folder(root)
    record = register_folder(session, folder)
    activate_model_version(session, record.id, reason="shipped default: first version")
    return record


def get_version(session: Session, version_id: str) -> VersionRecord:
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise LookupError(f"There is no model version {version_id!r}.")
    return VersionRecord.of(row)


def lineage_root(session: Session, record: VersionRecord) -> VersionRecord:
    """The nearest ancestor that is not a fine-tune (the shipped or a fully trained model): the default base of
    a fine-tune, which then trains on all reviewed decisions at once instead of compounding runs over the same
    decisions (measured: a second run on top of the first lost 3.4 benchmark points)."""
    seen = {record.id}
    while record.card.get("kind") == "fine-tuned" and record.parent_id and record.parent_id not in seen:
        record = get_version(session, record.parent_id)
        seen.add(record.id)
    return record


def active_version(session: Session) -> VersionRecord | None:
    row = active_model_version(session)
    return VersionRecord.of(row) if row is not None else None


def list_versions(session: Session) -> list[VersionRecord]:
    """All versions, newest first."""
    return [VersionRecord.of(v) for v in list_model_versions(session)]


def verify(record: VersionRecord) -> Path:
    """The version's folder after checking its files against the database's hash.

    Raises:
        CheckpointError: Missing folder or a file whose hash differs from the recorded one.
    """
    folder = record.path
    try:
        digest = folder_digest(folder)
    except CheckpointError:
        raise CheckpointError(f"The files of model version {record.id} are missing from {folder}.") from None
    if digest != record.sha256:
        raise CheckpointError(
            f"The files of model version {record.id} do not match the hash recorded when it was registered "
            f"(expected {record.sha256[:12]}…, found {digest[:12]}…): they were changed; refusing to load them."
        )
    return folder


def load_version(session: Session, version_id: str):
    """Card and tensors of a registered version, hash-checked against the database (empty tensors: zero-shot)."""
    from hs_model.checkpoint import load_checkpoint

    record = get_version(session, version_id)
    folder = verify(record)
    expected = record.sha256 if (folder / WEIGHTS).is_file() else None
    return load_checkpoint(folder, expected_sha256=expected)


def activate(session: Session, version_id: str, *, user_id: int | None, username: str | None, reason: str) -> None:
    """Make a (hash-checked) version the active one: an appended activation plus a ``model_change`` audit event."""
    verify(get_version(session, version_id))
    activate_model_version(session, version_id, user_id=user_id, username=username, reason=reason)


ROLLBACK_PREFIX = "roll back"


def previous_active(session: Session) -> str | None:
    """The version a roll back returns to, or None.

    The activation log is replayed as a stack: an activation pushes its version; a roll back (reason
    starting with ``ROLLBACK_PREFIX`` and returning to the version below the top) pops. So v1, v2, v3,
    roll back, roll back goes v3 -> v2 -> v1 rather than toggling between the last two.
    """
    stack: list[str] = []
    for version_id, reason in session.execute(
        select(ModelActivation.version_id, ModelActivation.reason).order_by(ModelActivation.id)
    ):
        if len(stack) >= 2 and stack[-2] == version_id and (reason or "").startswith(ROLLBACK_PREFIX):
            stack.pop()
        elif not stack or stack[-1] != version_id:
            stack.append(version_id)
    return stack[-2] if len(stack) >= 2 else None
