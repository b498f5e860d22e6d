"""Read-side services for reviewers, admins and brokers: one line item in full, the decision log, a broker's items."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db.decision_log import (
    LOG_COLUMNS,
    DecisionFilter,
    LogChoices,
    decision_log,
    decision_log_choices,
    latest_decision_id,
)
from db.history import max_row_id
from db.models import LineItem, User
from db.photos import PhotoPathError, resolve_photo
from db.queries import QueueItem, current_state, latest_prediction
from db.worklists import QueueFilter, items_created_by
from services.auth import Actor, refresh_actor, require_role
from services.decisions import REVIEWERS, SUBMITTERS, format_code, is_agreement
from services.errors import NotFound, PermissionDenied

log = logging.getLogger(__name__)

__all__ = [
    "LOG_COLUMNS",
    "CandidateView",
    "DecisionFilter",
    "DecisionRows",
    "HistoryEntry",
    "ItemDetail",
    "LogChoices",
    "PhotoView",
    "QueueFacets",
    "QueueFilter",
    "QueueItem",
    "item_detail",
    "list_decisions",
    "log_choices",
    "my_items",
    "queue_facets",
]

ANY_SIGNED_IN = ("broker", "reviewer", "admin")
MAX_TABLE_ROWS = 2000  # on screen; the export always has every filtered row


@dataclass(frozen=True)
class PhotoView:
    """One stored photo of a line item: its checked absolute path, or why it cannot be shown."""

    position: int
    path: Path | None  # inside the photo store, existing; None when missing or unsafe
    mime: str
    width: int | None
    height: int | None
    problem: str | None = None


@dataclass(frozen=True)
class CandidateView:
    """One of the model's ranked codes at one level."""

    level: int
    rank: int
    code: str
    formatted: str
    description: str
    score: float
    precedents: str | None = None  # "4 earlier rulings on similar goods: 6506.10" when the vote raised it


@dataclass(frozen=True)
class HistoryEntry:
    """One decision on a line item, as the history shows it."""

    decision_id: int
    at: datetime  # aware UTC
    username: str
    role: str
    kind: str  # submitted | approved | corrected | rejected
    code: str | None
    comment: str


@dataclass(frozen=True)
class ItemDetail:
    """Everything a reviewer needs to decide on one line item (plain data)."""

    line_item_id: int
    description: str
    shipment_reference: str | None
    line_ref: str | None
    created_by: str | None
    created_at: datetime
    photos: tuple[PhotoView, ...]
    prediction_id: int | None
    model_version: str | None
    nomenclature_edition: str | None
    needs_review: bool | None
    candidates: dict[int, tuple[CandidateView, ...]]  # level (6, 4, 2) -> best first; empty without a prediction
    status: str  # new | submitted | approved | corrected | rejected
    submitted_code: str | None  # the latest submission's code
    submitted_by: str | None
    justification: str  # the latest submission's comment
    final_code: str | None
    history: tuple[HistoryEntry, ...]  # oldest first

    @property
    def model_top(self) -> CandidateView | None:
        """The model's best subheading, if there is a prediction."""
        sixes = self.candidates.get(6, ())
        return sixes[0] if sixes else None

    @property
    def agrees_with_model(self) -> bool:
        """The submission is a high-confidence agreement (see `services.decisions.is_agreement`)."""
        sixes = tuple((c.code, c.score) for c in self.candidates.get(6, ())[:2])
        return is_agreement(self.submitted_code, sixes, self.needs_review)


@dataclass(frozen=True)
class DecisionRows:
    """Decision-log rows for the on-screen table, newest first (keys: `LOG_COLUMNS`)."""

    rows: tuple[dict[str, Any], ...]
    total: int  # rows matching the filters; more than len(rows) when the table is cut at the limit
    filters: DecisionFilter  # what was listed, pinned to the newest decision read: export with these


@dataclass(frozen=True)
class QueueFacets:
    """What a review queue can be narrowed by: the values present in it."""

    shipments: tuple[str, ...]
    brokers: tuple[str, ...]
    chapters: tuple[str, ...]  # 2-digit chapters of the submitted codes


def _photos(item: LineItem, root: Path | None) -> tuple[PhotoView, ...]:
    out = []
    for photo in item.photos:
        path, problem = None, None
        try:
            resolved = resolve_photo(root, photo.path)
        except PhotoPathError:
            log.warning("line item %s: unsafe photo path %r", item.id, photo.path)
            problem = "This photo's stored path is not valid; it is not shown."
        else:
            if resolved.is_file():
                path = resolved
            else:
                problem = "This photo's file is missing from the photo store."
        out.append(PhotoView(photo.position, path, photo.mime, photo.width, photo.height, problem))
    return tuple(out)


