"""Why app replicas need session affinity: a photo upload from a tab of replica A, sent to replica B, is refused.

Starts two app servers on one throw-away SQLite database, signs a broker in on A in Chromium twice, uploads a photo on
Classify, once as is and once with the upload request routed to B (as a balancer without affinity might), and prints
what the uploader showed and the upload responses (README "Scaling out").

    .venv/bin/python scripts/replica_affinity_check.py
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.engine import make_engine, make_session_factory, upgrade  # noqa: E402
from services.auth import provision_user  # noqa: E402
from tests.browser.helpers import PASSWORD, SHIPPED_VERSION, product_photo  # noqa: E402
from tests.ui import chromium, streamlit_app  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hs-affinity-") as tmp:
        check(Path(tmp))
    return 0


def check(root: Path) -> None:
    url = f"sqlite:///{root / 'hs_desk.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        provision_user(session, "bea", PASSWORD, "broker", via="replica_affinity_check")
    engine.dispose()
    env = {"HS_DB_URL": url, "HS_PHOTO_DIR": str(root / "photos")}
    (root / "a").mkdir()
    (root / "b").mkdir()
    with streamlit_app(root / "a", **env) as a, streamlit_app(root / "b", **env) as b, chromium() as browser:
        for label, target in (("upload to the tab's own replica", a), ("upload routed to the other replica", b)):
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            responses: list[str] = []
            page.route(
                re.compile(r".*/_stcore/upload_file/.*"),
                lambda route, request, target=target: route.continue_(url=request.url.replace(a, target)),
            )
            page.on(
                "response",
                lambda r, seen=responses: "upload_file" in r.url and seen.append(f"{r.request.method} {r.status}"),
            )
            page.goto(a, timeout=60_000)
            page.get_by_label("Username").fill("bea")
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_text(SHIPPED_VERSION, exact=True).wait_for(timeout=240_000)
            page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(product_photo(root))
            try:
                page.locator("[data-testid='stImage']").first.wait_for(timeout=30_000)
                shown = "the photo's thumbnail"
            except Exception:  # noqa: BLE001 - what the uploader says instead is the result
                shown = page.locator("[data-testid='stFileUploader']").inner_text().replace("\n", " | ")
            print(f"{label}: {shown}; responses {responses}")
            context.close()


if __name__ == "__main__":
    raise SystemExit(main())
