"""End to end in a real Chromium: an admin fine-tunes on seeded reviewed decisions, watches the epochs, activates the
new version and rolls back.

Serves ``app.py`` with the real zero-shot towers, a model registry under tmp_path. The fixed benchmark is switched off
(``HS_DATA_DIR`` points nowhere) so the gate decides on the held-out decisions alone, as it does without the data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from db import model_versions
from db.models import ModelActivation
from db.queries import find_user
from hs_train.finetune import FinetuneConfig
from services import decisions
from services.auth import Actor
from tests.browser.helpers import MODEL_TIMEOUT_MS, PASSWORD, SCREENSHOTS
from tests.ui import chromium, needs_chromium, screenshot_full_app, streamlit_app

pytestmark = pytest.mark.browser

FINETUNE_TIMEOUT_MS = 300_000
PRODUCTS = [  # (description, HS6) as a reviewer would have approved them
    ("men's knitted cotton T-shirt, short sleeves", "610910"),
    ("women's cotton crew-neck tee, jersey knit", "610910"),
    ("leather handbag with shoulder strap", "420221"),
    ("genuine leather tote bag", "420221"),
    ("running shoes with rubber soles and textile uppers", "640411"),
    ("sports trainers, mesh upper, rubber outsole", "640411"),
    ("stainless steel kitchen knife", "821191"),
    ("ceramic coffee mug", "691200"),
    ("lithium-ion battery pack for laptops", "850760"),
    ("wooden chair for dining room", "940161"),
]


def seed(app_db) -> None:
    """An admin, a broker, a reviewer, and every product classified, submitted and approved (three of each)."""
    for name, role in (("ada", "admin"), ("bea", "broker"), ("rey", "reviewer")):
        app_db.add_user(name, role, PASSWORD)
    from db.queries import create_line_item

    with app_db.factory.begin() as session:
        broker = Actor.from_user(find_user(session, "bea"))
        reviewer = Actor.from_user(find_user(session, "rey"))
        for copy in range(3):
            for text, code in PRODUCTS:
                item = create_line_item(session, description=f"{text} (lot {copy + 1})", created_by=broker.user_id)
                decisions.submit(session, broker, item.id, code)
                decisions.approve(session, reviewer, item.id)


@pytest.fixture
def server(app_db, tmp_path: Path) -> Iterator[str]:
    with streamlit_app(
        tmp_path,
        HS_DB_URL=app_db.url,
        HS_PHOTO_DIR=str(app_db.photo_dir),
        HS_MODEL_DIR=str(tmp_path / "no-model"),  # zero-shot first version, whatever assets/ holds
        HS_MODEL_REGISTRY=str(tmp_path / "registry"),
        HS_DATA_DIR=str(tmp_path / "no-data"),
    ) as url:
        yield url


@pytest.fixture
def page(server) -> Iterator:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(server, timeout=60_000)
        yield page


# Collects every text the progress bar shows, however briefly (epochs can take well under a second).
WATCH_PROGRESS = """
() => {
  window.__progress = [];
  new MutationObserver(() => {
    document.querySelectorAll("[data-testid='stProgress']").forEach(el => window.__progress.push(el.innerText));
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


def roll_back(page) -> None:
    """Roll back as an admin must: a reason and a confirmation (issue 12 point 9)."""
    page.get_by_label("Reason for the roll back (required; recorded in the audit trail)").fill("test: back to base")
    page.get_by_text("Yes, switch everyone back to zero-shot-v1").click()
    page.get_by_role("button", name="Roll back to zero-shot-v1").click()


def active_version(app_db) -> str:
    with app_db.factory() as session:
        return model_versions.active_version(session).id


@needs_chromium
def test_admin_finetunes_activates_and_rolls_back(app_db, page, tmp_path):
    from playwright.sync_api import expect

    seed(app_db)
    page.get_by_label("Username").fill("ada")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Model versions").click(timeout=MODEL_TIMEOUT_MS)
    expect(page.get_by_role("heading", name="Model versions")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    metrics = page.locator("[data-testid='stMetricValue']")
    expect(metrics.nth(0)).to_have_text("zero-shot-v1", timeout=60_000)
    expect(metrics.nth(1)).to_have_text(str(3 * len(PRODUCTS)))

    page.evaluate(WATCH_PROGRESS)
    page.get_by_role("button", name="Fine-tune now").click()
    outcome = page.get_by_text("New version ft-")
    expect(outcome).to_be_visible(timeout=FINETUNE_TIMEOUT_MS)
    seen = page.evaluate("window.__progress")
    epochs = FinetuneConfig().epochs
    assert any(f"Epoch 1 of {epochs}" in t for t in seen) and any(f"Epoch {epochs} of {epochs}" in t for t in seen), (
        seen
    )
    expect(page.locator("[data-testid='stVegaLiteChart']").first).to_be_visible()
    new_version = next(w for w in outcome.inner_text().split() if w.startswith("ft-")).rstrip(":")
    with app_db.factory() as session:
        record = model_versions.get_version(session, new_version)
    assert record.parent_id == "zero-shot-v1" and record.card["training"]["data"]["count"] == 3 * len(PRODUCTS)

    if active_version(app_db) != new_version:  # the gate kept it back: the admin overrides, with a reason
        page.get_by_text("Override the evaluation gate").click()
        reason = page.get_by_label("Reason (required for an override)")
        reason.fill("checked the new version by hand")
        reason.press("Enter")
        page.get_by_role("button", name="Activate", exact=True).click()
        expect(page.get_by_text("Override recorded")).to_be_visible(timeout=60_000)
        assert active_version(app_db) == new_version
        roll_back(page)
    else:
        roll_back(page)
        expect(page.get_by_text("zero-shot-v1 is now active")).to_be_visible(timeout=60_000)
        assert active_version(app_db) == "zero-shot-v1"
        page.get_by_role("button", name="Activate", exact=True).click()
        expect(page.get_by_text(f"{new_version} is now active")).to_be_visible(timeout=60_000)
        assert active_version(app_db) == new_version
        roll_back(page)
    expect(page.get_by_text("zero-shot-v1 is now active")).to_be_visible(timeout=60_000)
    assert active_version(app_db) == "zero-shot-v1"
    expect(metrics.nth(0)).to_have_text("zero-shot-v1")
    expect(page.locator("[data-testid='stException']")).to_have_count(0)
    with app_db.factory() as session:
        reasons = [a.reason for a in session.scalars(select(ModelActivation).order_by(ModelActivation.id))]
    assert reasons[-1] == f"roll back from {new_version}: test: back to base"  # audited with its reason
    if os.environ.get("HS_SCREENSHOTS") == "1":
        screenshot_full_app(page, SCREENSHOTS / "models.png")
    assert "Traceback" not in (tmp_path / "streamlit.log").read_text()  # e.g. pyarrow on a mixed-type column