def _candidates(rows: Sequence[dict[str, Any]]) -> dict[int, tuple[CandidateView, ...]]:
    levels: dict[int, list[CandidateView]] = {6: [], 4: [], 2: []}
    for c in sorted(rows, key=lambda c: (c["level"], c["rank"])):
        view = CandidateView(
            c["level"],
            c["rank"],
            c["code"],
            format_code(c["code"]),
            c.get("description", ""),
            c["score"],
            c.get("precedents"),  # stored since the vote is shown (older predictions have none)
        )
        levels.setdefault(view.level, []).append(view)
    return {level: tuple(views) for level, views in levels.items()}


def item_detail(
    session: Session, actor: Actor | None, line_item_id: int, *, photo_root: Path | None = None
) -> ItemDetail:
    """One line item with its photos, the latest prediction's candidates and the full decision history.

    Reviewers and admins see any item; a broker sees the items they created.

    Args:
        session: Caller-owned session.
        actor: The signed-in user.
        line_item_id: The item.
        photo_root: Photo store root; ``db.photos.default_photo_root()`` when ``None``.

    Raises:
        PermissionDenied: Not signed in, or a broker asking for someone else's item.
        NotFound: No such line item.
    """
    actor = refresh_actor(session, require_role(actor, *ANY_SIGNED_IN, action="see line items"))
    item = session.get(LineItem, line_item_id)
    if item is None:
        raise NotFound(f"Line item {line_item_id} does not exist.")
    if actor.role not in REVIEWERS and item.created_by != actor.user_id:
        raise PermissionDenied("Brokers can only see the line items they classified.")
    state = current_state(session, item.id)
    prediction = latest_prediction(session, item.id)
    creator = session.get(User, item.created_by) if item.created_by is not None else None
    submission = state.last_submission
    return ItemDetail(
        line_item_id=item.id,
        description=item.description,
        shipment_reference=item.shipment.reference if item.shipment else None,
        line_ref=item.line_ref,
        created_by=creator.username if creator else None,
        created_at=item.created_at,
        photos=_photos(item, photo_root),
        prediction_id=prediction.id if prediction else None,
        model_version=prediction.model_version if prediction else None,
        nomenclature_edition=prediction.nomenclature_edition if prediction else None,
        needs_review=prediction.needs_review if prediction else None,
        candidates=_candidates(prediction.candidates) if prediction else {},
        status=state.status,
        submitted_code=state.submitted_code,
        submitted_by=submission.user.username if submission else None,
        justification=submission.comment if submission else "",
        final_code=state.final_code,
        history=tuple(
            HistoryEntry(d.id, d.created_at, d.user.username, d.role, d.kind, d.code, d.comment) for d in state.history
        ),
    )


def list_decisions(
    session: Session, actor: Actor | None, filters: DecisionFilter | None = None, *, limit: int = MAX_TABLE_ROWS
) -> DecisionRows:
    """The filtered decision log for an on-screen table, newest first. Admins only.

    The returned ``filters`` are pinned to the newest decision that was read, so an export made with
    them holds exactly the rows listed (all of them, also past ``limit``), whatever is decided meanwhile.

    Raises:
        PermissionDenied: Not an admin.
    """
    refresh_actor(session, require_role(actor, "admin", action="see the decision log"))
    filters = filters or DecisionFilter()
    if filters.max_decision_id is None:
        filters = replace(filters, max_decision_id=latest_decision_id(session) or 0)
    if filters.max_history_row_id is None:
        filters = replace(filters, max_history_row_id=max_row_id(session))
    rows = decision_log(session, filters)
    newest = tuple(reversed(rows[-limit:])) if limit > 0 else ()
    return DecisionRows(rows=newest, total=len(rows), filters=filters)


def log_choices(session: Session, actor: Actor | None) -> LogChoices:
    """Usernames and model versions that appear in the decision log. Admins only.

    Raises:
        PermissionDenied: Not an admin.
    """
    refresh_actor(session, require_role(actor, "admin", action="see the decision log"))
    return decision_log_choices(session)


def my_items(session: Session, actor: Actor | None, *, limit: int = 100) -> list[QueueItem]:
    """The caller's own line items, newest first, with their status and latest decision. Brokers and admins.

    Raises:
        PermissionDenied: Not signed in, or a reviewer (reviewers classify nothing).
    """
    actor = refresh_actor(session, require_role(actor, *SUBMITTERS, action="list their line items"))
    return items_created_by(session, actor.user_id, limit=limit)


def queue_facets(queue: Sequence[QueueItem]) -> QueueFacets:
    """The shipments, brokers and chapters present in a review queue, sorted."""
    return QueueFacets(
        shipments=tuple(sorted({q.shipment_reference for q in queue if q.shipment_reference})),
        brokers=tuple(sorted({q.decided_by for q in queue if q.decided_by})),
        chapters=tuple(sorted({q.code[:2] for q in queue if q.code})),
    )
