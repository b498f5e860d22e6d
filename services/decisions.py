"""Classification decisions: brokers submit a code, reviewers approve, correct or reject it (append-only)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from db.models import Decision, LineItem, Prediction
from db.queries import (
    ItemState,
    QueueFilter,
    QueueItem,
    add_audit_event,
    add_decision,
    current_state,
    latest_prediction,
)
from db.queries import review_queue as _review_queue
from db.worklists import subheading_scores
from hs_core.nomenclature import HsCode, InvalidCode, format_digits
from hs_core.text import clean_text
from services.auth import Actor, refresh_actor, require_role
from services.errors import InvalidInput, NotFound, PermissionDenied, ServiceError

log = logging.getLogger(__name__)

CodeValidator = Callable[[str], bool]
SUBMITTERS = ("broker", "admin")
REVIEWERS = ("reviewer", "admin")
MAX_COMMENT_LENGTH = 4000


def format_code(code: str) -> str:
    """How brokers write a code: ``"610910"`` -> ``"6109.10"`` (the nomenclature's own formatting)."""
    return format_digits(code)


def normalise_code(code: str, valid_code: CodeValidator | None = None) -> str:
    """The digits of a submitted or corrected code: ``"6109.10"``, ``"6109 10"`` or ``"610910"`` -> ``"610910"``.

    Parsed by `HsCode` (the one parser): it must exist in HS 2022 and be a 6-digit subheading.

    Args:
        code: What the user typed.
        valid_code: Optional further check (e.g. that the model in use knows the code).

    Raises:
        InvalidInput: Malformed, not in HS 2022, not a subheading, or refused by ``valid_code``.
    """
    try:
        parsed = HsCode.parse_subheading(code or "")
    except InvalidCode as exc:
        raise InvalidInput(str(exc)) from None
    if valid_code is not None and not valid_code(parsed.digits):
        raise InvalidInput(f"{parsed.formatted} is not a subheading of the nomenclature in use.")
    return parsed.digits


def _comment(text: str | None, *, required: str | None = None) -> str:
    # Control characters are noise from pasted binary; PostgreSQL refuses NUL outright (DataError).
    text = clean_text(text)
    if required and not text:
        raise InvalidInput(required)
    if len(text) > MAX_COMMENT_LENGTH:
        raise InvalidInput(f"Comments are limited to {MAX_COMMENT_LENGTH} characters.")
    return text


def _lock_item(session: Session, line_item_id: int) -> LineItem:
    # FOR UPDATE serialises decisions on one item on PostgreSQL; SQLite has a single writer anyway.
    item = session.get(LineItem, line_item_id, with_for_update=True)
    if item is None:
        raise NotFound(f"Line item {line_item_id} does not exist.")
    return item


def _describe(state: ItemState) -> str:
    if state.status == "submitted":
        return f"was submitted as {format_code(state.submitted_code or '')} and is waiting for review"
    if state.status in ("approved", "corrected"):
        return f"is already final ({state.status} as {format_code(state.final_code or '')})"
    if state.status == "rejected":
        return "was rejected and needs a new submission"
    return "has not been submitted yet"


def _prediction_for(session: Session, line_item_id: int, prediction_id: int | None) -> Prediction | None:
    if prediction_id is None:
        return latest_prediction(session, line_item_id)
    prediction = session.get(Prediction, prediction_id)
    if prediction is None or prediction.line_item_id != line_item_id:
        raise InvalidInput(f"Prediction {prediction_id} does not belong to line item {line_item_id}.")
    return prediction


def _record(
    session: Session,
    actor: Actor,
    item: LineItem,
    *,
    kind: str,
    code: str | None,
    comment: str,
    prediction: Prediction | None,
) -> Decision:
    decision = add_decision(
        session,
        line_item_id=item.id,
        kind=kind,
        code=code,
        comment=comment,
        user_id=actor.user_id,
        role=actor.role,
        prediction_id=prediction.id if prediction else None,
        model_version=prediction.model_version if prediction else None,
        nomenclature_edition=prediction.nomenclature_edition if prediction else None,
    )
    add_audit_event(
        session,
        action="submission" if kind == "submitted" else "review",
        user_id=actor.user_id,
        username=actor.username,
        detail={
            "line_item_id": item.id,
            "decision_id": decision.id,
            "kind": kind,
            "code": code,
            "prediction_id": decision.prediction_id,
        },
    )
    log.info("line item %s %s by %s (%s)", item.id, kind, actor.username, code)
    return decision


def submit(
    session: Session,
    actor: Actor | None,
    line_item_id: int,
    code: str,
    justification: str = "",
    prediction_id: int | None = None,
    *,
    valid_code: CodeValidator | None = None,
) -> Decision:
    """Submit a code for a new (or rejected) line item. Brokers and admins.

    Raises:
        PermissionDenied: Not signed in or wrong role.
        NotFound: No such line item.
        InvalidInput: Bad code, foreign prediction, the item is already submitted or final, or no justification
            for a code other than the model's first choice.
    """
    actor = refresh_actor(session, require_role(actor, *SUBMITTERS, action="submit classifications"))
    item = _lock_item(session, line_item_id)
    state = current_state(session, item.id)
    if state.status not in ("new", "rejected"):
        raise InvalidInput(f"Line item {item.id} {_describe(state)}.")
    code = normalise_code(code, valid_code)
    prediction = _prediction_for(session, item.id, prediction_id)
    top = prediction.top_code if prediction is not None else None
    required = None
    if top is not None and code != top:
        required = (
            f"{format_code(code)} is not the model's first choice ({format_code(top)}): say why in the "
            "justification, so the reviewer sees your reason beside the difference."
        )
    text = _comment(justification, required=required)
    return _record(session, actor, item, kind="submitted", code=code, comment=text, prediction=prediction)


def _start_review(session: Session, actor: Actor | None, line_item_id: int, action: str) -> tuple[LineItem, ItemState]:
    actor = refresh_actor(session, require_role(actor, *REVIEWERS, action=action))
    item = _lock_item(session, line_item_id)
    state = current_state(session, item.id)
    if state.status != "submitted":
        raise InvalidInput(f"Only submitted items can be reviewed; line item {item.id} {_describe(state)}.")
    if state.last_submission is not None and state.last_submission.user_id == actor.user_id:
        raise PermissionDenied("You cannot review your own submission; another reviewer has to.")
    return item, state


def approve(session: Session, actor: Actor | None, line_item_id: int, comment: str = "") -> Decision:
    """Approve the submitted code as final. Reviewers and admins, never on their own submission.

    Raises:
        PermissionDenied: Not signed in, wrong role, or reviewing one's own submission.
        NotFound: No such line item.
        InvalidInput: The item is not waiting for review.
    """
    item, state = _start_review(session, actor, line_item_id, "approve classifications")
    assert actor is not None  # _start_review refuses anyone not signed in
    prediction = latest_prediction(session, item.id)
    return _record(
        session,
        actor,
        item,
        kind="approved",
        code=state.submitted_code,
        comment=_comment(comment),
        prediction=prediction,
    )


def correct(
    session: Session,
    actor: Actor | None,
    line_item_id: int,
    code: str,
    reason: str,
    *,
    valid_code: CodeValidator | None = None,
) -> Decision:
    """Replace the submitted code with ``code``; the submission stays in the history. Reason required.

    Raises:
        PermissionDenied: Not signed in, wrong role, or reviewing one's own submission.
        NotFound: No such line item.
        InvalidInput: Not waiting for review, no reason, bad code, or the same code as submitted.
    """
    item, state = _start_review(session, actor, line_item_id, "correct classifications")
    assert actor is not None  # _start_review refuses anyone not signed in
    text = _comment(reason, required="Give a reason for the correction.")
    code = normalise_code(code, valid_code)
    if code == state.submitted_code:
        raise InvalidInput(f"{format_code(code)} is the submitted code; approve it instead of correcting it.")
    prediction = latest_prediction(session, item.id)
    return _record(session, actor, item, kind="corrected", code=code, comment=text, prediction=prediction)


def reject(session: Session, actor: Actor | None, line_item_id: int, reason: str) -> Decision:
    """Send a submission back to the broker without a code. Reason required.

    Raises:
        PermissionDenied: Not signed in, wrong role, or reviewing one's own submission.
        NotFound: No such line item.
        InvalidInput: Not waiting for review, or no reason.
    """
    item, _ = _start_review(session, actor, line_item_id, "reject classifications")
    assert actor is not None  # _start_review refuses anyone not signed in
    text = _comment(reason, required="Give a reason for the rejection.")
    prediction = latest_prediction(session, item.id)
    return _record(session, actor, item, kind="rejected", code=None, comment=text, prediction=prediction)


AGREEMENT_MIN_SCORE = 0.60  # the subheading probability a bulk-approvable agreement needs (the review threshold)
NEAR_TIE_TOP = 0.80  # below this, a runner-up in the same heading with at least half the best's probability ...
NEAR_TIE_RATIO = 0.5  # ... is a near tie: the model cannot tell the two subheadings apart


def near_tie(subheadings: Sequence[tuple[str, float]]) -> bool:
    """Whether the best two subheadings ``(code, probability)`` (best first) are a near tie inside one heading.

    The model decides headings well and the subheadings inside a heading much less well (they often differ only
    by material), so a runner-up of the same heading close to the best one means the 6-digit choice is open.
    """
    if len(subheadings) < 2:
        return False
    (top, top_score), (second, second_score) = subheadings[0], subheadings[1]
    return top[:4] == second[:4] and top_score < NEAR_TIE_TOP and second_score >= NEAR_TIE_RATIO * top_score


def is_agreement(
    submitted_code: str | None, subheadings: Sequence[tuple[str, float]], needs_review: bool | None
) -> bool:
    """Whether a submission is a high-confidence agreement, the kind that may be approved in bulk.

    Confident at the level that is submitted (6 digits): the broker submitted the model's best subheading, that
    subheading's own probability reaches `AGREEMENT_MIN_SCORE`, it is no near tie with the runner-up (`near_tie`),
    and the prediction is not flagged for review (the heading reached the review threshold).

    Args:
        submitted_code: The broker's 6 digits.
        subheadings: The model's subheadings ``(code, probability)``, best first (at least the best two).
        needs_review: The prediction's flag.
    """
    if submitted_code is None or not subheadings or needs_review is not False:
        return False
    top, score = subheadings[0]
    return submitted_code == top and score >= AGREEMENT_MIN_SCORE and not near_tie(subheadings)


@dataclass(frozen=True)
class BulkApproval:
    """The outcome of `approve_agreements`: the decisions made and the items refused, with why."""

    approved: tuple[Decision, ...]
    refused: tuple[tuple[int, str], ...]  # (line_item_id, message)


def approve_agreements(
    session: Session, actor: Actor | None, line_item_ids: Iterable[int], comment: str = ""
) -> BulkApproval:
    """Approve several high-confidence agreements (see `is_agreement`); each approval is its own decision.

    Each item goes through the same checks as `approve`, in its own savepoint: an item that is no longer
    waiting, no longer an agreement, or is the reviewer's own submission is refused with the reason, and
    the others are still approved.

    Raises:
        PermissionDenied: Not signed in or wrong role (nothing is approved).
        InvalidInput: No items, or a comment over the limit.
    """
    actor = refresh_actor(session, require_role(actor, *REVIEWERS, action="approve classifications"))
    text = _comment(comment)
    ids = list(dict.fromkeys(line_item_ids))
    if not ids:
        raise InvalidInput("Tick at least one item to approve.")
    approved: list[Decision] = []
    refused: list[tuple[int, str]] = []
    for item_id in ids:
        try:
            with session.begin_nested():
                item, state = _start_review(session, actor, item_id, "approve classifications")
                prediction = latest_prediction(session, item.id)
                sixes, unsure = (
                    (subheading_scores(prediction.candidates), prediction.needs_review) if prediction else ((), None)
                )
                if not is_agreement(state.submitted_code, sixes, unsure):
                    raise InvalidInput(
                        f"Line item {item.id} is not a high-confidence agreement with the model (the same subheading, at "
                        f"least {AGREEMENT_MIN_SCORE:.0%}, no near tie); review it on its own."
                    )
                code = state.submitted_code
                decision = _record(
                    session, actor, item, kind="approved", code=code, comment=text, prediction=prediction
                )
                approved.append(decision)
        except ServiceError as exc:
            refused.append((item_id, str(exc)))
    log.info("bulk approval by %s: %d approved, %d refused", actor.username, len(approved), len(refused))
    return BulkApproval(approved=tuple(approved), refused=tuple(refused))


def review_queue(session: Session, actor: Actor | None, filters: QueueFilter | None = None) -> list[QueueItem]:
    """Items waiting for review (or another derived status via ``filters``), oldest first. Reviewers and admins."""
    refresh_actor(session, require_role(actor, *REVIEWERS, action="see the review queue"))
    try:
        return _review_queue(session, filters)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def item_state(session: Session, actor: Actor | None, line_item_id: int) -> ItemState:
    """The derived state and full decision history of one line item. Any signed-in user."""
    refresh_actor(session, require_role(actor, "broker", "reviewer", "admin", action="see line items"))
    if session.get(LineItem, line_item_id) is None:
        raise NotFound(f"Line item {line_item_id} does not exist.")
    return current_state(session, line_item_id)
