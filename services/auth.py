"""Sign-in, roles and users: argon2 password hashes, throttled failures, and the ``Actor`` services check."""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import ROLES, AuditEvent, SignInGuard, User, utcnow
from db.queries import add_audit_event, add_user, count_users, find_user, normalise_username
from hs_core.text import LINE_CONTROL_CHARACTERS
from services.errors import InvalidInput, PermissionDenied

log = logging.getLogger(__name__)

SESSION_TTL = timedelta(hours=8)  # the UI signs people out after this
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
MAX_FAILURES = 5  # failed sign-ins per username within FAILURE_WINDOW before sign-in is refused
FAILURE_WINDOW = timedelta(minutes=15)
_USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@-]{2,63}$")
MAX_USERNAME_LENGTH = 64  # users.username and audit_events.username are String(64)
# Sign-ins for one username run one at a time, so parallel guesses cannot all be checked before the first
# failure is recorded: in this process by a striped lock (cheap), across processes by the username's row in
# sign_in_guards, locked for the whole attempt (see `_guarded`).
_SIGN_IN_LOCKS = tuple(threading.Lock() for _ in range(64))
_ROLE_PLURALS = {"broker": "brokers", "reviewer": "reviewers", "admin": "admins"}
_hasher = PasswordHasher()  # immutable parameters; safe to share


@dataclass(frozen=True)
class Actor:
    """Who is calling a service: the signed-in user as of sign-in."""

    user_id: int
    username: str
    role: str

    @classmethod
    def from_user(cls, user: User) -> Actor:
        """Build an actor from a user row."""
        return cls(user_id=user.id, username=user.username, role=user.role)


def hash_password(password: str) -> str:
    """Return an argon2id hash of ``password`` (salted; never equal to the password)."""
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Tell whether ``password`` matches ``password_hash``; malformed hashes simply do not match."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    # Verifying against this for unknown usernames keeps the time of a failure the same.
    return _hasher.hash("not a real password, only here to spend the same time")


def _role_phrase(roles: tuple[str, ...]) -> str:
    names = [_ROLE_PLURALS.get(r, r + "s") for r in roles]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def require_role(actor: Actor | None, *roles: str, action: str = "do this") -> Actor:
    """Return ``actor`` if it holds one of ``roles``.

    Args:
        actor: The signed-in user, or ``None``.
        *roles: Roles allowed to act.
        action: What is being attempted, for the message ("approve decisions").

    Raises:
        PermissionDenied: "Please sign in to approve decisions." or "Only reviewers and admins can
            approve decisions."
    """
    if actor is None:
        raise PermissionDenied(f"Please sign in to {action}.")
    if actor.role not in roles:
        raise PermissionDenied(f"Only {_role_phrase(roles)} can {action}.")
    return actor


def refresh_actor(session: Session, actor: Actor) -> Actor:
    """Check the actor against the database (still there, still active, same role).

    Raises:
        PermissionDenied: The account was removed, deactivated or changed role since sign-in.
    """
    user = session.get(User, actor.user_id)
    if user is None or not user.active or user.role != actor.role or user.username != actor.username:
        raise PermissionDenied("Your account has changed since you signed in; please sign in again.")
    return actor


def _validate_new_user(session: Session, username: str, password: str, role: str) -> str:
    name = normalise_username(username)
    if not _USERNAME_RE.match(name):
        raise InvalidInput("Usernames are 3-64 characters: letters, digits, '.', '_', '-' or '@'.")
    if role not in ROLES:
        raise InvalidInput(f"Role must be one of: {', '.join(ROLES)}.")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"Passwords must be at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"Passwords must be at most {MAX_PASSWORD_LENGTH} characters.")
    if find_user(session, name) is not None:
        raise InvalidInput(f"The username {name!r} is taken.")
    return name


def create_user(session: Session, actor: Actor | None, username: str, password: str, role: str) -> User:
    """Create a user. Admins only, except the very first user (an admin) when there are no users.

    Raises:
        PermissionDenied: Not an admin (and not bootstrapping).
        InvalidInput: Bad username, role or password, or the username is taken.
    """
    bootstrap = actor is None and count_users(session) == 0
    if not bootstrap:
        actor = require_role(actor, "admin", action="create users")
        refresh_actor(session, actor)
    elif role != "admin":
        raise InvalidInput("The first user must be an admin.")
    name = _validate_new_user(session, username, password, role)
    user = add_user(session, username=name, role=role, password_hash=hash_password(password))
    add_audit_event(
        session,
        action="user_created",
        user_id=actor.user_id if actor else None,
        username=actor.username if actor else None,
        detail={"created_user_id": user.id, "created_username": name, "role": role, "bootstrap": bootstrap},
    )
    log.info("user %s created with role %s", name, role)
    return user


def provision_user(
    session: Session, username: str, password: str, role: str, *, via: str, operator: str | None = None
) -> User:
    """Create a user on behalf of an operator with direct database access (``python -m db users create``).

    Skips the admin check (whoever runs it can already write the database) but validates and audits the same way.
    """
    name = _validate_new_user(session, username, password, role)
    user = add_user(session, username=name, role=role, password_hash=hash_password(password))
    detail = {"created_user_id": user.id, "created_username": name, "role": role, "via": via, "operator": operator}
    add_audit_event(session, action="user_created", detail=detail)
    return user


