"""The review screen through AppTest: photos and candidates shown, approve, correct with the code picker, reject,
bulk approve, the queue filters; and the broker's "My items" page, where a rejected item is submitted again."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db.models import Decision
from db.queries import find_user
from screens import common
from services.auth import Actor
from services.classify import UploadedPhoto, classify_and_record, submit_decision
from tests.test_app_classify import PASSWORD, FakeClassifier

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: FakeClassifier())


def png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 70, 140)).save(buffer, "PNG")
    return buffer.getvalue()


def submitted_item(
    app_db,
    code: str = "610910",
    *,
    broker: str = "bea",
    shipment: str | None = None,
    justification: str = "Checked against the label.",
    photo: bool = False,
    needs_review: bool = False,
) -> int:
    """A broker's classified and submitted line item; returns its id."""
    with app_db.factory() as session:
        known = find_user(session, broker) is not None
    if not known:
        app_db.add_user(broker, "broker", PASSWORD)
    with app_db.factory.begin() as session:
        actor = Actor.from_user(find_user(session, broker))
        recorded = classify_and_record(
            session,
            FakeClassifier(needs_review=needs_review),
            actor,
            text="cotton T-shirt",
            photos=[UploadedPhoto("shirt.png", png())] if photo else [],
            shipment_ref=shipment,
            photo_root=app_db.photo_dir,
        )
        submit_decision(session, actor, line_item_id=recorded.line_item_id, code=code, justification=justification)
    return recorded.line_item_id


def sign_in(app_db, username: str, role: str) -> AppTest:
    app_db.add_user(username, role, PASSWORD)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="auth_username").input(username)
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def decisions(app_db, kind: str | None = None) -> list[Decision]:
    with app_db.factory() as session:
        stmt = select(Decision).order_by(Decision.id)
        if kind:
            stmt = stmt.where(Decision.kind == kind)
        return list(session.scalars(stmt))


def texts(at) -> str:
    """Everything the page wrote as markdown, text, captions and alerts, joined."""
    kinds = ("subheader", "markdown", "text", "caption", "success", "info", "warning", "error")
    return "\n".join(plain(e) for kind in kinds for e in getattr(at, kind))


def plain(element) -> str:
    """An element's text without Markdown escapes."""
    return str(element.value).replace("\\", "")


def queue_ids(at) -> list[int]:
    """The line items the one-by-one picker offers, in its order ("#12 · ..." labels)."""
    return [int(o.split(" ")[0][1:]) for o in at.selectbox(key="review_item").options]


def tab_labels(at) -> list[str]:
    return [t.label for t in at.tabs]


def test_reviewer_sees_photos_candidates_choice_and_justification(app_db):
    item_id = submitted_item(app_db, "610510", photo=True, shipment="S-1", justification="Has a <b>collar</b>.")
    at = sign_in(app_db, "rita", "reviewer")
    assert at.title[0].value == "Review submitted codes"
    assert len(at.get("image")) == 1  # the stored photo
    page = texts(at)
    assert f"Line item #{item_id}" in page
    assert "6105.10" in page and "Has a <b>collar</b>." in page  # the broker's code; the justification as plain text
    # the justification beside the difference (issue 12 point 12)
    assert (
        "the model's best subheading is 6109.10 (62%); the broker chose 6105.10 because: “Has a <b>collar</b>.”" in page
    )
    assert "shipment S-1" in page
    assert "bea (broker): submitted **6105.10**" in page  # the history
    candidates = at.dataframe[0].value
    assert list(candidates["Code"]) == ["6109.10", "6105.10", "6109.90"]
    assert list(candidates["Submitted"]) == ["", "✔", ""]
    assert {"One by one (1)", "Bulk approve (0)"} <= set(tab_labels(at))


def test_reviewer_approves_a_submission(app_db):
    item_id = submitted_item(app_db)
    at = sign_in(app_db, "rita", "reviewer")
    assert "Also the model's best subheading (62%), and the model did not flag this item for review." in texts(at)
    at.text_input(key=f"review_comment_{item_id}").input("Label checked.")
    at.button(key="review_approve").click().run()
    assert not at.exception and not at.error
    (decision,) = decisions(app_db, "approved")
    assert (decision.line_item_id, decision.code, decision.role, decision.comment) == (
        item_id,
        "610910",
        "reviewer",
        "Label checked.",
    )
    assert f"decision #{decision.id}" in plain(at.success[0])
    assert at.info[0].value == "Nothing is waiting for review."


