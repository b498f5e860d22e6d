"""Browser-test fixtures: the app served against the test database, and a Chromium page on its sign-in screen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ui import chromium, streamlit_app


@pytest.fixture
def server(app_db, tmp_path: Path) -> Iterator[str]:
    """The app on a free port, on ``app_db``, with the shipped default model (``assets/model``), as users get it."""
    with streamlit_app(tmp_path, HS_DB_URL=app_db.url, HS_PHOTO_DIR=str(app_db.photo_dir)) as url:
        yield url


@pytest.fixture
def page(server) -> Iterator:
    """A Chromium page on the app's sign-in screen."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server, timeout=60_000)
        yield page
