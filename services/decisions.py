"""Classification decisions: brokers submit a code, reviewers approve, correct or reject it (append-only)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
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
        InvalidInput: Bad code, foreign prediction, or the item is already submitted or final.
    """
    actor = refresh_actor(session, require_role(actor, *SUBMITTERS, action="submit classifications"))
    item = _lock_item(session, line_item_id)
    state = current_state(session, item.id)
    if state.status not in ("new", "rejected"):
        raise InvalidInput(f"Line item {item.id} {_describe(state)}.")
    code = normalise_code(code, valid_code)
    prediction = _prediction_for(session, item.id, prediction_id)
    return _record(
        session, actor, item, kind="submitted", code=code, comment=_comment(justification), prediction=prediction
    )


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


def is_agreement(submitted_code: str | None, model_top_code: str | None, needs_review: bool | None) -> bool:
    """Whether a submission is a high-confidence agreement, the kind that may be approved in bulk.

    The broker submitted the model's best subheading, and the model was confident: its prediction is not
    flagged for review (the calibrated heading score reached the review threshold).
    """
    return submitted_code is not None and submitted_code == model_top_code and needs_review is False


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
                top, unsure = (prediction.top_code, prediction.needs_review) if prediction else (None, None)
                if not is_agreement(state.submitted_code, top, unsure):
                    raise InvalidInput(
                        f"Line item {item.id} is not a high-confidence agreement with the model; review it on its own."
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
