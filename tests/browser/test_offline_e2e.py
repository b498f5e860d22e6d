"""In Chromium: no request leaves the machine (issue 12 point 10), and the best codes form one path (point 6).

An admin opens every screen and classifies a product while every request the page makes is recorded; any request
to a host other than the app's own fails the test (the page icon used to come from a font host on the internet).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from tests.browser.helpers import MODEL_TIMEOUT_MS, PASSWORD, product_photo, upload_photo
from tests.ui import needs_chromium

pytestmark = pytest.mark.browser

SCREENS = {
    "Classify": "Classify a product",
    "Batch": "Classify a batch",
    "My items": "My items",
    "Review": "Review submitted codes",
    "Decision log": "Decision log",
    "Model versions": "Model versions",
}


@needs_chromium
def test_no_request_leaves_the_machine_and_the_best_codes_form_one_path(app_db, server, tmp_path):
    from playwright.sync_api import expect

    from tests.ui import chromium

    app_db.add_user("ada", "admin", PASSWORD)
    app_host = urlsplit(server).netloc
    foreign: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})

        def record(request) -> None:  # a Request or a WebSocket
            parts = urlsplit(request.url)
            if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc != app_host:
                foreign.append(request.url)

        page.on("request", record)
        page.on("websocket", record)  # a WebSocket has a url too
        page.goto(server, timeout=60_000)
        page.get_by_label("Username").fill("ada")
        page.get_by_role("textbox", name="Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Classify a product")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
        icon = page.locator("link[rel*='icon']").first
        expect(icon).to_have_attribute("href", re.compile(r"^(/|http://127\.0\.0\.1)"))

        description = page.get_by_label("Product description")
        description.fill("women's leather handbag with a shoulder strap")
        description.press("Control+Enter")
        expect(page.get_by_text("45 / 20,000 characters")).to_be_visible(timeout=30_000)  # the rerun is done
        upload_photo(page, product_photo(tmp_path))
        page.get_by_role("button", name="Classify").click()
        expect(page.get_by_text("Candidates for line item #1")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
        values = page.locator("[data-testid='stMetricValue']")
        expect(values).to_have_count(3)
        labels = page.locator("[data-testid='stMetricLabel']").all_inner_texts()
        sub, heading, chapter = (v.strip() for v in values.all_inner_texts())
        if not any("off the path" in label for label in labels):  # one path: 6 inside 4 inside 2
            assert sub.replace(".", "")[:4] == heading and heading[:2] == chapter, (sub, heading, chapter)
        else:
            expect(page.get_by_text("The levels disagree")).to_be_visible()

        # the HS tree search knows trade names (issue 12 point 5)
        page.get_by_text("Another code (search the HS 2022 tree)").click()
        search = page.get_by_label("Search by code or words")
        search.fill("rucksack")
        search.press("Enter")
        picked = page.get_by_role("combobox", name="Subheading", exact=True)
        expect(picked).to_have_value(re.compile(r"^4202\.\d\d — .*trade name “rucksacks”"), timeout=30_000)

        for link, title in SCREENS.items():
            page.get_by_role("link", name=link, exact=True).click()
            expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=60_000)
        page.reload()
        expect(
            page.get_by_role("button", name="Sign in").or_(page.get_by_role("heading", name="Model versions"))
        ).to_be_visible(timeout=60_000)
    assert foreign == [], f"requests to other hosts: {foreign}"
