"""End to end in a real Chromium, on the shipped trained model: a broker asks why a candidate, sees the photo
heatmap and the highlighted words, and the contrast with the runner-up.

Set ``HS_SCREENSHOTS=1`` to refresh ``docs/screenshots/explain.png``.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.browser.helpers import (
    PASSWORD,
    SCREENSHOTS,
    classify,
    explain_top_candidate,
    shoe_photo,
    sign_in_and_describe,
    upload_photo,
)
from tests.ui import needs_chromium, screenshot_full_app

pytestmark = pytest.mark.browser

EXPLAIN_TIMEOUT_MS = 120_000  # integrated gradients of the candidate and of the contrast, on a loaded 2-core box
DESCRIPTION = "men's leather formal shoes <b>lace-up</b>"  # markup must show as typed


@needs_chromium
def test_broker_sees_heatmap_words_and_contrast(app_db, page, tmp_path):
    from playwright.sync_api import expect

    app_db.add_user("bea", "broker", PASSWORD)
    sign_in_and_describe(page, DESCRIPTION)
    upload_photo(page, shoe_photo(tmp_path))
    classify(page)
    panel = explain_top_candidate(page, EXPLAIN_TIMEOUT_MS)
    panel.get_by_role("button", name="Compare with the runner-up").click()  # on demand (issue 12 point 7)
    expect(panel.get_by_text(re.compile(r"Why \d{4}\.\d{2} rather than \d{4}\.\d{2}"))).to_be_visible(
        timeout=EXPLAIN_TIMEOUT_MS
    )

    # The candidate and the contrast each show the photo as uploaded and its heatmap overlay.
    images = panel.locator("img")
    expect(images).to_have_count(4, timeout=30_000)
    for i in range(4):  # Streamlit's images load lazily: bring each into view, then wait for its pixels
        image = images.nth(i)
        image.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    expect(panel.get_by_text("Evidence in the photo (brighter = stronger)").first).to_be_visible()
    expect(panel.get_by_text(re.compile(r"completeness error \d+\.\d{3}")).first).to_be_visible()

    # Words are highlighted spans with their score on hover; the typed markup shows as text, not as bold.
    words = panel.locator("span[title]")
    assert words.count() >= 2 * 5, words.count()  # every word, in both the candidate's and the contrast's view
    assert any("shoes" in w or "leather" in w for w in words.all_inner_texts())
    expect(panel.get_by_text("<b>lace-up</b>").first).to_be_visible()
    assert panel.locator("b", has_text="lace-up").count() == 0
    expect(panel.get_by_text("Similar past decisions")).to_be_visible()
    expect(page.locator("[data-testid='stException']")).to_have_count(0)
    if os.environ.get("HS_SCREENSHOTS") == "1":
        screenshot_full_app(page, SCREENSHOTS / "explain.png")
