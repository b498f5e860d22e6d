"""In Chromium: the reviewer's bulk approval offers only agreements confident at 6 digits (issue 12 point 3).

Three submissions agree with the model's best subheading and sit in a heading the model is sure of; only the one
whose subheading itself is above the threshold, with no near tie, is offered for bulk approval.
"""

from __future__ import annotations

import pytest

from db import queries
from services import decisions
from services.auth import Actor
from tests.browser.helpers import MODEL_TIMEOUT_MS, PASSWORD
from tests.ui import needs_chromium

pytestmark = pytest.mark.browser

CASES = {
    "confident leather handbag": [("420221", 0.86), ("420222", 0.08)],
    "handbag at fifty percent": [("420221", 0.50), ("640399", 0.20)],
    "handbag in a near tie": [("420221", 0.55), ("420222", 0.41)],
}


def seed(app_db) -> dict[str, int]:
    app_db.add_user("bea", "broker", PASSWORD)
    app_db.add_user("rita", "reviewer", PASSWORD)
    ids = {}
    with app_db.factory.begin() as session:
        bea = queries.find_user(session, "bea")
        actor = Actor(user_id=bea.id, username="bea", role="broker")
        for text, sixes in CASES.items():
            item = queries.create_line_item(session, description=text, created_by=bea.id)
            queries.record_prediction(
                session,
                line_item_id=item.id,
                model_version="zs-test",
                nomenclature_edition="HS2022",
                latency_ms=5.0,
                needs_review=False,
                candidates=[
                    {"level": 6, "rank": rank, "code": code, "description": "", "score": score}
                    for rank, (code, score) in enumerate(sixes, 1)
                ]
                + [{"level": 4, "rank": 1, "code": "4202", "description": "", "score": 0.95}],
            )
            decisions.submit(session, actor, item.id, sixes[0][0])
            ids[text] = item.id
    return ids


@needs_chromium
def test_bulk_approval_offers_only_six_digit_confident_agreements(app_db, page):
    from playwright.sync_api import expect

    ids = seed(app_db)
    page.get_by_label("Username").fill("rita")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Review submitted codes")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    page.get_by_role("tab", name="Bulk approve (1)").click()
    boxes = page.locator("[data-testid='stCheckbox']").filter(has_not_text="Tick all")
    expect(boxes).to_have_count(1)
    expect(boxes.first).to_contain_text(f"#{ids['confident leather handbag']}")
    expect(boxes.first).to_contain_text("86%")
    boxes.first.click()
    page.get_by_role("button", name="Approve ticked items").click()
    expect(page.get_by_text("Approved 1")).to_be_visible(timeout=60_000)
    with app_db.factory() as session:
        states = {text: queries.current_state(session, i).status for text, i in ids.items()}
    assert states == {
        "confident leather handbag": "approved",
        "handbag at fifty percent": "submitted",
        "handbag in a near tie": "submitted",
    }