def set_user_active(session: Session, actor: Actor | None, username: str, active: bool) -> User:
    """Activate or deactivate a user (admins only; admins cannot deactivate themselves)."""
    actor = require_role(actor, "admin", action="manage users")
    refresh_actor(session, actor)
    user = find_user(session, username)
    if user is None:
        raise InvalidInput(f"No user called {normalise_username(username)!r}.")
    if user.id == actor.user_id and not active:
        raise InvalidInput("You cannot deactivate your own account.")
    user.active = active
    add_audit_event(
        session,
        action="user_updated",
        user_id=actor.user_id,
        username=actor.username,
        detail={"target_username": user.username, "active": active},
    )
    return user


def _failure_times(session: Session, username: str, now: datetime) -> list[datetime]:
    """Failed sign-ins for ``username`` inside the window and after its last successful sign-in."""
    last_ok = session.scalar(
        select(func.max(AuditEvent.at)).where(AuditEvent.username == username, AuditEvent.action == "sign_in")
    )
    since = now - FAILURE_WINDOW
    if last_ok is not None and last_ok > since:
        since = last_ok
    stmt = (
        select(AuditEvent.at)
        .where(AuditEvent.username == username, AuditEvent.action == "sign_in_failed", AuditEvent.at > since)
        .order_by(AuditEvent.at.desc())
        .limit(MAX_FAILURES)
    )
    return list(session.scalars(stmt))


@contextmanager
def _guarded(session: Session, name: str) -> Iterator[Session]:
    """A transaction of its own that holds the lock on ``name``'s guard row until it ends (committed either way).

    Everything a sign-in writes (the failure, the throttle, the success) goes through it, so the caller's
    transaction rolling back on the raised refusal loses nothing. On PostgreSQL the UPDATE takes the row lock
    (other names are not held up); on SQLite the transaction begins IMMEDIATE, so it holds the write lock.
    """
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        bind = bind.execution_options(sqlite_begin="IMMEDIATE")
    key = name[:MAX_USERNAME_LENGTH]
    with Session(bind=bind) as own:
        own.begin()
        try:
            if own.get(SignInGuard, key) is None:
                try:
                    with own.begin_nested():
                        own.add(SignInGuard(username=key))
                except IntegrityError:  # another process added it first
                    pass
            own.execute(update(SignInGuard).where(SignInGuard.username == key).values(last_attempt_at=utcnow()))
            yield own
        except PermissionDenied:
            own.commit()  # the refusal is the answer: keep the failure it recorded
            raise
        except BaseException:
            own.rollback()
            raise
        else:
            own.commit()


def authenticate(session: Session, username: str, password: str) -> Actor:
    """Check a username and password and return the signed-in ``Actor``.

    After ``MAX_FAILURES`` failures within ``FAILURE_WINDOW`` the account is refused until the window
    passes, even with the right password. Failures are audited (``sign_in_failed``, or
    ``sign_in_throttled``) in their own transaction; the password is never stored or logged. Attempts on
    one username run one at a time, in this process and across every app process on the database (the
    username's ``sign_in_guards`` row is locked for the attempt), so parallel guesses cannot all be checked
    before the first failure is counted. Everything it writes goes through that own transaction: call it in a
    transaction that has written nothing (``run_transaction``).

    Raises:
        PermissionDenied: Wrong username or password, inactive account, or too many failures.
    """
    typed = normalise_username(username or "")
    # No user has control characters or more than 64 characters in their name; keep such input out of the
    # queries and the audit trail as typed (PostgreSQL refuses NUL and over-long values: a DataError).
    name = LINE_CONTROL_CHARACTERS.sub("", typed)[:MAX_USERNAME_LENGTH]
    with _SIGN_IN_LOCKS[zlib.crc32(name.encode()) % len(_SIGN_IN_LOCKS)], _guarded(session, name) as guarded:
        return _authenticate(guarded, name, password, impossible=name != typed)


def _authenticate(session: Session, name: str, password: str, *, impossible: bool) -> Actor:
    now = utcnow()
    failures = _failure_times(session, name, now)
    if len(failures) >= MAX_FAILURES:
        wait_s = (failures[MAX_FAILURES - 1] + FAILURE_WINDOW - now).total_seconds()
        minutes = max(1, math.ceil(wait_s / 60))
        add_audit_event(session, action="sign_in_throttled", username=name or None, detail={})
        log.warning("sign-in refused for %r: too many failures", name)
        raise PermissionDenied(f"Too many failed sign-ins for this account. Try again in {minutes} minute(s).")

    user = find_user(session, name) if name and not impossible else None
    if user is None:
        verify_password(_dummy_hash(), password or "")
        reason = "unknown_user"
    elif not verify_password(user.password_hash, password or ""):
        reason = "bad_password"
    elif not user.active:
        reason = "inactive"
    else:
        reason = None
    if reason is not None:
        add_audit_event(
            session,
            action="sign_in_failed",
            user_id=user.id if user else None,
            username=name or None,
            detail={"reason": reason},
        )
        log.info("sign-in failed for %r (%s)", name, reason)
        raise PermissionDenied("Invalid username or password.")
    assert user is not None  # reason is None only for a found user

    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    add_audit_event(session, action="sign_in", user_id=user.id, username=user.username)
    return Actor.from_user(user)


def sign_out(session: Session, actor: Actor) -> None:
    """Record that ``actor`` signed out (the UI clears its own session state)."""
    add_audit_event(session, action="sign_out", user_id=actor.user_id, username=actor.username)
