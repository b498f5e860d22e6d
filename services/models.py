"""Model versions for admins: list them, fine-tune on reviewed decisions, activate (or override the gate), roll back.

Every function checks the caller is an admin, except `active_model_dir` (every screen needs to know which
model to serve) and `new_reviewed_since_active` (a count, nothing personal).
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import model_versions
from db.engine import run_transaction
from db.models import User
from db.photos import default_photo_root
from db.queries import add_audit_event, find_user
from db.worklists import reviewed_examples
from hs_core.settings import get_settings
from hs_model.checkpoint import CheckpointError
from services import finetune, model_registry
from services.auth import Actor, refresh_actor, require_role
from services.errors import InvalidInput, NotFound, PermissionDenied, ServiceError
from services.finetune import FinetuneResult

if TYPE_CHECKING:  # hs_train.finetune trains with torch: imported only when a fine-tune runs
    from hs_model.predict import Classifier
    from hs_train.finetune import FinetuneConfig

log = logging.getLogger(__name__)

ADMIN = "admin"
MAX_REASON_LENGTH = 2000


class ModelIntegrityError(ServiceError):
    """A registered model's files are missing or do not match the hash recorded for them."""


@dataclass(frozen=True)
class VersionView:
    """One row of the versions table (plain data for the page)."""

    id: str
    kind: str
    status: str
    active: bool
    rollback_target: bool
    parent_id: str | None
    created_at: datetime
    created_by: str | None
    decisions: int | None
    heldout_top1: float | None  # HS4 top-1 of this version on its held-out reviewed decisions
    heldout_top1_before: float | None  # ... of the version it was compared with, on the same rows
    heldout_rows: int | None
    benchmark_top1: float | None  # HS4 top-1 on the fixed benchmark (HSCodeComp + ATLAS)
    benchmark_top1_before: float | None
    gate_passed: bool | None  # None: no gate (the shipped model)
    gate_reason: str


@dataclass(frozen=True)
class ActivationResult:
    """What an activation or roll back did."""

    version_id: str
    previous_id: str | None
    override: bool
    reason: str


def data_dir() -> Path:
    """The shared data folder (env ``HS_DATA_DIR``): its eval/ files are the gate's fixed benchmark."""
    return get_settings().data_dir


def _admin(session: Session, actor: Actor | None, action: str) -> Actor:
    return refresh_actor(session, require_role(actor, ADMIN, action=action))


def _view(
    record: model_versions.VersionRecord, active_id: str | None, rollback_to: str | None, users: dict[int | None, str]
) -> VersionView:
    gate = record.gate
    cand, before = gate.get("candidate") or {}, gate.get("active") or {}
    data = (record.card.get("training") or {}).get("data") or {}
    return VersionView(
        id=record.id,
        kind=str(record.card.get("kind") or ""),
        status=record.status,
        active=record.id == active_id,
        rollback_target=record.id == rollback_to,
        parent_id=record.parent_id,
        created_at=record.created_at,
        created_by=users.get(record.created_by) or (record.card.get("training") or {}).get("started_by"),
        decisions=data.get("count"),
        heldout_top1=cand.get("heldout"),
        heldout_top1_before=before.get("heldout"),
        heldout_rows=cand.get("heldout_rows"),
        benchmark_top1=cand.get("benchmark"),
        benchmark_top1_before=before.get("benchmark"),
        gate_passed=gate.get("activate") if gate else None,
        gate_reason=str(gate.get("reason") or ""),
    )


def list_versions(session: Session, actor: Actor | None) -> list[VersionView]:
    """All model versions, newest first, with their gate metrics; registers the shipped model on first use.

    Raises:
        PermissionDenied: Not an admin.
        ModelIntegrityError: The shipped model could not be registered (its files are unreadable).
    """
    _admin(session, actor, "manage model versions")
    try:
        model_registry.ensure_default_registered(session)
    except CheckpointError as exc:
        raise ModelIntegrityError(str(exc)) from None
    records = model_versions.list_versions(session)
    active = model_versions.active_version(session)
    rollback_to = model_versions.previous_active(session)
    ids = {r.created_by for r in records if r.created_by is not None}
    users: dict[int | None, str] = (
        {u.id: u.username for u in session.scalars(select(User).where(User.id.in_(ids)))} if ids else {}
    )
    return [_view(r, active.id if active else None, rollback_to, users) for r in records]


