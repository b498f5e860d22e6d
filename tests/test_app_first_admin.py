"""The sign-in screen of an empty database names the database the first admin must be created in (issue 12 p. 11)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.test_app_review import APP


def test_the_first_admin_hint_names_the_apps_database(app_db, monkeypatch):
    monkeypatch.setenv("HS_DB_URL", app_db.url)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "HS_DB_URL" in at.info[0].value
    assert at.code[0].value == f"HS_DB_URL='{app_db.url}' python -m db users create --username admin --role admin"


def test_a_password_in_the_database_url_is_never_shown(app_db, monkeypatch):
    from db.engine import safe_db_url

    assert safe_db_url("postgresql+psycopg://hs:s3cret@db:5432/hs") == "postgresql+psycopg://hs:***@db:5432/hs"
