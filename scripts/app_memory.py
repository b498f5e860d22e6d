"""Peak memory of the app process as a broker uses it: serve ``app.py`` on the shipped model, sign in, classify
one product with a photo, explain it, then read the server's peak RSS (``VmHWM``) from /proc.

    .venv/bin/python scripts/app_memory.py [--json]

Uses a throwaway SQLite file and Debian's Chromium (the browser tests' helpers). Prints the Streamlit process's
RSS after start, after sign-in (model loaded), after classifying, after explaining, and its peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from db.engine import make_engine, make_session_factory, upgrade  # noqa: E402
from services.auth import provision_user  # noqa: E402
from tests.browser.helpers import (  # noqa: E402
    PASSWORD,
    classify,
    explain_top_candidate,
    product_photo,
    sign_in_and_describe,
    upload_photo,
)
from tests.ui import chromium, streamlit_app  # noqa: E402


def server_memory_mb() -> dict[str, float]:
    """RSS and peak RSS (MiB) of the `streamlit run` process serving the app."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            cmdline = (status.parent / "cmdline").read_bytes().split(b"\0")
            text = status.read_text()
        except OSError:
            continue
        if b"streamlit" in cmdline and b"app.py" in cmdline:
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            return {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM")}
    raise RuntimeError("no streamlit process found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    steps: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'hs_desk.sqlite3'}"
        upgrade(url)
        engine = make_engine(url)
        with make_session_factory(engine).begin() as session:
            provision_user(session, "bea", PASSWORD, "broker", via="app_memory")
        engine.dispose()
        with streamlit_app(root, HS_DB_URL=url, HS_PHOTO_DIR=str(root / "photos")) as base, chromium() as browser:
            steps["started"] = server_memory_mb()
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(base, timeout=60_000)
            sign_in_and_describe(page, "men's knitted cotton T-shirt")
            steps["signed_in"] = server_memory_mb()
            upload_photo(page, product_photo(root))
            classify(page)
            steps["classified"] = server_memory_mb()
            explain_top_candidate(page)
            steps["explained"] = server_memory_mb()
    peak = max(s["VmHWM"] for s in steps.values())
    if args.json:
        print(json.dumps({"steps_mib": steps, "peak_rss_mib": peak}, indent=2))
    else:
        for name, s in steps.items():
            print(f"{name:>10}: RSS {s['VmRSS']:.0f} MiB (peak so far {s['VmHWM']:.0f} MiB)")
        print(f"peak RSS of the app process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
