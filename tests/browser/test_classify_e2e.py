"""End to end in a real Chromium: sign in, describe and photograph a product, classify, submit, find the decision row.

Runs ``streamlit run app.py`` with the shipped model (tests/browser/conftest.py; the first start embeds the label
texts: about a minute on a 2-core box, cached under var/cache after). Set ``HS_SCREENSHOTS=1`` to refresh
``docs/screenshots/classify.png``.
"""

from __future__ import annotations

import os
import re

import pytest
from sqlalchemy import select

from db.models import Decision, LineItem, Photo
from tests.browser.helpers import (
    PASSWORD,
    SCREENSHOTS,
    SHIPPED_VERSION,
    classify,
    product_photo,
    sign_in_and_describe,
    upload,
    upload_photo,
)
from tests.ui import needs_chromium, screenshot_full_app

pytestmark = pytest.mark.browser

SCREENSHOT = SCREENSHOTS / "classify.png"


@needs_chromium
def test_broker_classifies_and_submits(app_db, page, tmp_path):
    from playwright.sync_api import expect

    app_db.add_user("bea", "broker", PASSWORD)
    sign_in_and_describe(page, "men's knitted cotton T-shirt")
    upload_photo(page, product_photo(tmp_path))

    classify(page)
    expect(page.locator("[data-testid='stMetricValue']")).to_have_count(3)
    expect(page.get_by_text("Official path of")).to_be_visible()
    if os.environ.get("HS_SCREENSHOTS") == "1":
        screenshot_full_app(page, SCREENSHOT)

    decision_radio = page.locator("[data-testid='stRadio']").filter(has_text="Code to submit")
    options = decision_radio.locator("label").filter(has_text=re.compile(r"\d{4}\.\d{2} — "))
    expect(options).not_to_have_count(0)
    choice = options.nth(1)  # the second candidate, not the default
    chosen = re.search(r"\d{4}\.\d{2}", choice.inner_text()).group(0).replace(".", "")
    choice.click()
    justification = page.get_by_label("Justification", exact=True)
    justification.fill("Knitted cotton, crew neck, short sleeves.")
    justification.press("Control+Enter")
    page.get_by_role("button", name="Submit", exact=True).click()
    confirmation = page.locator("[data-testid='stAlertContentSuccess']")
    expect(confirmation).to_contain_text("decision #", timeout=60_000)
    decision_id = int(re.search(r"decision #(\d+)", confirmation.inner_text()).group(1))

    with app_db.factory() as session:
        decision = session.get(Decision, decision_id)
        item = session.scalars(select(LineItem)).one()
        photos = session.scalars(select(Photo)).all()
    assert (decision.kind, decision.code, decision.line_item_id) == ("submitted", chosen, item.id)
    assert decision.comment == "Knitted cotton, crew neck, short sleeves."
    assert decision.model_version == SHIPPED_VERSION
    assert item.description == "men's knitted cotton T-shirt"
    assert len(photos) == 1 and (app_db.photo_dir / photos[0].path).is_file()


@needs_chromium
def test_a_file_that_is_not_a_photo_gets_one_clear_error(app_db, page, tmp_path):
    from playwright.sync_api import expect

    app_db.add_user("bea", "broker", PASSWORD)
    fake = tmp_path / "label.jpg"
    fake.write_text("<html><body><script>alert('x')</script></body></html>")
    sign_in_and_describe(page, "cotton T-shirt")
    upload(page, fake)
    expect(page.get_by_text("label.jpg", exact=True)).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Classify").click()
    error = page.locator("[data-testid='stAlertContentError']")
    expect(error).to_contain_text("label.jpg: this is not an image file (use JPEG, PNG or WebP).", timeout=60_000)
    expect(error).to_have_count(1)
    expect(page.locator("[data-testid='stException']")).to_have_count(0)
    with app_db.factory() as session:
        assert session.scalars(select(LineItem)).first() is None
