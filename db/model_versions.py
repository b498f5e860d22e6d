"""Model version records: register checkpoints, switch the active one (append-only activations)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ModelActivation, ModelVersion
from db.queries import add_audit_event


def register_model_version(
    session: Session,
    *,
    version_id: str,
    path: str,
    sha256: str,
    parent_id: str | None = None,
    card: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    created_by: int | None = None,
) -> ModelVersion:
    """Insert a model version as a ``candidate``; registering an existing id with the same hash returns it.

    Raises:
        ValueError: The id exists with a different file hash.
    """
    existing = session.get(ModelVersion, version_id)
    if existing is not None:
        if existing.sha256 != sha256:
            raise ValueError(f"model version {version_id} already registered with another checkpoint hash")
        return existing
    version = ModelVersion(
        id=version_id,
        path=path,
        sha256=sha256,
        parent_id=parent_id,
        card=dict(card or {}),
        metrics=dict(metrics or {}),
        status="candidate",
        created_by=created_by,
    )
    session.add(version)
    session.flush()
    return version


def active_model_version(session: Session) -> ModelVersion | None:
    """Return the version of the latest activation, or ``None`` if none was ever activated."""
    stmt = (
        select(ModelVersion)
        .join(ModelActivation, ModelActivation.version_id == ModelVersion.id)
        .order_by(ModelActivation.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def activate_model_version(
    session: Session,
    version_id: str,
    *,
    user_id: int | None = None,
    username: str | None = None,
    reason: str = "",
) -> ModelActivation:
    """Make ``version_id`` the active model: append an activation and a ``model_change`` audit event.

    ``status`` is kept as a convenience (the previous active version becomes ``retired``); the
    activation log is the source of truth.

    Raises:
        LookupError: Unknown version id.
    """
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise LookupError(f"unknown model version {version_id}")
    previous = active_model_version(session)
    if previous is not None and previous.id != version.id:
        previous.status = "retired"
    version.status = "active"
    activation = ModelActivation(version_id=version.id, user_id=user_id, reason=reason or "")
    session.add(activation)
    session.flush()
    add_audit_event(
        session,
        action="model_change",
        user_id=user_id,
        username=username,
        detail={"version_id": version.id, "previous": previous.id if previous else None, "reason": reason or ""},
    )
    return activation


def list_model_versions(session: Session) -> list[ModelVersion]:
    """Return all model versions, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id)))


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


def get_version(session: Session, version_id: str) -> VersionRecord:
    """A registered version as plain data.

    Raises:
        LookupError: Unknown version id.
    """
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise LookupError(f"There is no model version {version_id!r}.")
    return VersionRecord.of(row)


def active_version(session: Session) -> VersionRecord | None:
    row = active_model_version(session)
    return VersionRecord.of(row) if row is not None else None


def list_versions(session: Session) -> list[VersionRecord]:
    """All versions, newest first."""
    return [VersionRecord.of(v) for v in list_model_versions(session)]


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
