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
    from hs_model.predict import Classifier, Prediction

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


def reopen_with_guidance(
    session: Session, classifier: Classifier, recorded: RecordedClassification, text: str | None
) -> RecordedClassification:
    """A stored line item (a Batch line opened in Classify) with its questions back, so the broker can answer them.

    A stored prediction keeps its candidates, not the model's wider pool the questions are drawn from. The same
    model version is run again on the same description and photos; its questions are used only when it ranks
    exactly the stored candidates (otherwise, e.g. after the precedents learned from newer decisions, the stored
    answer stands without questions: classifying again asks them). Answers the broker already gave are applied.
    The caller has checked that the actor may open the item.
    """
    from hs_model.errors import InputError
    from hs_model.predict import decode_images

    stored = recorded.prediction
    if stored.guidance is not None or classifier.version != stored.model_version or not stored.levels.get(6):
        return recorded
    try:
        images = decode_images([p.data for p in recorded.photos], [p.name for p in recorded.photos])
        if not (text and text.strip()) and not images:
            return recorded
        fresh = classifier.predict(text or None, images, top_k=len(stored.levels[6]))
    except InputError as exc:
        log.warning("line item %s: its questions could not be restored: %s", recorded.line_item_id, exc)
        return recorded
    same = all([c.code for c in fresh.levels[lv]] == [c.code for c in stored.levels.get(lv, [])] for lv in fresh.levels)
    if not same or fresh.guidance is None:
        log.info("line item %s: the model now ranks it differently; stored answer shown without questions",
                 recorded.line_item_id)  # fmt: skip
        return recorded
    prediction = dataclasses.replace(stored, guidance=fresh.guidance)
    facts = facts_in_force(session, [recorded.line_item_id]).get(recorded.line_item_id, [])
    for _ in range(2):  # a heading's answer opens its follow-up question, whose answer then applies too
        answers = {
            f.question: f.answer
            for f in facts
            if (q := find_question(prediction, f.question)) is not None and f.answer in dict(q.options)
        }
        if answers and prediction.guidance is not None and answers != dict(prediction.guidance.answers):
            prediction = apply_answers(prediction, answers)
    return dataclasses.replace(recorded, prediction=prediction)
