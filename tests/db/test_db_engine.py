"""Engine settings on every SQLite connection, the default URL, and retries when the file is busy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from db.engine import default_db_url, make_engine, with_retry


def test_sqlite_pragmas_on_every_connection(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'p.sqlite3'}")
    try:
        conns = [engine.connect() for _ in range(3)]  # three distinct pooled connections
        for conn in conns:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            conn.close()
    finally:
        engine.dispose()


def test_default_db_url(monkeypatch):
    monkeypatch.setenv("HS_DB_URL", "postgresql+psycopg://u@h/db")
    assert default_db_url() == "postgresql+psycopg://u@h/db"
    monkeypatch.delenv("HS_DB_URL")
    assert default_db_url().startswith("sqlite:///") and default_db_url().endswith("var/hs_desk.sqlite3")


def _locked() -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))


def test_with_retry_retries_locked_then_succeeds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _locked()
        return "ok"

    assert with_retry(flaky, attempts=5, base_delay_s=0.001) == "ok"
    assert len(calls) == 3


def test_with_retry_gives_up_and_does_not_retry_other_errors():
    calls = []

    def always_locked():
        calls.append(1)
        raise _locked()

    with pytest.raises(OperationalError):
        with_retry(always_locked, attempts=3, base_delay_s=0.001)
    assert len(calls) == 3

    other = []

    def broken():
        other.append(1)
        raise OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x"))

    with pytest.raises(OperationalError):
        with_retry(broken, attempts=3, base_delay_s=0.001)
    assert len(other) == 1
