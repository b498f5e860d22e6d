"""Fixtures for db tests: a fresh migrated database per test (SQLite file; PostgreSQL when configured)."""

from db.testing import backend, db_url, engine, factory  # noqa: F401 - pytest fixtures
