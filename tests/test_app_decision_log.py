"""The decision log screen through AppTest: the table of decisions, each filter narrowing it, the download buttons."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db.models import AuditEvent, utcnow
from db.queries import find_user
from screens import common
from services import decisions
from services.auth import Actor
from tests.test_app_classify import PASSWORD, FakeClassifier
from tests.test_app_review import APP, plain, submitted_item


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: FakeClassifier())


@pytest.fixture
def history(app_db) -> dict[str, int]:
    """Three items: one approved (shipment S-1), one corrected (S-2, by bob), one waiting (chapter 02)."""
    items = {
        "approved": submitted_item(app_db, "610910", shipment="S-1"),
        "corrected": submitted_item(app_db, "610510", broker="bob", shipment="S-2"),
        "waiting": submitted_item(app_db, "020110"),
    }
    app_db.add_user("rita", "reviewer", PASSWORD)
    with app_db.factory.begin() as session:
        rita = Actor.from_user(find_user(session, "rita"))
        decisions.approve(session, rita, items["approved"], "ok")
        decisions.correct(session, rita, items["corrected"], "610910", "a T-shirt, not a shirt")
    return items


def admin_on_log(app_db) -> AppTest:
    app_db.add_user("ada", "admin", PASSWORD)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="auth_username").input("ada")
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    at.switch_page("screens/decision_log.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Decision log"
    return at


def table(at) -> list[tuple[str, str, str]]:
    """(kind, code, user) of each row of the log table, as shown (newest first)."""
    frame = at.dataframe[0].value
    return list(zip(frame["Kind"], frame["Code"], frame["User"], strict=True))


def apply(at) -> None:
    at.button(key="FormSubmitter:log_filters-Apply filters").click().run()
    assert not at.exception


def test_the_table_lists_every_decision_newest_first_with_three_downloads(app_db, history):
    at = admin_on_log(app_db)
    assert table(at) == [
        ("corrected", "6109.10", "rita (reviewer)"),
        ("approved", "6109.10", "rita (reviewer)"),
        ("submitted", "0201.10", "bea (broker)"),
        ("submitted", "6105.10", "bob (broker)"),
        ("submitted", "6109.10", "bea (broker)"),
    ]
    assert "5 decision(s) match." in [plain(c) for c in at.caption]
    buttons = at.get("download_button")
    assert len(buttons) == 3
    labels = [b.proto.label for b in buttons]
    assert labels == ["CSV", "JSONL", "Parquet"]
    assert all(b.proto.deferred_file_id and b.proto.ignore_rerun for b in buttons)  # built on click, no rerun


def test_each_filter_narrows_the_table(app_db, history):
    at = admin_on_log(app_db)
    at.multiselect(key="log_kinds").select("corrected").select("approved")
    apply(at)
    assert [row[0] for row in table(at)] == ["corrected", "approved"]

    at.multiselect(key="log_kinds").unselect("corrected").unselect("approved")
    assert at.selectbox(key="log_user").options == ["Anyone", "bea", "bob", "rita"]
    at.selectbox(key="log_user").set_value("bob")
    apply(at)
    assert table(at) == [("submitted", "6105.10", "bob (broker)")]

    at.selectbox(key="log_user").set_value("")
    at.text_input(key="log_prefix").input("02")
    apply(at)
    assert table(at) == [("submitted", "0201.10", "bea (broker)")]

    at.text_input(key="log_prefix").input("")
    at.text_input(key="log_shipment").input("S-2")
    apply(at)
    assert [row[0] for row in table(at)] == ["corrected", "submitted"]

    at.text_input(key="log_shipment").input("")
    assert at.selectbox(key="log_model").options == ["Any model", "fake-v1"]
    at.selectbox(key="log_model").set_value("fake-v1")
    apply(at)
    assert len(table(at)) == 5

    yesterday = (utcnow() - timedelta(days=1)).date()
    at.date_input(key="log_until").set_value(yesterday)
    apply(at)
    assert [plain(i) for i in at.info] == ["No decisions match these filters."]
    assert len(at.get("download_button")) == 3  # an empty export is still a valid file

    at.date_input(key="log_until").set_value(None)
    at.date_input(key="log_since").set_value(utcnow().date())
    apply(at)
    assert len(table(at)) == 5


@pytest.fixture
def media(monkeypatch) -> list:
    """The media file managers and stores AppTest makes for each run (it drops them after the run)."""
    from streamlit.testing.v1 import app_test

    made: list = []

    class Manager(app_test.MediaFileManager):
        def __init__(self, storage) -> None:
            super().__init__(storage)
            made.append((self, storage))

    monkeypatch.setattr(app_test, "MediaFileManager", Manager)
    return made


def download(media: list, button) -> bytes:
    """Click a deferred download button the way the browser does: run its callable, fetch the file it stored."""
    manager, storage = media[-1]
    url = manager.execute_deferred(button.proto.deferred_file_id)
    return storage.get_file(url.rsplit("/", 1)[1]).content


def test_a_download_holds_exactly_the_filtered_rows_and_is_audited(app_db, history, media):
    at = admin_on_log(app_db)
    at.selectbox(key="log_user").set_value("bob")
    apply(at)
    submitted_item(app_db, "610910", broker="bob")  # decided after the table was drawn: not in the export
    csv_button, jsonl_button, _ = at.get("download_button")
    lines = download(media, csv_button).decode().splitlines()
    assert len(lines) == 2 and lines[0].startswith("decision_id,decided_at,kind,code")
    assert ',submitted,"=""6105.10""",' in lines[1] and ",bob,broker," in lines[1]
    assert len(download(media, jsonl_button).decode().splitlines()) == 1
    with app_db.factory() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "export")).all()
    assert [(e.username, e.detail["format"], e.detail["rows"], e.detail["filters"]["username"]) for e in events] == [
        ("ada", "csv", 1, "bob"),
        ("ada", "jsonl", 1, "bob"),
    ]


def test_a_code_prefix_that_is_not_digits_is_explained(app_db, history):
    at = admin_on_log(app_db)
    at.text_input(key="log_prefix").input("61x")
    apply(at)
    assert [plain(e) for e in at.error] == ["“Code starts with” takes digits only, e.g. 6109 or 6109.10."]
    at.text_input(key="log_prefix").input("６１")  # full-width digits are digits to Python, not to HS codes
    apply(at)
    assert [plain(e) for e in at.error] == ["“Code starts with” takes digits only, e.g. 6109 or 6109.10."]


def test_an_empty_log(app_db):
    at = admin_on_log(app_db)
    assert [plain(i) for i in at.info] == ["No decisions match these filters."]
