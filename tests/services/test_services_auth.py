"""Passwords, sign-in throttling, user creation rights, and role messages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from db.engine import run_transaction
from db.models import AuditEvent, User
from services import auth
from services.auth import Actor, authenticate, create_user, require_role, sign_out
from services.errors import InvalidInput, PermissionDenied

PASSWORD = "correct horse battery"


def test_hash_is_not_the_password_and_verifies(real_hasher):
    hashed = auth.hash_password(PASSWORD)
    assert PASSWORD not in hashed and hashed.startswith("$argon2id$")
    assert auth.hash_password(PASSWORD) != hashed  # salted
    assert auth.verify_password(hashed, PASSWORD)
    assert not auth.verify_password(hashed, PASSWORD + "!")
    assert not auth.verify_password("not-a-hash", PASSWORD)


def test_require_role_messages():
    broker = Actor(1, "bea", "broker")
    assert require_role(broker, "broker", action="submit") is broker
    with pytest.raises(PermissionDenied, match=r"^Only reviewers and admins can approve decisions\.$"):
        require_role(broker, "reviewer", "admin", action="approve decisions")
    with pytest.raises(PermissionDenied, match=r"^Only admins can export\.$"):
        require_role(broker, "admin", action="export")
    with pytest.raises(PermissionDenied, match=r"^Please sign in to export\.$"):
        require_role(None, "admin", action="export")


def test_bootstrap_then_admin_only(factory):
    with factory.begin() as s:
        with pytest.raises(InvalidInput, match="first user must be an admin"):
            create_user(s, None, "bea", PASSWORD, "broker")
        admin = Actor.from_user(create_user(s, None, "Ada", PASSWORD, "admin"))
        assert admin.username == "ada"
    with factory.begin() as s:
        with pytest.raises(PermissionDenied, match="sign in to create users"):
            create_user(s, None, "eve", PASSWORD, "admin")
        broker = Actor.from_user(create_user(s, admin, "bea", PASSWORD, "broker"))
        reviewer = Actor.from_user(create_user(s, admin, "rey", PASSWORD, "reviewer"))
        for actor in (broker, reviewer):
            with pytest.raises(PermissionDenied, match="Only admins can create users"):
                create_user(s, actor, "eve", PASSWORD, "admin")
        with pytest.raises(InvalidInput, match="taken"):
            create_user(s, admin, "BEA", PASSWORD, "broker")
        with pytest.raises(InvalidInput, match="at least 10"):
            create_user(s, admin, "sam", "short", "broker")
        with pytest.raises(InvalidInput, match="Role"):
            create_user(s, admin, "sam", PASSWORD, "boss")
        with pytest.raises(InvalidInput, match="Usernames"):
            create_user(s, admin, "a b", PASSWORD, "broker")
    with factory() as s:
        hashes = s.scalars(select(User.password_hash)).all()
        assert len(hashes) == 3 and all(PASSWORD not in h for h in hashes)
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "user_created")).all()
        assert len(events) == 3 and all(PASSWORD not in str(e.detail) for e in events)


def test_authenticate_and_sign_out(factory):
    with factory.begin() as s:
        create_user(s, None, "ada", PASSWORD, "admin")
    with factory.begin() as s:
        actor = authenticate(s, " ADA ", PASSWORD)
        assert actor.username == "ada" and actor.role == "admin"
        sign_out(s, actor)
    with factory() as s:
        actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert actions == ["user_created", "sign_in", "sign_out"]
    assert timedelta(hours=8) == auth.SESSION_TTL


def test_failures_are_audited_even_though_the_caller_rolls_back(factory):
    with factory.begin() as s:
        create_user(s, None, "ada", PASSWORD, "admin")
    for name, password in [("ada", "wrong password!"), ("nobody", PASSWORD)]:
        with pytest.raises(PermissionDenied, match=r"^Invalid username or password\.$"):
            run_transaction(factory, lambda s, n=name, p=password: authenticate(s, n, p))
    with factory() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "sign_in_failed")).all()
        assert [(e.username, e.detail["reason"]) for e in events] == [
            ("ada", "bad_password"),
            ("nobody", "unknown_user"),
        ]
        assert all(PASSWORD not in str(e.detail) and "wrong password" not in str(e.detail) for e in events)


def test_throttling_after_repeated_failures(factory, monkeypatch):
    with factory.begin() as s:
        admin = Actor.from_user(create_user(s, None, "ada", PASSWORD, "admin"))
        create_user(s, admin, "bea", PASSWORD, "broker")
    for _ in range(auth.MAX_FAILURES):
        with factory.begin() as s, pytest.raises(PermissionDenied, match="Invalid"):
            authenticate(s, "ada", "not the password")
    with factory.begin() as s, pytest.raises(PermissionDenied, match="Too many failed sign-ins.*15 minute"):
        authenticate(s, "ada", PASSWORD)  # even the right password is refused now
    with factory.begin() as s:
        assert authenticate(s, "bea", PASSWORD).username == "bea"  # other accounts unaffected
    # Once the window has passed, the right password works again.
    monkeypatch.setattr(auth, "FAILURE_WINDOW", timedelta(seconds=0))
    with factory.begin() as s:
        assert authenticate(s, "ada", PASSWORD).role == "admin"
    with factory() as s:
        assert s.scalars(select(AuditEvent.action).where(AuditEvent.action == "sign_in_throttled")).all() == [
            "sign_in_throttled"
        ]


def test_inactive_user_cannot_sign_in(factory):
    with factory.begin() as s:
        admin = Actor.from_user(create_user(s, None, "ada", PASSWORD, "admin"))
        create_user(s, admin, "bea", PASSWORD, "broker")
        auth.set_user_active(s, admin, "bea", False)
        with pytest.raises(InvalidInput, match="your own account"):
            auth.set_user_active(s, admin, "ada", False)
    with factory.begin() as s, pytest.raises(PermissionDenied, match="Invalid username or password"):
        authenticate(s, "bea", PASSWORD)
