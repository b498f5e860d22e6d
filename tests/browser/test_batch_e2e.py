"""End to end in a real Chromium: a broker uploads a small CSV and a zip of photos, runs the batch, downloads results.

Runs ``streamlit run app.py`` with the shipped model (see tests/browser/conftest.py).
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import AuditEvent, LineItem, Photo, Shipment
from tests.browser.helpers import MODEL_TIMEOUT_MS, PASSWORD, SCREENSHOTS, product_photo
from tests.ui import needs_chromium, screenshot_full_app

pytestmark = pytest.mark.browser


def upload_files(ui, tmp_path: Path) -> None:
    photo = product_photo(tmp_path).read_bytes()
    items = tmp_path / "items.csv"
    items.write_text(
        "line_ref,description,photos\n"
        "L-1,men's knitted cotton T-shirt,Shirt.JPG\n"
        "L-2,stainless steel kitchen knife,\n"
        "L-3,leather handbag,not-in-zip.jpg\n",
        encoding="utf-8",
    )
    photos = tmp_path / "photos.zip"
    with zipfile.ZipFile(photos, "w") as zf:
        zf.writestr("batch/shirt.jpg", photo)
    inputs = ui.locator("[data-testid='stFileUploader'] input[type='file']")
    inputs.nth(0).set_input_files(items)
    inputs.nth(1).set_input_files(photos)


@needs_chromium
def test_broker_runs_a_batch_and_downloads_the_results(app_db, page, tmp_path):
    from playwright.sync_api import expect

    app_db.add_user("bea", "broker", PASSWORD)
    page.get_by_label("Username").fill("bea")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Batch").click(timeout=MODEL_TIMEOUT_MS)
    expect(page.get_by_role("heading", name="Classify a batch")).to_be_visible(timeout=MODEL_TIMEOUT_MS)

    upload_files(page, tmp_path)
    # the row whose photo is not in the zip is reported before anything runs (the table itself is a canvas)
    expect(page.get_by_text("1 line will not run.")).to_be_visible(timeout=60_000)
    shipment = page.get_by_role("textbox", name="Shipment reference")
    shipment.fill("SHIP-E2E")
    shipment.press("Enter")
    run = page.get_by_role("button", name="Classify 2 lines")
    expect(run).to_be_enabled(timeout=30_000)
    run.click()
    expect(page.locator("[data-testid='stAlertContentSuccess']")).to_contain_text(
        "classified and stored under shipment", timeout=MODEL_TIMEOUT_MS
    )

    if os.environ.get("HS_SCREENSHOTS") == "1":
        screenshot_full_app(page, SCREENSHOTS / "batch.png")
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8-sig"))))
    assert [r["line_ref"] for r in rows] == ["L-1", "L-2", "L-3"]
    assert [r["status"] for r in rows] == ["classified", "classified", "not run"]
    # codes as text a spreadsheet keeps: ="6109.10", ="6109" (issue 12 point 8)
    assert re.fullmatch(r'="\d{4}\.\d{2}"', rows[0]["code_1"]) and re.fullmatch(r'="\d{4}"', rows[0]["heading"])
    assert "not-in-zip.jpg" in rows[2]["error"]

    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Download XLSX").click()
    from openpyxl import load_workbook

    assert download.value.suggested_filename == "hs-batch-SHIP-E2E.xlsx"
    target = tmp_path / "results.xlsx"
    download.value.save_as(target)
    sheet = load_workbook(target).active
    assert [c.value for c in sheet["B"]][1:] == ["L-1", "L-2", "L-3"]

    with app_db.factory() as session:
        items = session.scalars(select(LineItem).order_by(LineItem.id)).all()
        shipment_row = session.scalars(select(Shipment)).one()
        photos = session.scalars(select(Photo)).all()
        exports = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "batch_export")).all()
    assert [(i.line_ref, i.shipment_id) for i in items] == [("L-1", shipment_row.id), ("L-2", shipment_row.id)]
    assert shipment_row.reference == "SHIP-E2E" and len(photos) == 1
    assert sorted(e["format"] for e in exports) == ["csv", "xlsx"]  # every download is audited
    # L-1 opened in Classify comes with its stored photo (issue 12 point 2), shown and used for explanations
    page.get_by_role("button", name="Open in Classify").click()
    expect(page.get_by_role("heading", name="Classify a product")).to_be_visible(timeout=60_000)
    expect(page.get_by_text(f"The photos stored with line item #{items[0].id}")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Stored as line item")).to_contain_text("1 photo (photo 1)")
    expect(page.get_by_label("Product description")).to_have_value("men's knitted cotton T-shirt")
    panel = page.locator("[data-testid='stExpander']").filter(has_text="Why these codes?")
    panel.get_by_text("Why these codes?").click()
    expect(panel.get_by_role("radio").first).to_be_enabled()  # the photo method: there is a photo to explain
