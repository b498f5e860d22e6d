"""Reviewed items with their joint-space vectors, for precedent search (similar past decisions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Decision, LineItem, Prediction, User


@dataclass(frozen=True)
class PrecedentRow:
    """A reviewed line item: its final code, who reviewed it and when, and its embedding."""

    line_item_id: int
    description: str
    code: str
    kind: str  # 'approved' | 'corrected'
    decided_at: datetime
    reviewer: str
    model_version: str
    embedding: bytes


def reviewed_with_embeddings(session: Session, model_version: str, limit: int = 20_000) -> list[PrecedentRow]:
    """Items whose current state is approved/corrected and whose vector came from `model_version`.

    Vectors of other model versions live in other joint spaces, so they are not comparable.
    """
    last_d = (
        select(Decision.line_item_id, func.max(Decision.id).label("did")).group_by(Decision.line_item_id).subquery()
    )
    last_p = (
        select(Prediction.line_item_id, func.max(Prediction.id).label("pid"))
        .group_by(Prediction.line_item_id)
        .subquery()
    )
    stmt = (
        select(LineItem.id, LineItem.description, LineItem.embedding, Decision, User.username, Prediction.model_version)
        .join(last_d, last_d.c.line_item_id == LineItem.id)
        .join(Decision, Decision.id == last_d.c.did)
        .join(User, User.id == Decision.user_id)
        .join(last_p, last_p.c.line_item_id == LineItem.id)
        .join(Prediction, Prediction.id == last_p.c.pid)
        .where(Decision.kind.in_(("approved", "corrected")))
        .where(LineItem.embedding.is_not(None))
        .where(Prediction.model_version == model_version)
        .order_by(Decision.id.desc())
        .limit(limit)
    )
    return [
        # approved and corrected decisions always carry a code; the query keeps items with an embedding only
        PrecedentRow(item_id, desc, cast(str, d.code), d.kind, d.created_at, reviewer, version, cast(bytes, emb))
        for item_id, desc, emb, d, reviewer, version in session.execute(stmt)
    ]


@dataclass(frozen=True)
class ReviewedDecision:
    """The latest decision of a line item that changed after a cursor: approved/corrected ones join the index."""

    decision_id: int
    line_item_id: int
    description: str
    code: str
    kind: str  # 'approved' | 'corrected' | any later state (which retires the item from the index)
    decided_at: datetime


def latest_decisions_after(session: Session, after_decision_id: int, limit: int = 5_000) -> list[ReviewedDecision]:
    """Items whose latest decision has an id above `after_decision_id`, with that decision, oldest first.

    Whatever model made the prediction: the precedent index embeds the description itself.
    """
    last_d = (
        select(Decision.line_item_id, func.max(Decision.id).label("did")).group_by(Decision.line_item_id).subquery()
    )
    stmt = (
        select(Decision.id, LineItem.id, LineItem.description, Decision.code, Decision.kind, Decision.created_at)
        .join(last_d, last_d.c.did == Decision.id)
        .join(LineItem, LineItem.id == Decision.line_item_id)
        .where(Decision.id > after_decision_id)
        .order_by(Decision.id)
        .limit(limit)
    )
    return [
        ReviewedDecision(did, item, desc or "", code or "", kind, at)
        for did, item, desc, code, kind, at in session.execute(stmt)
    ]