def new_reviewed_since_active(session: Session) -> int:
    """How many approved or corrected decisions the active version has not been trained on (all, for the shipped one)."""
    active = model_versions.active_version(session)
    data = ((active.card.get("training") or {}).get("data") or {}) if active else {}
    last = int(data.get("last_decision_id") or 0)
    return sum(1 for ex in reviewed_examples(session) if ex.decision_id > last)


def run_finetune(
    session_factory: sessionmaker[Session],
    actor: Actor | None,
    classifier: Classifier,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    *,
    base: str | None = None,
    cfg: FinetuneConfig | None = None,
    data: Path | None = None,
) -> FinetuneResult:
    """Fine-tune on every reviewed decision and let the evaluation gate decide whether the new version goes live.

    Runs for up to a minute on CPU and opens its own short transactions (none is held while training).
    `on_epoch` gets ``{"epoch", "epochs", "loss", "val_top1", "seconds"}`` after each epoch; an exception
    raised there stops the run with nothing written.

    Raises:
        PermissionDenied: Not an admin.
        InvalidInput: Too few reviewed decisions, unknown base version, or another fine-tune running.
        ModelIntegrityError: The base or active version's files fail their hash check.
    """
    actor = require_role(actor, ADMIN, action="fine-tune the model")
    run_transaction(session_factory, lambda session: refresh_actor(session, actor))
    return _finetune(
        session_factory, classifier, actor.username, actor.user_id, on_epoch, base=base, cfg=cfg, data=data
    )


def run_finetune_as_operator(
    session_factory: sessionmaker[Session],
    classifier: Classifier,
    started_by: str | None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    *,
    base: str | None = None,
    data: Path | None = None,
) -> FinetuneResult:
    """The ``finetune`` command: whoever can reach the database from a shell acts as an admin.

    `started_by` names the admin recorded as having started it (checked like a signed-in admin); without it
    the run is recorded as ``cli:<operating-system user>``.

    Raises:
        PermissionDenied: `started_by` is not an active admin.
        InvalidInput, ModelIntegrityError: As `run_finetune`.
    """
    if started_by is None:
        return _finetune(session_factory, classifier, f"cli:{getpass.getuser()}", None, on_epoch, base=base, data=data)

    def admin(session: Session) -> Actor:
        user = find_user(session, started_by)
        if user is None or not user.active or user.role != ADMIN:
            raise PermissionDenied(f"{started_by!r}: there is no active admin by that name.")
        return Actor.from_user(user)

    actor = run_transaction(session_factory, admin)
    return run_finetune(session_factory, actor, classifier, on_epoch, base=base, data=data)


def _finetune(
    session_factory: sessionmaker[Session],
    classifier: Classifier,
    started_by: str,
    user_id: int | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    *,
    base: str | None,
    cfg: FinetuneConfig | None = None,
    data: Path | None = None,
) -> FinetuneResult:
    from hs_train.finetune import FinetuneError

    try:
        result = finetune.run(
            session_factory,
            classifier,
            started_by=started_by,
            user_id=user_id,
            base_id=base,
            cfg=cfg,
            data_dir=data or data_dir(),
            photo_root=default_photo_root(),
            on_epoch=on_epoch,
        )
    except FinetuneError as exc:
        raise InvalidInput(str(exc)) from None
    except CheckpointError as exc:
        raise ModelIntegrityError(str(exc)) from None
    log.info("fine-tune by %s: %s (%s)", started_by, result.version_id, result.reason)
    return result


