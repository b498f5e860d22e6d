"""Work lists derived from decision events: the review queue and reviewed examples for training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import DECISION_KINDS, Decision, LineItem, Photo, Prediction, Shipment, User

ITEM_STATUSES = ("new", *DECISION_KINDS)


def _last_decision_ids():
    return (
        select(Decision.line_item_id, func.max(Decision.id).label("decision_id"))
        .group_by(Decision.line_item_id)
        .subquery("last_decision")
    )


def _last_prediction_ids():
    return (
        select(Prediction.line_item_id, func.max(Prediction.id).label("prediction_id"))
        .group_by(Prediction.line_item_id)
        .subquery("last_prediction")
    )


@dataclass(frozen=True)
class QueueFilter:
    """Which line items a review queue shows; ``status`` is the item's derived status."""

    status: str = "submitted"
    needs_review: bool | None = None
    code_prefix: str | None = None
    shipment_reference: str | None = None
    username: str | None = None  # who made the latest decision (for 'submitted': the broker)
    limit: int = 200
    offset: int = 0
    min_score: float | None = None  # the model's top subheading score (0..1) of the latest prediction, inclusive
    max_score: float | None = None
    decided_before: datetime | None = None  # latest decision made before this (aware UTC): "waiting longer than"
    decided_after: datetime | None = None


@dataclass(frozen=True)
class QueueItem:
    """One row of a review queue."""

    line_item_id: int
    line_ref: str | None
    shipment_reference: str | None
    description: str
    status: str
    code: str | None
    decided_by: str | None
    decided_at: datetime | None
    last_decision_id: int | None
    prediction_id: int | None
    model_version: str | None
    model_top_code: str | None
    model_top_score: float | None
    needs_review: bool | None
    model_subheadings: tuple[tuple[str, float], ...] = ()  # the prediction's best subheadings (code, probability)


def subheading_scores(candidates: Sequence[dict[str, Any]] | None, n: int = 2) -> tuple[tuple[str, float], ...]:
    """The best ``n`` subheadings ``(code, probability)`` of a prediction's stored candidates, best first."""
    sixes = sorted((c for c in candidates or () if c.get("level") == 6), key=lambda c: c.get("rank", 0))
    return tuple((str(c["code"]), float(c["score"])) for c in sixes[:n])


def _queue_select():
    """Line items joined to their shipment, latest decision (and its user) and latest prediction."""
    last_d, last_p = _last_decision_ids(), _last_prediction_ids()
    return (
        select(LineItem, Shipment.reference, Decision, User.username, Prediction)
        .outerjoin(Shipment, Shipment.id == LineItem.shipment_id)
        .outerjoin(last_d, last_d.c.line_item_id == LineItem.id)
        .outerjoin(Decision, Decision.id == last_d.c.decision_id)
        .outerjoin(User, User.id == Decision.user_id)
        .outerjoin(last_p, last_p.c.line_item_id == LineItem.id)
        .outerjoin(Prediction, Prediction.id == last_p.c.prediction_id)
    )


def review_queue(session: Session, filters: QueueFilter | None = None) -> list[QueueItem]:
    """List line items by derived status, oldest decision first (FIFO for reviewers)."""
    f = filters or QueueFilter()
    if f.status not in ITEM_STATUSES:
        raise ValueError(f"status must be one of {', '.join(ITEM_STATUSES)}")
    stmt = _queue_select()
    stmt = stmt.where(Decision.id.is_(None)) if f.status == "new" else stmt.where(Decision.kind == f.status)
    if f.needs_review is not None:
        stmt = stmt.where(Prediction.needs_review.is_(f.needs_review))
    if f.code_prefix:
        stmt = stmt.where(Decision.code.startswith(f.code_prefix, autoescape=True))
    if f.shipment_reference:
        stmt = stmt.where(Shipment.reference == f.shipment_reference)
    if f.username:
        stmt = stmt.where(User.username == f.username.strip().lower())
    if f.min_score is not None:
        stmt = stmt.where(Prediction.top_score >= f.min_score)
    if f.max_score is not None:
        stmt = stmt.where(Prediction.top_score <= f.max_score)
    if f.decided_before is not None:
        stmt = stmt.where(Decision.created_at < f.decided_before)
    if f.decided_after is not None:
        stmt = stmt.where(Decision.created_at >= f.decided_after)
    stmt = stmt.order_by(func.coalesce(Decision.id, 0), LineItem.id).limit(f.limit).offset(f.offset)
    return _queue_items(session, stmt)


def _queue_items(session: Session, stmt) -> list[QueueItem]:
    return [
        QueueItem(
            line_item_id=item.id,
            line_ref=item.line_ref,
            shipment_reference=ref,
            description=item.description,
            status=decision.kind if decision else "new",
            code=decision.code if decision else None,
            decided_by=username,
            decided_at=decision.created_at if decision else None,
            last_decision_id=decision.id if decision else None,
            prediction_id=pred.id if pred else None,
            model_version=pred.model_version if pred else None,
            model_top_code=pred.top_code if pred else None,
            model_top_score=pred.top_score if pred else None,
            needs_review=pred.needs_review if pred else None,
            model_subheadings=subheading_scores(pred.candidates) if pred else (),
        )
        for item, ref, decision, username, pred in session.execute(stmt)
    ]


def items_created_by(session: Session, user_id: int, *, limit: int = 100) -> list[QueueItem]:
    """The line items one user created, newest first, each with its derived status and latest decision."""
    stmt = _queue_select().where(LineItem.created_by == user_id).order_by(LineItem.id.desc()).limit(limit)
    return _queue_items(session, stmt)


@dataclass(frozen=True)
class ReviewedExample:
    """An approved or corrected line item: training data for fine-tuning and precedents for explanations."""

    line_item_id: int
    code: str
    kind: str  # 'approved' | 'corrected'
    description: str
    photo_paths: tuple[str, ...]  # relative to the photo store root, in position order
    embedding: bytes | None
    decision_id: int
    decided_at: datetime


def reviewed_examples(session: Session, *, code_prefix: str | None = None) -> list[ReviewedExample]:
    """Return every item whose current status is approved or corrected, with its final code.

    Rejected items, and items still waiting for review, are left out.
    """
    last_d = _last_decision_ids()
    stmt = (
        select(LineItem.id, LineItem.description, LineItem.embedding, Decision)
        .join(last_d, last_d.c.line_item_id == LineItem.id)
        .join(Decision, Decision.id == last_d.c.decision_id)
        .where(Decision.kind.in_(("approved", "corrected")))
        .order_by(Decision.id)
    )
    if code_prefix:
        stmt = stmt.where(Decision.code.startswith(code_prefix, autoescape=True))
    rows = session.execute(stmt).all()
    paths: dict[int, list[str]] = {}
    if rows:
        photo_stmt = (
            select(Photo.line_item_id, Photo.path)
            .join(last_d, last_d.c.line_item_id == Photo.line_item_id)
            .join(Decision, Decision.id == last_d.c.decision_id)
            .where(Decision.kind.in_(("approved", "corrected")))
            .order_by(Photo.line_item_id, Photo.position)
        )
        for item_id, path in session.execute(photo_stmt):
            paths.setdefault(item_id, []).append(path)
    return [
        ReviewedExample(
            line_item_id=item_id,
            code=cast(str, decision.code),  # approved and corrected decisions always carry a code
            kind=decision.kind,
            description=description,
            photo_paths=tuple(paths.get(item_id, ())),
            embedding=embedding,
            decision_id=decision.id,
            decided_at=decision.created_at,
        )
        for item_id, description, embedding, decision in rows
    ]
