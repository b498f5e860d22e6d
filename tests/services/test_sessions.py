"""Server-side sign-in sessions: a token resumes its user until sign-out or expiry (issue 12 point 4)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from db.models import AuditEvent, AuthSession, User
from services import sessions
from services.auth import SESSION_TTL


def test_a_token_resumes_its_user_until_sign_out(factory, actors):
    with factory.begin() as s:
        token = sessions.start_session(s, actors["broker"])
    with factory.begin() as s:
        assert sessions.resume_session(s, token) == actors["broker"]
        stored = s.scalars(select(AuthSession)).one()
        assert token not in (stored.id, str(stored.__dict__))  # only the digest is stored
        assert stored.expires_at - stored.created_at == SESSION_TTL
    with factory.begin() as s:
        sessions.end_session(s, token, actors["broker"])
    with factory.begin() as s:
        assert sessions.resume_session(s, token) is None
        assert s.scalars(select(AuthSession.end_reason)).one() == "sign_out"
        assert s.scalars(select(AuditEvent.action).order_by(AuditEvent.id.desc())).first() == "sign_out"


def test_unknown_expired_and_changed_accounts_resume_nobody(factory, actors):
    with factory.begin() as s:
        assert sessions.resume_session(s, None) is None
        assert sessions.resume_session(s, "not-a-token") is None
        assert sessions.resume_session(s, "x" * 5000) is None
        expired = sessions.start_session(s, actors["broker"])
        changed = sessions.start_session(s, actors["reviewer"])
    with factory.begin() as s:
        row = s.get(AuthSession, sessions._digest(expired))
        row.expires_at = row.created_at - timedelta(seconds=1)
        s.get(User, actors["reviewer"].user_id).active = False
    with factory.begin() as s:
        assert sessions.resume_session(s, expired) is None
        assert sessions.resume_session(s, changed) is None
    with factory() as s:
        reasons = {r.user_id: r.end_reason for r in s.scalars(select(AuthSession))}
    assert reasons == {actors["broker"].user_id: "expired", actors["reviewer"].user_id: "account_changed"}
