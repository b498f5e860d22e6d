"""Plain query functions on a caller-owned ``Session``: items, predictions, decisions, state, queue, audit."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.decision_log import LOG_COLUMNS, DecisionFilter, decision_log
from db.models import (
    DECISION_KINDS,
    ROLES,
    AuditEvent,
    Decision,
    LineItem,
    Photo,
    Prediction,
    Shipment,
    User,
)
from db.photos import StoredPhoto
from db.worklists import (
    ITEM_STATUSES,
    QueueFilter,
    QueueItem,
    ReviewedExample,
    review_queue,
    reviewed_examples,
)

__all__ = [
    "ITEM_STATUSES",
    "LOG_COLUMNS",
    "DecisionFilter",
    "ItemState",
    "QueueFilter",
    "QueueItem",
    "ReviewedExample",
    "add_audit_event",
    "add_decision",
    "add_user",
    "count_users",
    "create_line_item",
    "current_state",
    "decision_log",
    "find_user",
    "get_or_create_shipment",
    "latest_prediction",
    "normalise_username",
    "record_prediction",
    "review_queue",
    "reviewed_examples",
    "set_embedding",
]


def normalise_username(username: str) -> str:
    """Usernames are compared case-insensitively and without surrounding spaces."""
    return username.strip().lower()


def find_user(session: Session, username: str) -> User | None:
    """Return the user called ``username`` (case-insensitive), or ``None``."""
    return session.scalars(select(User).where(User.username == normalise_username(username))).one_or_none()


def count_users(session: Session) -> int:
    """Return how many users exist (active or not)."""
    return session.scalar(select(func.count()).select_from(User)) or 0


def add_user(session: Session, *, username: str, role: str, password_hash: str, active: bool = True) -> User:
    """Insert a user; the caller has hashed the password and checked permissions."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    user = User(username=normalise_username(username), role=role, password_hash=password_hash, active=active)
    session.add(user)
    session.flush()
    return user


