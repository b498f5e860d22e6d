"""In Chromium: a refresh keeps the user signed in on the same item; sign-out ends it; a link to a review item opens
after sign-in (issue 12 point 4). The refusals of pages outside a role stay in tests/reliability/."""

from __future__ import annotations

import re

import pytest

from db.models import AuthSession
from tests.browser.test_bulk_approval_e2e import seed
from tests.ui import chromium, needs_chromium

pytestmark = pytest.mark.browser

MODEL_TIMEOUT_MS = 240_000


def sign_in(page, username: str) -> None:
    from playwright.sync_api import expect

    from tests.browser.helpers import PASSWORD

    page.get_by_label("Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"Signed in as {username}")).to_be_visible(timeout=MODEL_TIMEOUT_MS)


@needs_chromium
def test_refresh_keeps_the_session_and_the_item_and_sign_out_ends_it(app_db, server):
    from playwright.sync_api import expect

    ids = sorted(seed(app_db).values())
    second = ids[1]
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.goto(server, timeout=60_000)
        sign_in(page, "rita")
        expect(page.get_by_role("heading", name="Review submitted codes")).to_be_visible(timeout=60_000)
        cookie = next(c for c in context.cookies() if c["name"] == "hs_session")
        assert cookie["sameSite"] == "Strict" and len(cookie["value"]) >= 40
        page.get_by_role("combobox", name="waiting, oldest first").click()
        page.get_by_role("option", name=f"#{second} ").click()
        expect(page.get_by_role("heading", name=f"Line item #{second}")).to_be_visible(timeout=60_000)
        # the address follows the open item (Review is the reviewer's first page, so it may be "/")
        expect(page).to_have_url(re.compile(rf"^{re.escape(server)}/(review)?\?item={second}$"), timeout=30_000)

        page.reload()  # F5: a new Streamlit session, the same server-side session
        expect(page.get_by_text("Signed in as rita")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("heading", name=f"Line item #{second}")).to_be_visible(timeout=60_000)
        assert page.get_by_role("dialog").count() == 0

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
        page.reload()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
        assert page.get_by_text("Signed in as rita").count() == 0

        other = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()  # a link, signed out
        other.goto(f"{server}/review?item={second}", timeout=60_000)
        other.get_by_label("Username").wait_for(timeout=60_000)
        expect(other.get_by_role("dialog")).to_have_count(0)  # no "Page not found" pop-up over the sign-in screen
        sign_in(other, "rita")
        expect(other.get_by_role("heading", name=f"Line item #{second}")).to_be_visible(timeout=60_000)
    with app_db.factory() as session:
        ended = [s.end_reason for s in session.query(AuthSession).order_by(AuthSession.created_at)]
    assert ended == ["sign_out", None]


REFUSE_COOKIES = (
    "Object.defineProperty(Document.prototype, 'cookie', {get() { return ''; }, set(v) {}, configurable: true});"
)


@needs_chromium
def test_sign_in_completes_only_once_the_browser_holds_the_session_cookie(app_db, server):
    """The signed-in app appears only in a session that signed in from the cookie, so a reconnect or an F5 right after
    sign-in cannot find the user signed in without one (it used to show the sign-in form again, with no notice)."""
    from playwright.sync_api import expect

    from tests.browser.helpers import PASSWORD

    app_db.add_user("bea", "broker", PASSWORD)
    with chromium() as browser:
        refusing = browser.new_context(viewport={"width": 1440, "height": 900})
        refusing.add_init_script(REFUSE_COOKIES)  # a browser that keeps no cookie for this site
        page = refusing.new_page()
        page.goto(server, timeout=60_000)
        page.get_by_label("Username").fill("bea")
        page.get_by_role("textbox", name="Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("allow cookies for it")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
        assert page.get_by_text("Signed in as bea").count() == 0  # no signed-in app that a refresh would lose
        page.reload()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)

        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.goto(server, timeout=60_000)
        sign_in(page, "bea")
        assert any(c["name"] == "hs_session" for c in page.context.cookies())
        page.reload()  # at once: still signed in
        expect(page.get_by_text("Signed in as bea")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("heading", name="Classify a product")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
