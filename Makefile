# The two commands of the README. Both create .venv and install requirements.txt first.
.PHONY: run test test-fast lint

run:            ## set up and serve the app on http://localhost:8501
	scripts/run_app.sh

test:           ## set up and run the whole suite (lint, unit, real towers, PostgreSQL, Chromium)
	scripts/test.sh

test-fast:      ## unit tests only (no real towers, no browser)
	scripts/setup_env.sh && .venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