def test_correction_with_the_code_picker_needs_a_reason_and_moves_on(app_db):
    first = submitted_item(app_db, "610510")
    second = submitted_item(app_db, "610910")
    at = sign_in(app_db, "rita", "reviewer")
    at.segmented_control(key=f"review_action_{first}").set_value("Correct").run()
    # Before anything is typed the picker offers the model's other candidates.
    assert at.selectbox(key=f"review_pick_{first}").options == [
        "6109.10 — T-shirts, singlets and other vests; of cotton, knitted or crocheted (model 62%)",
        "6109.90 — T-shirts, singlets and other vests; of textile materials (model 5%)",
    ]
    at.text_input(key=f"review_search_{first}").input("T-shirts").run()
    picker = at.selectbox(key=f"review_pick_{first}")
    assert picker.value is None and any(o.startswith("6109.90 — T-shirts") for o in picker.options)
    picker.set_value("610990")
    at.button(key="review_correct").click().run()
    assert [plain(e) for e in at.error] == ["Give a reason for the correction."]
    assert decisions(app_db, "corrected") == []

    at.text_area(key=f"review_reason_{first}").input("60% polyester: not of cotton.")
    at.button(key="review_correct").click().run()
    assert not at.exception and not at.error
    (decision,) = decisions(app_db, "corrected")
    assert (decision.line_item_id, decision.code, decision.comment) == (
        first,
        "610990",
        "60% polyester: not of cotton.",
    )
    assert "corrected as 6109.90" in plain(at.success[0])
    assert at.selectbox(key="review_item").value == second  # on to the next item, with a fresh form
    # the next item starts from Approve, not from the last item's Correct (issue 12 point 11)
    assert at.segmented_control(key=f"review_action_{second}").value == "Approve"
    assert at.text_input(key=f"review_comment_{second}").value == ""


def test_correcting_to_the_submitted_code_is_refused(app_db):
    item_id = submitted_item(app_db, "610910")
    at = sign_in(app_db, "rita", "reviewer")
    at.segmented_control(key=f"review_action_{item_id}").set_value("Correct").run()
    at.text_input(key=f"review_search_{item_id}").input("6109.10").run()
    at.selectbox(key=f"review_pick_{item_id}").set_value("610910")
    at.text_area(key=f"review_reason_{item_id}").input("same")
    at.button(key="review_correct").click().run()
    assert "approve it instead of correcting it" in plain(at.error[0])
    assert at.text_area(key=f"review_reason_{item_id}").value == "same"  # nothing typed is lost


def test_reject_sends_it_back_and_the_broker_resubmits(app_db):
    item_id = submitted_item(app_db, "610510")
    at = sign_in(app_db, "rita", "reviewer")
    at.segmented_control(key=f"review_action_{item_id}").set_value("Reject").run()
    at.button(key="review_reject").click().run()
    assert [plain(e) for e in at.error] == ["Give a reason for the rejection."]
    at.text_area(key=f"review_reject_reason_{item_id}").input("Photo missing; cannot tell the material.")
    at.button(key="review_reject").click().run()
    assert not at.exception and not at.error
    (rejection,) = decisions(app_db, "rejected")
    assert (rejection.code, rejection.comment) == (None, "Photo missing; cannot tell the material.")

    broker = AppTest.from_file(APP, default_timeout=60).run()
    broker.text_input(key="auth_username").input("bea")
    broker.text_input(key="auth_password").input(PASSWORD)
    broker.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    broker.switch_page("screens/my_items.py").run()
    assert broker.title[0].value == "My items"
    assert list(broker.dataframe[0].value["Status"]) == ["rejected: resubmit"]
    assert "Rejected: Photo missing; cannot tell the material." in texts(broker)
    broker.selectbox(key=f"mine_pick_{item_id}").set_value("610910")
    broker.text_area(key=f"mine_justification_{item_id}").input("Label says 100% cotton.")
    broker.button(key="mine_submit").click().run()
    assert not broker.exception and not broker.error
    assert [(d.kind, d.code) for d in decisions(app_db)] == [
        ("submitted", "610510"),
        ("rejected", None),
        ("submitted", "610910"),
    ]
    assert "It now waits for a reviewer." in plain(broker.success[0])
    assert list(broker.dataframe[0].value["Status"]) == ["waiting for review"]


