"""In Chromium, with the shipped model: an admin imports a classification history (a bad file first: nothing is
imported and every problem is listed), then classifies a product of that history and sees the record first."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import func, select

from db.models import HistoryMatch, HistoryRow
from tests.browser.helpers import MODEL_TIMEOUT_MS, PASSWORD, SCREENSHOTS, SHIPPED_VERSION
from tests.ui import needs_chromium, screenshot_full_app

pytestmark = pytest.mark.browser


@needs_chromium
def test_admin_imports_a_history_and_classify_answers_from_it(app_db, page, tmp_path):
    from playwright.sync_api import expect

    app_db.add_user("ada", "admin", PASSWORD)
    page.get_by_label("Username").fill("ada")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(SHIPPED_VERSION, exact=True)).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    page.get_by_role("link", name="Classification history").click()
    expect(page.get_by_role("heading", name="Classification history")).to_be_visible(timeout=60_000)

    bad = tmp_path / "bad.csv"
    bad.write_text("description,code\n,610910\nleather wallet,999999\n", encoding="utf-8")
    page.locator("[data-testid='stFileUploader'] input[type='file']").nth(0).set_input_files(bad)
    page.get_by_role("button", name="Check the file").click()
    expect(page.get_by_text("2 problem(s) in bad.csv")).to_be_visible(timeout=60_000)

    good = tmp_path / "firm.csv"
    good.write_text("description,code,sku,importer\nmen's knitted cotton T-shirt,6109.10.00,TS-1,ACME\n", "utf-8")
    page.locator("[data-testid='stFileUploader'] input[type='file']").nth(0).set_input_files(good)
    expect(page.get_by_text("firm.csv")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("2 problem(s) in bad.csv")).to_have_count(0, timeout=30_000)  # a new file: checked anew
    page.get_by_role("button", name="Check the file").click()
    expect(page.get_by_text("1 line(s) of firm.csv are ready to import")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Import 1 line(s)").click()
    expect(page.get_by_text("Imported 1 line(s) of firm.csv as import #1")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    if os.environ.get("HS_SCREENSHOTS") == "1":
        screenshot_full_app(page, SCREENSHOTS / "history.png")

    page.get_by_role("link", name="Classify").click()
    description = page.get_by_label("Product description")
    description.fill("Men's knitted cotton t-shirt")
    description.press("Control+Enter")
    page.get_by_role("button", name="Classify").click()
    expect(page.get_by_text("Candidates for line item #1")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    expect(page.get_by_text("From the record: 6109.10")).to_be_visible()
    expect(page.get_by_text("line 2 of firm.csv, imported on")).to_be_visible()
    if os.environ.get("HS_SCREENSHOTS") == "1":
        screenshot_full_app(page, SCREENSHOTS / "classify_record.png")
    with app_db.factory() as session:
        assert session.scalar(select(func.count()).select_from(HistoryRow)) == 1
        assert session.scalars(select(HistoryMatch.code)).all() == ["610910"]
