"""Correct a rejected line item where the error is: a new version of its description and photos, re-classified.

The line item keeps the latest version; every earlier one stays in ``line_item_versions`` (append-only), with who
changed it, when and why, and an ``item_revised`` audit event. The decisions made on an earlier version stay as
they were; the broker then submits a code for the new version as usual.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import LineItem, LineItemVersion, Photo, User
from db.photos import store_photo
from db.queries import add_audit_event, current_state
from services.auth import Actor, refresh_actor, require_role
from services.classify import (
    RecordedClassification,
    UploadedPhoto,
    _check_storable,
    classify,
    store_prediction,
)
from services.decisions import SUBMITTERS
from services.errors import InvalidInput, NotFound, PermissionDenied

if TYPE_CHECKING:
    from hs_model.predict import Classifier

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 2000
DIFF_CONTEXT_WORDS = 8  # unchanged words kept on each side of a change; longer unchanged runs are cut to "…"


@dataclass(frozen=True)
class VersionView:
    """One version of a line item as the history shows it."""

    version: int
    description: str
    photo_count: int
    reason: str
    by: str | None
    at: datetime


@dataclass(frozen=True)
class VersionChange:
    """What changed from one version of a line item to the next, as the reviewer sees it.

    ``description`` is a word diff: ``(kind, text)`` pieces in order, kind ``"same"``, ``"removed"``, ``"added"``
    or ``"cut"`` (a long unchanged run left out); empty when the description did not change.
    """

    version: int
    previous: int
    reason: str
    by: str | None
    at: datetime
    photos_before: int
    photos_after: int
    photos_replaced: bool
    description: tuple[tuple[str, str], ...]


def word_diff(before: str, after: str, context: int = DIFF_CONTEXT_WORDS) -> tuple[tuple[str, str], ...]:
    """The words removed and added between two descriptions, with ``context`` unchanged words around each change.

    Whitespace differences alone are no change. Returns ``()`` when the words are the same.
    """
    old, new = before.split(), after.split()
    if old == new:
        return ()
    pieces: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    opcodes = matcher.get_opcodes()
    for n, (tag, i1, i2, j1, j2) in enumerate(opcodes):
        if tag == "equal":
            words = old[i1:i2]
            head = words[:context] if n > 0 else []
            tail = words[-context:] if n < len(opcodes) - 1 else []
            if len(head) + len(tail) >= len(words):
                pieces.append(("same", " ".join(words)))
                continue
            if head:
                pieces.append(("same", " ".join(head)))
            pieces.append(("cut", "…"))
            if tail:
                pieces.append(("same", " ".join(tail)))
            continue
        if i2 > i1:
            pieces.append(("removed", " ".join(old[i1:i2])))
        if j2 > j1:
            pieces.append(("added", " ".join(new[j1:j2])))
    return tuple(pieces)


def _photo_rows(item: LineItem) -> list[dict[str, object]]:
    return [
        {"sha256": p.sha256, "path": p.path, "mime": p.mime, "width": p.width, "height": p.height,
         "size_bytes": p.size_bytes}
        for p in item.photos
    ]  # fmt: skip


def _own_item(
    session: Session, actor: Actor | None, line_item_id: int, action: str, *, lock: bool = True
) -> tuple[Actor, LineItem]:
    actor = refresh_actor(session, require_role(actor, *SUBMITTERS, "reviewer", action=action))
    item = session.get(LineItem, line_item_id, with_for_update=lock)
    if item is None:
        raise NotFound(f"Line item {line_item_id} does not exist.")
    if actor.role not in ("admin", "reviewer") and item.created_by != actor.user_id:
        raise PermissionDenied("Brokers can only see and correct the line items they classified.")
    return actor, item


def revise_rejected_item(
    session: Session,
    classifier: Classifier,
    actor: Actor | None,
    line_item_id: int,
    *,
    text: str,
    photos: Sequence[UploadedPhoto] | None,
    reason: str,
    photo_root: Path | None = None,
) -> RecordedClassification:
    """Store a corrected description (and photos) of a rejected item as its new version, and re-classify it.

    Args:
        text: The corrected description.
        photos: New photos replacing the current ones, or ``None`` to keep them.
        reason: What was wrong (required; kept with the version).

    Raises:
        PermissionDenied: Not the item's broker (or an admin).
        NotFound: No such item.
        InvalidInput: The item is not rejected, nothing changed, no reason, or bad input (see `classify`).
    """
    actor, item = _own_item(session, actor, line_item_id, "correct line items")
    if actor.role == "reviewer":
        raise PermissionDenied("Only the item's broker (or an admin) can correct its description and photos.")
    state = current_state(session, item.id)
    if state.status != "rejected":
        raise InvalidInput(f"Only a rejected item can be corrected; line item {item.id} is {state.status}.")
    why = " ".join((reason or "").split())
    if not why:
        raise InvalidInput("Say what you corrected (the reason is kept with the new version).")
    if len(why) > MAX_REASON_CHARS:
        raise InvalidInput(f"The reason is limited to {MAX_REASON_CHARS:,} characters.")
    keep = photos is None
    new_photos: list[UploadedPhoto] = [] if photos is None else list(photos)
    cleaned = (text or "").strip()
    if keep and cleaned == item.description.strip():
        raise InvalidInput("Nothing changed: correct the description or give new photos.")
    # Validate and run the model before the first write: a refusal stores nothing.
    classified = classify(classifier, text=cleaned, photos=new_photos if not keep else _stored(item, photo_root))
    if not keep:
        _check_storable(new_photos)
    prediction = classified.prediction

    last = session.scalar(select(func.max(LineItemVersion.version)).where(LineItemVersion.line_item_id == item.id))
    if last is None:  # first correction: the original becomes version 1
        session.add(
            LineItemVersion(
                line_item_id=item.id, version=1, description=item.description, photos=_photo_rows(item),
                reason="original", created_by=item.created_by, created_at=item.created_at,
            )
        )  # fmt: skip
        last = 1
    item.description = classified.text
    if not keep:
        stored = [store_photo(p.data, photo_root) for p in new_photos]
        for old in list(item.photos):
            session.delete(old)
        session.flush()
        item.photos = [
            Photo(position=i, sha256=p.sha256, path=p.rel_path, mime=p.mime, width=p.width, height=p.height,
                  size_bytes=p.size_bytes)
            for i, p in enumerate(stored)
        ]  # fmt: skip
    if prediction.embedding:
        item.embedding = np.asarray(prediction.embedding, dtype=np.float32).tobytes()
    session.flush()
    session.add(
        LineItemVersion(
            line_item_id=item.id, version=last + 1, description=item.description, photos=_photo_rows(item),
            reason=why, created_by=actor.user_id,
        )
    )  # fmt: skip
    row = store_prediction(session, item.id, prediction)
    add_audit_event(
        session,
        action="item_revised",
        user_id=actor.user_id,
        username=actor.username,
        detail={"line_item_id": item.id, "version": last + 1, "prediction_id": row.id, "photos_replaced": not keep},
    )
    log.info("line item %s revised to version %s by %s", item.id, last + 1, actor.username)
    return RecordedClassification(line_item_id=item.id, prediction_id=row.id, prediction=prediction)


def _stored(item: LineItem, photo_root: Path | None) -> list[UploadedPhoto]:
    """The item's current photos, read back from the store (to re-classify with a corrected description)."""
    from db.photos import resolve_photo

    return [
        UploadedPhoto(f"photo {p.position + 1}", resolve_photo(photo_root, p.path).read_bytes()) for p in item.photos
    ]


