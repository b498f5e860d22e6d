"""Seconds from the click on *Explain* to the explanation on screen, measured in Chromium (issue 12 point 7).

    .venv/bin/python scripts/explain_latency.py [--repeats 3] [--json]

Serves ``app.py`` on the shipped model against a throwaway SQLite file, signs in as a broker, classifies a
T-shirt with a photo, then for each photo method presses *Explain* ``--repeats`` times (a different candidate
each time, so nothing is cached) and times the click until "What points to" is visible. The comparison with the
runner-up is not included: it is computed on demand, after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.engine import make_engine, make_session_factory, upgrade  # noqa: E402
from services.auth import provision_user  # noqa: E402
from services.explanations import METHOD_LABELS  # noqa: E402
from tests.browser.helpers import PASSWORD, classify, product_photo, sign_in_and_describe, upload_photo  # noqa: E402
from tests.ui import chromium, streamlit_app  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import expect

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'hs.sqlite3'}"
        upgrade(url)
        engine = make_engine(url)
        with make_session_factory(engine).begin() as session:
            provision_user(session, "bea", PASSWORD, "broker", via="script")
        engine.dispose()
        results: dict[str, list[float]] = {}
        with streamlit_app(root, HS_DB_URL=url, HS_PHOTO_DIR=str(root / "photos")) as base, chromium() as browser:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(base, timeout=60_000)
            sign_in_and_describe(page, "men's knitted cotton T-shirt, crew neck, short sleeves")
            upload_photo(page, product_photo(root))
            classify(page)
            panel = page.locator("[data-testid='stExpander']").filter(has_text="Why these codes?")
            panel.get_by_text("Why these codes?").click()
            k = 0  # candidates in turn, so every press explains a code not on screen
            for method, label in METHOD_LABELS.items():
                panel.get_by_text(label, exact=True).click()
                times = []
                for _ in range(args.repeats):
                    panel.get_by_role("combobox", name="Candidate to explain").click()
                    page.get_by_role("option").nth(k % 5).click()
                    k += 1
                    expect(panel.get_by_text("Pick a candidate and press Explain.")).to_be_visible(timeout=30_000)
                    t0 = time.perf_counter()
                    panel.get_by_role("button", name="Explain", exact=True).click()
                    expect(panel.get_by_text("What points to")).to_be_visible(timeout=240_000)
                    times.append(time.perf_counter() - t0)
                results[method] = times
    summary = {
        m: {"median_s": round(statistics.median(t), 2), "runs_s": [round(x, 2) for x in t]} for m, t in results.items()
    }
    print(json.dumps(summary) if args.json else "\n".join(f"{m}: {v}" for m, v in summary.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
