"""In Chromium: a broker answers the reviewer in the item's comment thread and corrects a rejected item's
description as a new version, the old one kept (issue 12 points 2 and 12)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import ItemComment, LineItem, LineItemVersion
from db.queries import find_user
from services import decisions
from services.auth import Actor
from services.classify import UploadedPhoto, classify_and_record
from services.comments import add_comment
from tests.browser.helpers import MODEL_TIMEOUT_MS, PASSWORD
from tests.services.test_review_service import png
from tests.test_app_classify import FakeClassifier
from tests.ui import needs_chromium

pytestmark = pytest.mark.browser


def rejected_item(app_db) -> int:
    app_db.add_user("bea", "broker", PASSWORD)
    app_db.add_user("rita", "reviewer", PASSWORD)
    with app_db.factory.begin() as s:
        bea, rita = (Actor.from_user(find_user(s, n)) for n in ("bea", "rita"))
        recorded = classify_and_record(
            s, FakeClassifier(), bea, text="cotton T-shirt", photos=[UploadedPhoto("a.png", png())],
            photo_root=app_db.photo_dir,
        )  # fmt: skip
        decisions.submit(s, bea, recorded.line_item_id, "610910")
        add_comment(s, rita, recorded.line_item_id, "Is the fabric really cotton?")
        decisions.reject(s, rita, recorded.line_item_id, "The label says polyester.")
    return recorded.line_item_id


@needs_chromium
def test_broker_answers_in_the_thread_and_corrects_the_description(app_db, page):
    from playwright.sync_api import expect

    item_id = rejected_item(app_db)
    page.get_by_label("Username").fill("bea")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="My items").click(timeout=MODEL_TIMEOUT_MS)
    expect(page.get_by_text("Rejected: The label says polyester.")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    expect(page.get_by_text("Is the fabric really cotton?")).to_be_visible()

    reply = page.get_by_label("Add a comment")
    reply.fill("You are right: 100 % polyester.")
    page.get_by_role("button", name="Post comment").click()
    expect(page.get_by_text("You are right: 100 % polyester.")).to_be_visible(timeout=60_000)

    page.get_by_text("Correct the description or photos").click()
    page.get_by_label("Description", exact=True).fill("men's knitted polyester T-shirt")
    page.get_by_label("What you corrected (required, kept with the version)").fill("material from the label")
    page.get_by_role("button", name="Save as a new version and classify again").click()
    expect(page.get_by_text(f"Line item #{item_id} corrected and classified again")).to_be_visible(
        timeout=MODEL_TIMEOUT_MS
    )
    expect(page.get_by_text("Versions (the latest is shown above)")).to_be_visible()

    with app_db.factory() as s:
        item = s.get(LineItem, item_id)
        versions = s.scalars(select(LineItemVersion).order_by(LineItemVersion.version)).all()
        comments = s.scalars(select(ItemComment).order_by(ItemComment.id)).all()
    assert item.description == "men's knitted polyester T-shirt" and len(item.photos) == 1  # photo kept
    assert [(v.version, v.description, v.reason) for v in versions] == [
        (1, "cotton T-shirt", "original"),
        (2, "men's knitted polyester T-shirt", "material from the label"),
    ]
    assert [(c.role, c.body) for c in comments] == [
        ("reviewer", "Is the fabric really cotton?"),
        ("broker", "You are right: 100 % polyester."),
    ]
