"""Guided classification in the app: the broker answers a question, the candidates are re-ranked in place (no
model run), and the answer is stored with the line item as a broker-stated fact (append-only, audited)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from db.broker_facts import FactView, add_broker_fact, facts_in_force
from db.models import LineItem
from db.queries import add_audit_event
from hs_model.questions import NONE, UNKNOWN, Question, apply_answers
from services.auth import Actor, refresh_actor, require_role
from services.classify import RecordedClassification
from services.decisions import REVIEWERS, SUBMITTERS
from services.errors import InvalidInput, NotFound, PermissionDenied

if TYPE_CHECKING:
    from hs_model.predict import Prediction

log = logging.getLogger(__name__)

ANSWER_LABELS = {NONE: "None of these", UNKNOWN: "Don't know"}


def find_question(prediction: Prediction, key: str) -> Question | None:
    """The question `key` of a prediction: one asked at first, or the follow-up of an answered heading."""
    guidance = prediction.guidance
    if guidance is None:
        return None
    for q in guidance.questions:
        if q.key == key:
            return q
    for q in guidance.questions:
        follow = q.follow_up(guidance.answers.get(q.key))
        if follow is not None and follow.key == key:
            return follow
    return None


def open_questions(prediction: Prediction) -> list[Question]:
    """Questions to show, in order: each asked one, then the follow-up of an answered heading question."""
    guidance = prediction.guidance
    if guidance is None:
        return []
    shown = []
    for q in guidance.questions:
        shown.append(q)
        follow = q.follow_up(guidance.answers.get(q.key))
        if follow is not None and follow.key not in {x.key for x in guidance.questions}:
            shown.append(follow)
    return shown


def answer_question(
    session: Session, actor: Actor | None, recorded: RecordedClassification, key: str, option: str
) -> RecordedClassification:
    """Apply the broker's answer to a classified line item and store it as a broker-stated fact.

    Args:
        session: Caller-owned session.
        actor: The signed-in broker or admin who classified the item.
        recorded: The classification on screen (its prediction carries the questions).
        key: The question's key (e.g. ``textile``).
        option: The option's key (e.g. ``cotton``), ``none`` or ``unknown``.

    Returns:
        The classification with its candidates re-ranked under every answer given so far.

    Raises:
        PermissionDenied: Not a broker or admin, or not the item's creator.
        NotFound: No such line item.
        InvalidInput: Not a question of this item, or not one of its options.
    """
    actor = refresh_actor(session, require_role(actor, *SUBMITTERS, action="answer classification questions"))
    item = session.get(LineItem, recorded.line_item_id)
    if item is None:
        raise NotFound(f"Line item {recorded.line_item_id} does not exist.")
    if actor.role != "admin" and item.created_by != actor.user_id:
        raise PermissionDenied("Only the broker who classified this item can answer its questions.")
    prediction = recorded.prediction
    question = find_question(prediction, key)
    if question is None or prediction.guidance is None:  # no guidance: no question either
        raise InvalidInput(f"This item has no question {key!r}.")
    labels = dict(question.options)
    if option not in labels:
        raise InvalidInput(f"{option!r} is not an answer to “{question.text}”; choose one of the buttons.")
    answers = {**prediction.guidance.answers, key: option}
    updated = apply_answers(prediction, answers)
    add_broker_fact(
        session,
        line_item_id=item.id,
        question=key,
        answer=option,
        question_text=question.text,
        answer_label=labels[option],
        user_id=actor.user_id,
    )
    detail = {"line_item_id": item.id, "question": key, "answer": option, "top_code": updated.top.code}
    add_audit_event(session, action="broker_fact", user_id=actor.user_id, username=actor.username, detail=detail)
    log.info("line item %s: %s answered %s=%s", item.id, actor.username, key, option)
    return dataclasses.replace(recorded, prediction=updated)


def broker_facts(session: Session, actor: Actor | None, line_item_id: int) -> list[FactView]:
    """The broker's answers in force for a line item (reviewers, admins, and the broker who created it)."""
    actor = refresh_actor(session, require_role(actor, *SUBMITTERS, *REVIEWERS, action="see line items"))
    item = session.get(LineItem, line_item_id)
    if item is None:
        raise NotFound(f"Line item {line_item_id} does not exist.")
    if actor.role not in REVIEWERS and item.created_by != actor.user_id:
        raise PermissionDenied("Brokers can only see the line items they classified.")
    return facts_in_force(session, [line_item_id]).get(line_item_id, [])
