"""Server-side sign-in sessions: the browser keeps a random token in a cookie, the database keeps the session.

A refresh (F5) or a typed URL opens a new Streamlit session; the token in the cookie brings the signed-in user
back until the session expires (`SESSION_TTL` after sign-in) or is ended by signing out. Only the token's SHA-256
is stored, so the sessions table hands no live session to whoever reads it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta

from sqlalchemy.orm import Session

from db.models import AuthSession, User, utcnow
from db.queries import add_audit_event
from services.auth import SESSION_TTL, Actor, refresh_actor, sign_out
from services.errors import PermissionDenied

log = logging.getLogger(__name__)

COOKIE_NAME = "hs_session"
TOKEN_BYTES = 32  # 256 bits of randomness (secrets.token_urlsafe)
MAX_TOKEN_CHARS = 128  # anything longer in a cookie is not ours
LAST_SEEN_STEP = timedelta(minutes=1)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def start_session(session: Session, actor: Actor) -> str:
    """Open a server-side session for a freshly signed-in ``actor``; returns the token for the cookie."""
    refresh_actor(session, actor)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    session.add(AuthSession(id=_digest(token), user_id=actor.user_id, created_at=now, expires_at=now + SESSION_TTL))
    return token


def resume_session(session: Session, token: str | None) -> Actor | None:
    """The user a token signs in, or ``None`` when it is unknown, ended, expired, or the account changed.

    An expired session is ended here (``end_reason`` "expired"); a session whose account was deactivated or
    changed role is ended too ("account_changed"), so it cannot come back.
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    row = session.get(AuthSession, _digest(token))
    if row is None or row.ended_at is not None:
        return None
    now = utcnow()
    if row.expires_at <= now:
        _end(session, row, "expired")
        return None
    user = session.get(User, row.user_id)
    actor = Actor.from_user(user) if user is not None else None
    try:
        if actor is None or user is None:
            raise PermissionDenied("no such user")
        refresh_actor(session, actor)
        if not user.active:
            raise PermissionDenied("inactive")
    except PermissionDenied:
        _end(session, row, "account_changed")
        return None
    if now - row.last_seen_at > LAST_SEEN_STEP:  # not a write on every click
        row.last_seen_at = now
    return actor


def end_session(session: Session, token: str | None, actor: Actor | None, reason: str = "sign_out") -> None:
    """Sign out: end the token's session (it no longer signs anyone in) and record the sign-out."""
    row = session.get(AuthSession, _digest(token)) if token and len(token) <= MAX_TOKEN_CHARS else None
    if row is not None and row.ended_at is None:
        _end(session, row, reason)
    if actor is not None:
        sign_out(session, actor)


def _end(session: Session, row: AuthSession, reason: str) -> None:
    row.ended_at, row.end_reason = utcnow(), reason
    if reason != "sign_out":
        add_audit_event(session, action="session_ended", user_id=row.user_id, detail={"reason": reason})
    log.info("session of user %s ended (%s)", row.user_id, reason)