def _clean_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if len(text) > MAX_REASON_LENGTH:
        raise InvalidInput(f"The reason has {len(text):,} characters; the limit is {MAX_REASON_LENGTH:,}.")
    return text


def activate(
    session: Session, actor: Actor | None, version_id: str, reason: str = "", override: bool = False
) -> ActivationResult:
    """Serve `version_id` from now on. A version the evaluation gate kept back needs ``override`` and a reason.

    Raises:
        PermissionDenied: Not an admin.
        NotFound: No such version.
        InvalidInput: Already active, kept back by the gate without override, or an override without a reason.
        ModelIntegrityError: The version's files do not match their recorded hash.
    """
    actor = _admin(session, actor, "activate model versions")
    reason = _clean_reason(reason)
    try:
        record = model_versions.get_version(session, version_id)
    except LookupError:
        raise NotFound(f"There is no model version {version_id!r}.") from None
    current = model_versions.active_version(session)
    if current is not None and current.id == record.id:
        raise InvalidInput(f"{record.id} is already the active version.")
    gate = record.gate
    failed = bool(gate) and not gate.get("activate", False)
    if failed and not override:
        raise InvalidInput(
            f"{record.id} did not pass the evaluation gate ({gate.get('reason', 'no reason recorded')}). "
            "To activate it anyway, choose override and give a reason."
        )
    if override and not reason:
        raise InvalidInput("Give a reason for overriding the evaluation gate.")
    text = f"override: {reason}" if override else (reason or "activated by an admin")
    try:
        model_registry.activate(session, record.id, user_id=actor.user_id, username=actor.username, reason=text)
    except CheckpointError as exc:
        raise ModelIntegrityError(str(exc)) from None
    if override:
        add_audit_event(
            session,
            action="model_gate_override",
            user_id=actor.user_id,
            username=actor.username,
            detail={"version_id": record.id, "reason": reason, "gate_reason": gate.get("reason", "")},
        )
    log.info("%s activated %s (%s)", actor.username, record.id, text)
    return ActivationResult(record.id, current.id if current else None, override, text)


def rollback(session: Session, actor: Actor | None, reason: str = "") -> ActivationResult:
    """Go back to the version that was active before the current one; the reason is required and recorded.

    Raises:
        PermissionDenied: Not an admin.
        InvalidInput: There is no earlier version, or no reason.
        ModelIntegrityError: The earlier version's files do not match their recorded hash.
    """
    actor = _admin(session, actor, "roll back the model")
    reason = _clean_reason(reason)
    if not reason:
        raise InvalidInput("Give a reason for the roll back.")
    current = model_versions.active_version(session)
    target = model_versions.previous_active(session)
    if current is None or target is None:
        raise InvalidInput("There is no earlier version to roll back to.")
    text = f"{model_versions.ROLLBACK_PREFIX} from {current.id}: {reason}"
    try:
        model_registry.activate(session, target, user_id=actor.user_id, username=actor.username, reason=text)
    except CheckpointError as exc:
        raise ModelIntegrityError(str(exc)) from None
    log.info("%s rolled back from %s to %s", actor.username, current.id, target)
    return ActivationResult(target, current.id, False, text)


def active_model_dir(session: Session) -> Path | None:
    """The folder of the active version, hash-checked; None while no version is registered (use the default).

    Cheap enough for every rerun: the file hash is cached until the file changes.

    Raises:
        ModelIntegrityError: The active version's files are missing or were changed since registration.
    """
    record = model_versions.active_version(session)
    if record is None:
        return None
    try:
        return model_registry.verify(record)
    except CheckpointError as exc:
        raise ModelIntegrityError(str(exc)) from None


__all__ = [
    "ActivationResult",
    "ModelIntegrityError",
    "NotFound",
    "VersionView",
    "activate",
    "active_model_dir",
    "data_dir",
    "list_versions",
    "new_reviewed_since_active",
    "rollback",
    "run_finetune",
    "run_finetune_as_operator",
]
