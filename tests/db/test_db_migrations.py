"""Alembic migrations: a fresh database gets every table, the triggers, and matches the models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from db.engine import make_engine, upgrade
from db.models import Base
from db.testing import fresh_database
from hs_core.settings import REPO_ROOT

EXPECTED_TABLES = {
    "users",
    "shipments",
    "line_items",
    "photos",
    "predictions",
    "decisions",
    "model_versions",
    "model_activations",
    "audit_events",
    "broker_facts",
    "auth_sessions",
    "sign_in_guards",
    "item_comments",
    "line_item_versions",
    "history_imports",
    "history_rows",
    "history_retractions",
    "history_matches",
    "alembic_version",
}


def test_upgrade_on_fresh_file_creates_every_table(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == EXPECTED_TABLES
        with engine.connect() as conn:
            triggers = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='trigger'")}
            version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
        assert {"decisions_no_update", "decisions_no_delete", "audit_events_no_update"} <= triggers
        assert version == "0004_history"
        assert {
            f"{t}_no_{v}"
            for t in ("history_imports", "history_rows", "history_retractions")
            for v in ("update", "delete")
        } <= triggers
        assert {"broker_facts_no_update", "broker_facts_no_delete"} <= triggers
        assert {"item_comments_no_update", "item_comments_no_delete"} <= triggers
    finally:
        engine.dispose()


def test_schema_matches_models_on_every_backend(engine):
    assert set(inspect(engine).get_table_names()) == EXPECTED_TABLES
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent(db_url):
    upgrade(db_url)
    upgrade(db_url)


def test_concurrent_upgrades_from_several_processes(backend, tmp_path: Path):
    code = "import sys; from db.engine import upgrade; upgrade(sys.argv[1])"
    with fresh_database(backend, tmp_path) as url:
        procs = [
            subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        assert all(rc == 0 for rc, _ in results), results
        engine = make_engine(url)
        try:
            assert set(inspect(engine).get_table_names()) == EXPECTED_TABLES
        finally:
            engine.dispose()