def add_audit_event(
    session: Session,
    *,
    action: str,
    user_id: int | None = None,
    username: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """Append an audit event. Never put secrets (passwords, hashes) in ``detail``."""
    event = AuditEvent(action=action, user_id=user_id, username=username, detail=dict(detail or {}))
    session.add(event)
    session.flush()
    return event


def get_or_create_shipment(session: Session, reference: str, created_by: int | None = None) -> Shipment:
    """Return the shipment with ``reference``, creating it if needed (safe against a concurrent insert)."""
    reference = reference.strip()
    if not reference:
        raise ValueError("shipment reference is empty")
    found = session.scalars(select(Shipment).where(Shipment.reference == reference)).one_or_none()
    if found is not None:
        return found
    try:
        with session.begin_nested():
            shipment = Shipment(reference=reference, created_by=created_by)
            session.add(shipment)
        return shipment
    except IntegrityError:
        return session.scalars(select(Shipment).where(Shipment.reference == reference)).one()


def create_line_item(
    session: Session,
    *,
    description: str,
    created_by: int | None,
    shipment_id: int | None = None,
    line_ref: str | None = None,
    photos: Sequence[StoredPhoto] = (),
    embedding: bytes | None = None,
) -> LineItem:
    """Insert a line item (a classification request) and its photos, in the given order.

    Raises:
        ValueError: Neither a description nor a photo was given.
    """
    description = (description or "").strip()
    if not description and not photos:
        raise ValueError("a line item needs a description or at least one photo")
    item = LineItem(
        description=description,
        created_by=created_by,
        shipment_id=shipment_id,
        line_ref=(line_ref or "").strip() or None,
        embedding=embedding,
    )
    item.photos = [
        Photo(
            position=i,
            sha256=p.sha256,
            path=p.rel_path,
            mime=p.mime,
            width=p.width,
            height=p.height,
            size_bytes=p.size_bytes,
        )
        for i, p in enumerate(photos)
    ]
    session.add(item)
    session.flush()
    return item


def set_embedding(session: Session, line_item_id: int, embedding: bytes) -> None:
    """Store the joint-space vector (float32 bytes) of a line item."""
    item = session.get(LineItem, line_item_id)
    if item is None:
        raise LookupError(f"line item {line_item_id} not found")
    item.embedding = embedding
    session.flush()


def _clean_candidates(candidates: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in candidates:
        level, code, score = int(c["level"]), str(c["code"]), float(c["score"])
        if level not in (2, 4, 6) or len(code) != level or not code.isdigit():
            raise ValueError(f"bad candidate: level {level}, code {code!r}")
        if not math.isfinite(score):
            raise ValueError(f"bad candidate score for {code}: {score}")
        row = {
            "level": level,
            "rank": int(c["rank"]),
            "code": code,
            "description": str(c.get("description", "")),
            "score": score,
        }
        if c.get("precedents"):  # the precedents' vote for this candidate, as a sentence
            row["precedents"] = str(c["precedents"])
        out.append(row)
    return out


def record_prediction(
    session: Session,
    *,
    line_item_id: int,
    model_version: str,
    nomenclature_edition: str,
    latency_ms: float,
    needs_review: bool,
    candidates: Iterable[Mapping[str, Any]],
) -> Prediction:
    """Store a model's ranked candidates for a line item; the top 6-digit candidate is denormalised.

    Args:
        candidates: ``{"level": 2|4|6, "rank": int, "code": str, "description": str, "score": float}`` items,
            optionally with ``"precedents"``: the precedents' vote for the candidate, as a sentence.
    """
    cleaned = _clean_candidates(candidates)
    sixes = sorted((c for c in cleaned if c["level"] == 6), key=lambda c: (c["rank"], -c["score"]))
    top = sixes[0] if sixes else None
    prediction = Prediction(
        line_item_id=line_item_id,
        model_version=model_version,
        nomenclature_edition=nomenclature_edition,
        latency_ms=float(latency_ms),
        needs_review=bool(needs_review),
        top_code=top["code"] if top else None,
        top_score=top["score"] if top else None,
        candidates=cleaned,
    )
    session.add(prediction)
    session.flush()
    return prediction


def latest_prediction(session: Session, line_item_id: int) -> Prediction | None:
    """Return the most recent prediction for a line item, or ``None``."""
    stmt = select(Prediction).where(Prediction.line_item_id == line_item_id).order_by(Prediction.id.desc()).limit(1)
    return session.scalars(stmt).first()


def add_decision(
    session: Session,
    *,
    line_item_id: int,
    kind: str,
    code: str | None,
    comment: str,
    user_id: int,
    role: str,
    prediction_id: int | None = None,
    model_version: str | None = None,
    nomenclature_edition: str | None = None,
) -> Decision:
    """Append a decision row. Permission and transition rules live in ``services.decisions``."""
    if kind not in DECISION_KINDS:
        raise ValueError(f"decision kind must be one of {', '.join(DECISION_KINDS)}")
    decision = Decision(
        line_item_id=line_item_id,
        prediction_id=prediction_id,
        kind=kind,
        code=code,
        comment=comment or "",
        user_id=user_id,
        role=role,
        model_version=model_version,
        nomenclature_edition=nomenclature_edition,
    )
    session.add(decision)
    session.flush()
    return decision


@dataclass(frozen=True)
class ItemState:
    """A line item's state, derived from its decision events (nothing is stored as a status column)."""

    line_item_id: int
    status: str  # 'new' | 'submitted' | 'approved' | 'corrected' | 'rejected'
    submitted_code: str | None  # code of the latest submission, if any
    final_code: str | None  # set once approved or corrected
    last_decision: Decision | None
    last_submission: Decision | None
    history: tuple[Decision, ...]


def current_state(session: Session, line_item_id: int) -> ItemState:
    """Derive the state of a line item from all its decisions, oldest first."""
    history = tuple(
        session.scalars(select(Decision).where(Decision.line_item_id == line_item_id).order_by(Decision.id))
    )
    last = history[-1] if history else None
    submissions = [d for d in history if d.kind == "submitted"]
    last_submission = submissions[-1] if submissions else None
    status = last.kind if last else "new"
    return ItemState(
        line_item_id=line_item_id,
        status=status,
        submitted_code=last_submission.code if last_submission else None,
        final_code=last.code if last is not None and status in ("approved", "corrected") else None,
        last_decision=last,
        last_submission=last_submission,
        history=history,
    )
