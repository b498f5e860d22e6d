"""A short comment thread on a line item between its broker and the reviewers, kept append-only and audited.

Questions and answers ("is the lining leather?") go here instead of a reject-and-guess round trip; a decision
still needs its own reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ItemComment, LineItem
from db.queries import add_audit_event
from services.auth import Actor, refresh_actor, require_role
from services.errors import InvalidInput, NotFound, PermissionDenied

log = logging.getLogger(__name__)

MAX_COMMENT_CHARS = 2000
MAX_THREAD = 200  # comments shown per item
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
REVIEWERS = ("reviewer", "admin")


@dataclass(frozen=True)
class CommentView:
    """One comment as the thread shows it."""

    comment_id: int
    at: datetime  # aware UTC
    username: str
    role: str
    body: str


def _item_for(session: Session, actor: Actor | None, line_item_id: int, action: str) -> tuple[Actor, LineItem]:
    actor = refresh_actor(session, require_role(actor, "broker", *REVIEWERS, action=action))
    item = session.get(LineItem, line_item_id)
    if item is None:
        raise NotFound(f"Line item {line_item_id} does not exist.")
    if actor.role not in REVIEWERS and item.created_by != actor.user_id:
        raise PermissionDenied("Brokers can only comment on the line items they classified.")
    return actor, item


def add_comment(session: Session, actor: Actor | None, line_item_id: int, body: str) -> ItemComment:
    """Add a comment to an item's thread (its broker, reviewers and admins); audited as ``comment``.

    Raises:
        PermissionDenied: Not signed in, or a broker on someone else's item.
        NotFound: No such line item.
        InvalidInput: An empty or over-long comment.
    """
    actor, item = _item_for(session, actor, line_item_id, "comment on line items")
    text = _CONTROL.sub(" ", body or "").strip()
    if not text:
        raise InvalidInput("Write the comment first.")
    if len(text) > MAX_COMMENT_CHARS:
        raise InvalidInput(f"Comments are limited to {MAX_COMMENT_CHARS:,} characters; this one has {len(text):,}.")
    comment = ItemComment(line_item_id=item.id, user_id=actor.user_id, role=actor.role, body=text)
    session.add(comment)
    session.flush()
    add_audit_event(
        session,
        action="comment",
        user_id=actor.user_id,
        username=actor.username,
        detail={"line_item_id": item.id, "comment_id": comment.id, "chars": len(text)},
    )
    log.info("comment %s on line item %s by %s", comment.id, item.id, actor.username)
    return comment


def item_comments(session: Session, actor: Actor | None, line_item_id: int) -> list[CommentView]:
    """An item's comments, oldest first (who may see the item may read them)."""
    _, item = _item_for(session, actor, line_item_id, "read comments")
    stmt = select(ItemComment).where(ItemComment.line_item_id == item.id).order_by(ItemComment.id).limit(MAX_THREAD)
    return [CommentView(c.id, c.created_at, c.user.username, c.role, c.body) for c in session.scalars(stmt)]
