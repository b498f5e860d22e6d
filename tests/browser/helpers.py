"""Steps the browser tests share: a product photo, signing in as the broker, describing and uploading."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hs_core.settings import DEFAULT_MODEL_DIR
from tests.ui import REPO_ROOT

PASSWORD = "correct horse battery"
MODEL_TIMEOUT_MS = 240_000  # the first sign-in of a server process loads the model
SAMPLE_PHOTO = REPO_ROOT.parent / "shared" / "data" / "products" / "images" / "10866.jpg"  # a men's T-shirt
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
SHIPPED_VERSION = json.loads((DEFAULT_MODEL_DIR / "card.json").read_text())["version"]  # what the app serves


def product_photo(tmp_path: Path) -> Path:
    """A real T-shirt photo when the shared data is there, else a drawn one."""
    if SAMPLE_PHOTO.is_file():
        return SAMPLE_PHOTO
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(image).polygon(
        [(60, 40), (95, 30), (129, 30), (164, 40), (200, 80), (175, 100), (160, 85), (160, 200), (64, 200), (64, 85),
         (49, 100), (24, 80)],
        fill=(40, 70, 140),
    )  # fmt: skip
    path = tmp_path / "tshirt.jpg"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return path


def shoe_photo(tmp_path: Path) -> Path:
    """The first men's shoe photo of the shared product data, else the T-shirt of `product_photo`."""
    import csv

    styles = SAMPLE_PHOTO.parents[1] / "styles.csv"
    if styles.is_file():
        with styles.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                path = SAMPLE_PHOTO.parent / f"{row['id']}.jpg"
                if row["subCategory"] == "Shoes" and row["gender"] == "Men" and path.is_file():
                    return path
    return product_photo(tmp_path)


def sign_in_and_describe(page, text: str) -> None:
    """Sign in as the broker 'bea', wait for the model in the sidebar, type a description (committed to the app)."""
    from playwright.sync_api import expect

    page.get_by_label("Username").fill("bea")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Classify a product")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    expect(page.get_by_text(SHIPPED_VERSION, exact=True)).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    description = page.get_by_label("Product description")
    description.fill(text)
    description.press("Control+Enter")  # commit the text to the app
    expect(page.get_by_text(f"{len(text)} / 20,000 characters")).to_be_visible(timeout=30_000)


def upload(page, path: Path) -> None:
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(path)


def upload_photo(page, path: Path) -> None:
    """Upload a photo and wait for its thumbnail: Classify pressed before that runs without the photo."""
    from playwright.sync_api import expect

    upload(page, path)
    expect(page.locator("[data-testid='stImage']").first).to_be_visible(timeout=30_000)


def classify(page) -> None:
    """Press Classify and wait for the candidates of the first line item."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Classify").click()
    expect(page.get_by_text("Candidates for line item #1")).to_be_visible(timeout=MODEL_TIMEOUT_MS)


def explain_top_candidate(page, timeout_ms: int = MODEL_TIMEOUT_MS):
    """Open "Why these codes?", press Explain for the preselected top candidate, wait; returns the panel."""
    from playwright.sync_api import expect

    panel = page.locator("[data-testid='stExpander']").filter(has_text="Why these codes?")
    panel.get_by_text("Why these codes?").click()
    panel.get_by_role("button", name="Explain").click()
    expect(panel.get_by_text("What points to")).to_be_visible(timeout=timeout_ms)
    return panel
