"""Review and decision-log screens through AppTest: a reviewer approves or corrects, an admin exports."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db.models import Decision
from db.queries import find_user
from pages import common
from services.auth import Actor
from services.classify import classify_and_record, submit_decision
from tests.test_app_classify import PASSWORD, FakeClassifier

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def submitted_item(app_db, code: str = "610910") -> int:
    """A broker's classified and submitted line item; returns its id."""
    app_db.add_user("bea", "broker", PASSWORD)
    with app_db.factory.begin() as session:
        actor = Actor.from_user(find_user(session, "bea"))
        recorded = classify_and_record(session, FakeClassifier(), actor, text="cotton T-shirt", photos=[])
        submit_decision(session, actor, line_item_id=recorded.line_item_id, code=code)
    return recorded.line_item_id


def sign_in(app_db, username: str, role: str) -> AppTest:
    app_db.add_user(username, role, PASSWORD)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="auth_username").input(username)
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def test_reviewer_approves_a_submission(app_db, monkeypatch):
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: FakeClassifier())
    item_id = submitted_item(app_db)
    at = sign_in(app_db, "rita", "reviewer")
    assert at.title[0].value == "Review submitted codes"
    assert any("6109.10" in m.value for m in at.markdown)
    at.button(key="review_approve").click().run()
    assert not at.exception and not at.error
    with app_db.factory() as session:
        decision = session.scalars(select(Decision).where(Decision.kind == "approved")).one()
    assert (decision.line_item_id, decision.code, decision.role) == (item_id, "610910", "reviewer")
    assert f"decision #{decision.id}" in at.success[0].value
    assert at.info[0].value == "Nothing is waiting for review."


def test_reviewer_correction_needs_a_reason(app_db, monkeypatch):
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: FakeClassifier())
    submitted_item(app_db)
    at = sign_in(app_db, "rita", "reviewer")
    at.segmented_control(key="review_action").set_value("Correct").run()
    at.text_input(key="review_search").input("6105.10").run()
    at.button(key="review_correct").click().run()
    assert [e.value.replace("\\", "") for e in at.error] == ["Give a reason for the correction."]
    at.text_area(key="review_reason").input("Collar and buttons: a shirt.")
    at.button(key="review_correct").click().run()
    with app_db.factory() as session:
        decision = session.scalars(select(Decision).where(Decision.kind == "corrected")).one()
    assert (decision.code, decision.comment) == ("610510", "Collar and buttons: a shirt.")


def test_admin_exports_the_decision_log(app_db, monkeypatch):
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: FakeClassifier())
    submitted_item(app_db)
    at = sign_in(app_db, "ada", "admin")
    at.switch_page("pages/decision_log.py").run()
    assert at.title[0].value == "Decision log"
    at.button[0].click().run()  # the form's "Prepare export" (CSV by default)
    assert not at.exception and not at.error
    assert at.get("download_button")
