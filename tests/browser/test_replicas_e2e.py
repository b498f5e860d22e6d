"""Two app replicas on one PostgreSQL database behave as one app (issue 15): two ``streamlit run`` processes on two
ports, one fresh PostgreSQL schema, one Chromium.

- the sign-in throttle is the database's: five failures through replica A lock the name on replica B;
- a session signed in on A is valid on B (the cookie holds only a token; the session is a database row), and
  signing out on B ends it on A;
- a decision submitted through A is in the reviewer's queue on B.

Needs ``HS_TEST_PG_URL`` (``scripts/start_postgres.sh``) and Debian's Chromium; skipped with the reason otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import queries
from db.engine import make_engine, make_session_factory, upgrade
from db.models import AuditEvent, AuthSession
from db.testing import fresh_database
from services.auth import MAX_FAILURES, provision_user
from tests.browser.helpers import MODEL_TIMEOUT_MS, PASSWORD, SHIPPED_VERSION
from tests.ui import chromium, needs_chromium, streamlit_app

pytestmark = [pytest.mark.browser, pytest.mark.postgres]

LOAD_TIMEOUT_MS = 2 * MODEL_TIMEOUT_MS  # each replica loads its own model; on a busy 2-core VM that takes minutes


@dataclass(frozen=True)
class Replicas:
    a: str  # URL of replica A
    b: str  # URL of replica B
    factory: object  # sqlalchemy sessionmaker on the shared database
    item_id: int  # bea's classified, not yet submitted line item


def seed(factory) -> int:
    """Users (a broker to submit, one to lock out, a reviewer) and one classified line item of the broker."""
    with factory.begin() as session:
        for name, role in (("bea", "broker"), ("lou", "broker"), ("rita", "reviewer")):
            provision_user(session, name, PASSWORD, role, via="test")
    with factory.begin() as session:
        bea = queries.find_user(session, "bea")
        item = queries.create_line_item(session, description="leather handbag with shoulder strap", created_by=bea.id)
        queries.record_prediction(
            session,
            line_item_id=item.id,
            model_version="zs-test",
            nomenclature_edition="HS2022",
            latency_ms=5.0,
            needs_review=False,
            candidates=[
                {"level": 6, "rank": 1, "code": "420221", "description": "", "score": 0.86},
                {"level": 6, "rank": 2, "code": "420222", "description": "", "score": 0.08},
                {"level": 4, "rank": 1, "code": "4202", "description": "", "score": 0.95},
            ],
        )
        return item.id


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    """A fresh PostgreSQL schema, migrated and seeded, served by two app processes that share it (and, as replicas
    must, the photo store and the model registry)."""
    with fresh_database("postgres", tmp_path) as url:
        upgrade(url)
        engine = make_engine(url)
        try:
            factory = make_session_factory(engine)
            item_id = seed(factory)
            shared = {
                "HS_DB_URL": url,
                "HS_PHOTO_DIR": str(tmp_path / "photos"),
                "HS_MODEL_REGISTRY": str(tmp_path / "registry"),
            }
            with ExitStack() as stack:
                urls = []
                for name in ("a", "b"):
                    (tmp_path / name).mkdir()
                    urls.append(stack.enter_context(streamlit_app(tmp_path / name, **shared)))
                yield Replicas(urls[0], urls[1], factory, item_id)
        finally:
            engine.dispose()


def fill_sign_in(page, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def failed_sign_ins(factory, username: str) -> int:
    with factory() as session:
        return session.scalar(
            select(func.count()).where(AuditEvent.username == username, AuditEvent.action == "sign_in_failed")
        )


@needs_chromium
def test_two_replicas_share_throttle_sessions_and_the_review_queue(replicas: Replicas):
    from playwright.sync_api import expect

    a, b, item = replicas.a, replicas.b, replicas.item_id
    assert a != b
    with chromium() as browser:
        # (a) five wrong passwords for "lou" through A (a fresh browser each time: nothing carried in the page) ...
        for attempt in range(1, MAX_FAILURES + 1):
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            page.goto(a, timeout=60_000)
            fill_sign_in(page, "lou", f"wrong password {attempt}")
            expect(page.get_by_text("Invalid username or password.")).to_be_visible(timeout=60_000)
            context.close()
        assert failed_sign_ins(replicas.factory, "lou") == MAX_FAILURES
        # ... lock the name on B: refused even with the right password
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.goto(b, timeout=60_000)
        fill_sign_in(page, "lou", PASSWORD)
        expect(page.get_by_text("Too many failed sign-ins for this account")).to_be_visible(timeout=60_000)
        assert page.get_by_text("Signed in as lou").count() == 0
        context.close()

        # (c) the broker signs in on A; the same browser is signed in on B without typing anything (the cookie is
        # the host's, whatever the port, as it would be behind one load balancer)
        broker = browser.new_context(viewport={"width": 1440, "height": 900})
        on_a = broker.new_page()
        on_a.goto(a, timeout=60_000)
        fill_sign_in(on_a, "bea", PASSWORD)
        expect(on_a.get_by_text("Signed in as bea")).to_be_visible(timeout=60_000)
        # A loads its model (the sidebar names it) before B starts loading its own: one load at a time on 2 cores
        expect(on_a.get_by_text(SHIPPED_VERSION, exact=True)).to_be_visible(timeout=LOAD_TIMEOUT_MS)
        cookie = next(c for c in broker.cookies() if c["name"] == "hs_session")
        assert cookie["domain"] == "127.0.0.1"
        on_b = broker.new_page()
        on_b.goto(f"{b}/my-items", timeout=60_000)
        expect(on_b.get_by_text("Signed in as bea")).to_be_visible(timeout=60_000)
        # B loads its own model now
        expect(on_b.get_by_role("heading", name="My items")).to_be_visible(timeout=LOAD_TIMEOUT_MS)
        on_b.close()

        # (b) the broker submits the model's best code through A ...
        on_a.goto(f"{a}/my-items?item={item}", timeout=60_000)
        expect(on_a.get_by_role("heading", name="My items")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
        on_a.get_by_role("combobox", name="Subheading").click()
        on_a.get_by_role("option", name=re.compile(r"^4202\.21")).click()
        on_a.get_by_role("button", name="Submit", exact=True).click()
        expect(on_a.get_by_text(f"Submitted 4202.21 for line item #{item}")).to_be_visible(timeout=60_000)

        # ... and the reviewer finds it in the queue on B
        reviewer = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        reviewer.goto(b, timeout=60_000)
        fill_sign_in(reviewer, "rita", PASSWORD)
        expect(reviewer.get_by_role("heading", name="Review submitted codes")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
        expect(reviewer.get_by_role("heading", name=f"Line item #{item}")).to_be_visible(timeout=60_000)
        expect(reviewer.get_by_text("1 waiting, oldest first")).to_be_visible(timeout=60_000)
        expect(reviewer.get_by_text("Broker's code")).to_be_visible(timeout=60_000)

        # signing out on B ends the broker's session on A too (the session row is ended, not one process's memory)
        on_b = broker.new_page()
        on_b.goto(b, timeout=60_000)
        expect(on_b.get_by_text("Signed in as bea")).to_be_visible(timeout=60_000)
        on_b.get_by_role("button", name="Sign out").click()
        expect(on_b.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
        # A's open page still holds the token in its Streamlit session: its next click finds the session ended
        on_a.get_by_role("link", name="Classify").click()
        expect(on_a.get_by_text("Your session has ended")).to_be_visible(timeout=60_000)
        expect(on_a.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
        assert on_a.get_by_text("Signed in as bea").count() == 0

    with replicas.factory() as session:
        bea = queries.find_user(session, "bea")
        ended = [s.end_reason for s in session.scalars(select(AuthSession).where(AuthSession.user_id == bea.id))]
        state = queries.current_state(session, item)
    assert ended == ["sign_out"]  # one session, used on both replicas
    assert state.status == "submitted" and state.submitted_code == "420221"
