"""In Chromium: "Classify another product" starts from an empty form, and the next item stores only what is shown.

Issue 12 point 1: the description box kept the previous product's text (while its counter said 0) and the line
reference stayed, so a photo added next was stored with the previous description and line reference.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import LineItem, Photo
from tests.browser.helpers import (
    MODEL_TIMEOUT_MS,
    PASSWORD,
    classify,
    product_photo,
    sign_in_and_describe,
    upload_photo,
)
from tests.ui import needs_chromium

pytestmark = pytest.mark.browser


@needs_chromium
def test_classify_another_product_starts_empty_and_stores_what_is_shown(app_db, page, tmp_path):
    from playwright.sync_api import expect

    app_db.add_user("bea", "broker", PASSWORD)
    sign_in_and_describe(page, "men's knitted cotton T-shirt")
    page.get_by_label("Shipment reference (optional)").fill("SHIP-1")
    line = page.get_by_label("Line reference (optional)")
    line.fill("L-7")
    line.press("Enter")
    classify(page)
    expect(page.get_by_text("Stored as line item #1")).to_contain_text("line L-7")
    page.get_by_role("button", name="Submit", exact=True).click()
    page.get_by_role("button", name="Classify another product").click()

    expect(page.get_by_label("Product description")).to_have_value("")
    expect(page.get_by_text("0 / 20,000 characters")).to_be_visible()
    expect(page.get_by_label("Shipment reference (optional)")).to_have_value("")
    expect(page.get_by_label("Line reference (optional)")).to_have_value("")
    expect(page.get_by_text("Candidates for line item")).to_have_count(0)

    upload_photo(page, product_photo(tmp_path))  # a photo only, nothing typed
    page.get_by_role("button", name="Classify").click()
    expect(page.get_by_text("Candidates for line item #2")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    expect(page.get_by_text("Stored as line item #2")).to_contain_text("no description")
    expect(page.get_by_label("Product description")).to_have_value("")

    with app_db.factory() as session:
        first, second = session.scalars(select(LineItem).order_by(LineItem.id)).all()
        photos = session.scalars(select(Photo).where(Photo.line_item_id == second.id)).all()
    assert (first.description, first.line_ref) == ("men's knitted cotton T-shirt", "L-7")
    assert (second.description, second.line_ref, second.shipment_id) == ("", None, None)
    assert len(photos) == 1