def test_bulk_approve_only_offers_high_confidence_agreements(app_db):
    agree = [submitted_item(app_db, "610910"), submitted_item(app_db, "610910", broker="bob")]
    differs = submitted_item(app_db, "610510")
    unsure = submitted_item(app_db, "610910", needs_review=True)
    at = sign_in(app_db, "rita", "reviewer")
    assert "Bulk approve (2)" in tab_labels(at)
    boxes = [c for c in at.checkbox if c.key.startswith("review_bulk_0_")]
    assert [c.key for c in boxes] == [f"review_bulk_0_{i}" for i in agree]
    assert not any(c.value for c in boxes)
    at.toggle(key="review_bulk_all_0").set_value(True).run()
    assert all(c.value for c in at.checkbox if c.key.startswith("review_bulk_0_"))
    at.text_input(key="review_bulk_comment").input("Batch of clear agreements.")
    at.button(key="review_bulk_approve").click().run()
    assert not at.exception and not at.error
    approved = decisions(app_db, "approved")
    assert [(d.line_item_id, d.code, d.comment) for d in approved] == [
        (i, "610910", "Batch of clear agreements.") for i in agree
    ]
    assert len({d.id for d in approved}) == 2  # one decision row each
    assert "Approved 2 item(s)" in plain(at.success[0])
    assert "One by one (2)" in tab_labels(at)
    assert queue_ids(at) == [differs, unsure]


def test_bulk_approve_with_nothing_ticked_says_so(app_db):
    submitted_item(app_db, "610910")
    at = sign_in(app_db, "rita", "reviewer")
    at.button(key="review_bulk_approve").click().run()
    assert [plain(e) for e in at.error] == ["Tick at least one item to approve."]
    assert decisions(app_db, "approved") == []


def test_queue_filters(app_db):
    a = submitted_item(app_db, "610910", shipment="S-1")
    b = submitted_item(app_db, "610510", broker="bob", shipment="S-2")
    c = submitted_item(app_db, "020110", broker="bob")  # chapter 02: meat
    at = sign_in(app_db, "rita", "reviewer")

    assert queue_ids(at) == [a, b, c]
    assert at.selectbox(key="review_f_shipment").options == ["All shipments", "S-1", "S-2"]
    at.selectbox(key="review_f_shipment").set_value("S-2")
    at.button(key="review_apply").click().run()
    assert queue_ids(at) == [b]
    at.selectbox(key="review_f_shipment").set_value("")
    at.selectbox(key="review_f_broker").set_value("bob")
    at.button(key="review_apply").click().run()
    assert queue_ids(at) == [b, c]
    at.selectbox(key="review_f_chapter").set_value("02")
    at.button(key="review_apply").click().run()
    assert queue_ids(at) == [c]
    at.selectbox(key="review_f_broker").set_value("")
    at.selectbox(key="review_f_chapter").set_value("")
    at.slider(key="review_f_score").set_value((70, 100))  # the fake model's best subheading scores 62%
    at.button(key="review_apply").click().run()
    assert "None of the 3 waiting items match these filters." in texts(at)
    at.slider(key="review_f_score").set_value((60, 65))
    at.selectbox(key="review_f_age").set_value(1)  # all were submitted just now
    at.button(key="review_apply").click().run()
    assert "None of the 3 waiting items match these filters." in texts(at)
    at.selectbox(key="review_f_age").set_value(0)
    at.button(key="review_apply").click().run()
    assert queue_ids(at) == [a, b, c]
    assert not at.exception


def test_an_admin_cannot_review_their_own_submission(app_db):
    app_db.add_user("ada", "admin", PASSWORD)
    with app_db.factory.begin() as session:
        actor = Actor.from_user(find_user(session, "ada"))
        recorded = classify_and_record(session, FakeClassifier(), actor, text="cotton T-shirt", photos=[])
        submit_decision(session, actor, line_item_id=recorded.line_item_id, code="610910")
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="auth_username").input("ada")
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    at.switch_page("screens/review.py").run()
    assert "Bulk approve (0)" in tab_labels(at)  # own submissions are not offered in bulk
    at.button(key="review_approve").click().run()
    assert "another reviewer has to" in plain(at.error[0])
    assert decisions(app_db, "approved") == []
