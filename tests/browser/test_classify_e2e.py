"""End to end in a real Chromium: sign in, describe and photograph a product, classify, submit, find the decision row.

Runs ``streamlit run app.py`` with the real zero-shot model (first start embeds the label texts: about a
minute on a 2-core box, cached under var/cache after). Set ``HS_SCREENSHOTS=1`` to refresh
``docs/screenshots/classify.png``.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import Decision, LineItem, Photo

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SAMPLE_PHOTO = REPO_ROOT.parent / "shared" / "data" / "products" / "images" / "10866.jpg"  # a men's T-shirt
SCREENSHOT = REPO_ROOT / "docs" / "screenshots" / "classify.png"
PASSWORD = "correct horse battery"
START_TIMEOUT_S = 90
MODEL_TIMEOUT_MS = 240_000  # sign-in loads the model once per server process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"streamlit did not become healthy in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def server(app_db, tmp_path: Path) -> Iterator[str]:
    """The app served on a free port against the test database; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HS_MODEL_DIR"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HS_DB_URL=app_db.url, HS_PHOTO_DIR=str(app_db.photo_dir))
    env["HS_MODEL_DIR"] = str(tmp_path / "no-model")  # no card there: the zero-shot model, whatever assets/ holds
    log = tmp_path / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def screenshot_full_app(page, path: Path) -> None:
    """Streamlit scrolls inside its main pane, so grow the viewport to the content before the shot."""
    for _ in range(3):  # the layout reflows with the viewport: repeat until the height settles
        height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        page.set_viewport_size({"width": 1440, "height": max(900, int(height))})
        page.wait_for_timeout(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian Chromium not installed (apt-get install chromium)"
)


@pytest.fixture
def page(server) -> Iterator:
    """A Chromium page on the app's sign-in screen."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(server, timeout=60_000)
            yield page
        finally:
            browser.close()


def sign_in_and_describe(page, text: str) -> None:
    """Sign in as the broker 'bea' and type a description (committed to the app)."""
    from playwright.sync_api import expect

    page.get_by_label("Username").fill("bea")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Classify a product")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    expect(page.get_by_text("zero-shot-v1")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
    description = page.get_by_label("Product description")
    description.fill(text)
    description.press("Control+Enter")  # commit the text to the app
    expect(page.get_by_text(f"{len(text)} / 20,000 characters")).to_be_visible(timeout=30_000)


def upload(page, path: Path) -> None:
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(path)


@needs_chromium
def test_broker_classifies_and_submits(app_db, page, tmp_path):
    from playwright.sync_api import expect

    app_db.add_user("bea", "broker", PASSWORD)
    sign_in_and_describe(page, "men's knitted cotton T-shirt")
    upload(page, product_photo(tmp_path))
    expect(page.locator("[data-testid='stImage']").first).to_be_visible(timeout=30_000)

    page.get_by_role("button", name="Classify").click()
    expect(page.get_by_text("Candidates for line item #1")).to_be_visible(timeout=MODEL_TIMEOUT_MS)
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
    justification = page.get_by_label("Justification (optional)")
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
    assert decision.model_version == "zero-shot-v1"
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
