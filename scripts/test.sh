#!/usr/bin/env bash
# Set everything up and run the whole test suite: lint, fast tests, real-tower tests, PostgreSQL, browser.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

# Debian Chromium for the Playwright tests (never `playwright install`: no browser downloads here).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian chromium for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "could not install chromium: browser tests will be skipped"
  else
    echo "no /usr/bin/chromium and not root: browser tests will be skipped"
  fi
fi

# A real PostgreSQL server on loopback for the database tests (skipped with a reason when unavailable).
if [ -z "${HS_TEST_PG_URL:-}" ] && [ -x scripts/start_postgres.sh ]; then
  if url=$(scripts/start_postgres.sh 2>/tmp/hs_pg.log | tail -n 1) && [ -n "$url" ]; then
    export HS_TEST_PG_URL="$url"
    echo "PostgreSQL for tests: $HS_TEST_PG_URL"
  else
    echo "PostgreSQL could not be started (see /tmp/hs_pg.log): postgres tests will be skipped"
  fi
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Type check (configuration in pyproject.toml: strict on hs_core, hs_model and services; basic on db and hs_train).
.venv/bin/mypy
# -m "" overrides the default marker filter in pyproject.toml: run everything, slow and browser tests too.
.venv/bin/python -m pytest -m "" -p no:cacheprovider --timeout 900 "$@"