def item_versions(session: Session, actor: Actor | None, line_item_id: int) -> list[VersionView]:
    """Every stored version of an item, oldest first (empty until it is first corrected)."""
    _, item = _own_item(session, actor, line_item_id, "see line items")
    rows = session.execute(
        select(LineItemVersion, User.username)
        .outerjoin(User, User.id == LineItemVersion.created_by)
        .where(LineItemVersion.line_item_id == item.id)
        .order_by(LineItemVersion.version)
    )
    return [VersionView(v.version, v.description, len(v.photos), v.reason, name, v.created_at) for v, name in rows]


def version_changes(session: Session, actor: Actor | None, line_item_id: int) -> list[VersionChange]:
    """What each correction of an item changed (description word diff, photos), oldest first; empty until the item
    is first corrected. For the item's broker, reviewers and admins (a reviewer sees what changed since the
    rejection)."""
    _, item = _own_item(session, actor, line_item_id, "see line items", lock=False)  # a read: no row lock
    rows = list(
        session.execute(
            select(LineItemVersion, User.username)
            .outerjoin(User, User.id == LineItemVersion.created_by)
            .where(LineItemVersion.line_item_id == item.id)
            .order_by(LineItemVersion.version)
        )
    )
    changes = []
    for (prev, _), (cur, name) in zip(rows, rows[1:], strict=False):
        before = [p.get("sha256") for p in prev.photos]
        after = [p.get("sha256") for p in cur.photos]
        changes.append(
            VersionChange(
                version=cur.version, previous=prev.version, reason=cur.reason, by=name, at=cur.created_at,
                photos_before=len(before), photos_after=len(after), photos_replaced=before != after,
                description=word_diff(prev.description, cur.description),
            )
        )  # fmt: skip
    return changes
