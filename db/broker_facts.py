"""Broker-stated facts (answers to guided questions): append, and read the ones in force per line item."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import BrokerFact


@dataclass(frozen=True)
class FactView:
    """One answer in force: the latest per question."""

    question: str
    answer: str
    question_text: str
    answer_label: str
    source: str
    username: str
    at: datetime


def add_broker_fact(
    session: Session,
    *,
    line_item_id: int,
    question: str,
    answer: str,
    question_text: str,
    answer_label: str,
    user_id: int,
    source: str = "broker",
) -> BrokerFact:
    """Append an answer (a changed answer is a new row: nothing is overwritten)."""
    fact = BrokerFact(
        line_item_id=line_item_id,
        question=question[:32],
        answer=answer[:64],
        question_text=question_text,
        answer_label=answer_label,
        source=source,
        user_id=user_id,
    )
    session.add(fact)
    session.flush()
    return fact


def facts_in_force(session: Session, line_item_ids: Iterable[int]) -> dict[int, list[FactView]]:
    """The latest answer to each question, per line item, in the order the questions were first answered."""
    ids = sorted(set(line_item_ids))
    out: dict[int, dict[str, FactView]] = {i: {} for i in ids}
    if not ids:
        return {}
    rows = session.scalars(select(BrokerFact).where(BrokerFact.line_item_id.in_(ids)).order_by(BrokerFact.id))
    for row in rows:
        out[row.line_item_id][row.question] = FactView(
            row.question, row.answer, row.question_text, row.answer_label, row.source, row.user.username, row.created_at
        )
    return {i: list(facts.values()) for i, facts in out.items() if facts}


def facts_text(facts: Iterable[FactView]) -> str:
    """`textile=cotton (Of cotton); heading=6109 (…)`: one cell of the decision log."""
    return "; ".join(f"{f.question}={f.answer} ({f.answer_label})" for f in facts)
