"""End to end in a real Chromium with the shipped model: a T-shirt whose material nobody stated, the broker answers
"of cotton", 6109.10 comes first without a new model run, the broker submits, and the reviewer sees the answer."""

from __future__ import annotations

import pytest

from tests.browser.helpers import MODEL_TIMEOUT_MS, PASSWORD, classify, sign_in_and_describe
from tests.browser.test_review_e2e import sign_in, sign_out
from tests.ui import needs_chromium

pytestmark = pytest.mark.browser


@needs_chromium
def test_answer_of_cotton_puts_6109_10_first_and_the_reviewer_sees_it(app_db, page):
    from playwright.sync_api import expect

    app_db.add_user("bea", "broker", PASSWORD)
    app_db.add_user("rita", "reviewer", PASSWORD)
    expect(page.get_by_label("Username")).to_be_visible(timeout=60_000)
    sign_in_and_describe(page, "Wrangler Men Motor Rider Red T-Shirt")
    classify(page)
    expect(page.get_by_text("Which textile material predominates by weight?")).to_be_visible(timeout=60_000)
    subheading = page.locator("[data-testid='stMetricValue']").first
    expect(subheading).to_have_text("6109.90", timeout=30_000)  # the model leans to "other textile materials"
    question = page.locator("[data-testid='stButtonGroup']").filter(has_text="Of other textile materials")
    question.get_by_text("Of cotton", exact=True).click()
    expect(subheading).to_have_text("6109.10", timeout=60_000)
    # 6109.10 is not the model's own first choice (6109.90 before the answer): a justification is required
    page.get_by_label("Justification").fill("Label: 100 % cotton (the broker's answer above)")
    page.get_by_role("button", name="Submit", exact=True).click()
    expect(page.locator("[data-testid='stAlertContentSuccess']")).to_contain_text("Submitted", timeout=60_000)
    sign_out(page)
    sign_in(page, "rita", "Review submitted codes")
    expect(page.get_by_text("Broker-stated facts")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    fact = page.get_by_role("listitem").filter(has_text="Which textile material predominates by weight?")
    expect(fact).to_contain_text("Of cotton · bea")
