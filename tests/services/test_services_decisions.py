"""Decision workflow: derived state after each sequence, role checks, codes, and illegal transitions."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from db.models import AuditEvent
from db.queries import QueueFilter
from services import decisions
from services.errors import InvalidInput, NotFound, PermissionDenied

ROLES = ["broker", "reviewer", "admin", None]


def test_submit_then_approve(factory, actors, item_id):
    with factory.begin() as s:
        sub = decisions.submit(s, actors["broker"], item_id, "6109.10", "matches the model")
        assert (sub.kind, sub.code, sub.role, sub.model_version, sub.nomenclature_edition) == (
            "submitted",
            "610910",
            "broker",
            "zs-test",
            "HS2022",
        )
        assert sub.prediction_id is not None and sub.created_at.utcoffset().total_seconds() == 0
    with factory.begin() as s:
        assert decisions.item_state(s, actors["broker"], item_id).status == "submitted"
        decisions.approve(s, actors["reviewer"], item_id, "fine")
    with factory() as s:
        state = decisions.item_state(s, actors["admin"], item_id)
        assert (state.status, state.final_code) == ("approved", "610910")
        assert [(d.kind, d.role) for d in state.history] == [("submitted", "broker"), ("approved", "reviewer")]
        actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert actions == ["submission", "review"]


def test_submit_then_correct_keeps_the_submission(factory, actors, item_id):
    with factory.begin() as s:
        decisions.submit(s, actors["broker"], item_id, "610910")
    with factory.begin() as s:
        decisions.correct(s, actors["reviewer"], item_id, "6109 90", "50% polyester blend")
    with factory() as s:
        state = decisions.item_state(s, actors["broker"], item_id)
        assert (state.status, state.submitted_code, state.final_code) == ("corrected", "610910", "610990")
        assert [(d.kind, d.code, d.comment) for d in state.history] == [
            ("submitted", "610910", ""),
            ("corrected", "610990", "50% polyester blend"),
        ]


def test_submit_reject_submit_approve(factory, actors, item_id):
    with factory.begin() as s:
        decisions.submit(s, actors["broker"], item_id, "610990", "blend")
        decisions.reject(s, actors["reviewer"], item_id, "photo shows cotton")
        state = decisions.item_state(s, actors["broker"], item_id)
        assert (state.status, state.final_code, state.last_decision.code) == ("rejected", None, None)
        decisions.submit(s, actors["broker2"], item_id, "610910", "re-checked the label")
        decisions.approve(s, actors["admin"], item_id)
    with factory() as s:
        state = decisions.item_state(s, actors["reviewer"], item_id)
        assert state.status == "approved" and state.final_code == "610910"
        assert [d.kind for d in state.history] == ["submitted", "rejected", "submitted", "approved"]
        assert [d.user.username for d in state.history] == ["bea", "rey", "bob", "ada"]


@pytest.mark.parametrize("role", ROLES)
def test_submit_roles(factory, actors, item_id, role):
    actor = actors.get(role) if role else None
    with factory.begin() as s:
        if role in ("broker", "admin"):
            assert decisions.submit(s, actor, item_id, "610910").role == role
        else:
            with pytest.raises(PermissionDenied, match="sign in" if role is None else "Only brokers and admins"):
                decisions.submit(s, actor, item_id, "610910")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ["approve", "correct", "reject", "review_queue"])
def test_review_roles(factory, actors, item_id, role, action):
    actor = actors.get(role) if role else None
    with factory.begin() as s:
        decisions.submit(s, actors["broker"], item_id, "610910")
    calls = {
        "approve": lambda s: decisions.approve(s, actor, item_id, "ok"),
        "correct": lambda s: decisions.correct(s, actor, item_id, "610990", "blend"),
        "reject": lambda s: decisions.reject(s, actor, item_id, "unclear photo"),
        "review_queue": lambda s: decisions.review_queue(s, actor),
    }
    with factory.begin() as s:
        if role in ("reviewer", "admin"):
            calls[action](s)
        else:
            expected = "Please sign in" if role is None else "Only reviewers and admins can"
            with pytest.raises(PermissionDenied, match=expected):
                calls[action](s)


def test_item_state_needs_sign_in(factory, item_id):
    with factory() as s, pytest.raises(PermissionDenied, match="sign in"):
        decisions.item_state(s, None, item_id)


@pytest.mark.parametrize("typed", ["6109.10", "6109 10", " 610910 ", "6109-10"])
def test_code_normalisation(typed):
    assert decisions.normalise_code(typed) == "610910"


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        ("6109", "is a heading, not a 6-digit HS subheading: pick one of 6109.10, 6109.90"),
        ("6109.1", "is not an HS code: give 2, 4 or 6 digits"),
        ("61091O", "is not an HS code"),
        ("", "is not an HS code"),
        ("6109.10.00", "national tariff code, not an HS code: use its first 6 digits (6109.10)"),
        ("9999.99", "UN Comtrade code"),
        ("1234.56", "does not exist in HS 2022"),
    ],
)
def test_bad_codes(typed, says):
    with pytest.raises(InvalidInput, match=re.escape(says)):
        decisions.normalise_code(typed)


def test_valid_code_callback(factory, actors, item_id):
    known = {"610910", "610990"}.__contains__
    with factory.begin() as s:
        with pytest.raises(InvalidInput, match="6205.20 is not a subheading of the nomenclature in use"):
            decisions.submit(s, actors["broker"], item_id, "6205.20", valid_code=known)
        decisions.submit(s, actors["broker"], item_id, "6109.10", valid_code=known)
        with pytest.raises(InvalidInput, match="does not exist in HS 2022"):
            decisions.correct(s, actors["reviewer"], item_id, "123456", "x", valid_code=known)


def test_illegal_transitions(factory, actors, item_id):
    with factory.begin() as s:
        with pytest.raises(InvalidInput, match="Only submitted items can be reviewed.*not been submitted"):
            decisions.approve(s, actors["reviewer"], item_id)
        with pytest.raises(InvalidInput, match="not been submitted"):
            decisions.reject(s, actors["reviewer"], item_id, "why")
        decisions.submit(s, actors["broker"], item_id, "610910")
        with pytest.raises(InvalidInput, match="waiting for review"):
            decisions.submit(s, actors["broker2"], item_id, "610990")
        with pytest.raises(InvalidInput, match="reason"):
            decisions.correct(s, actors["reviewer"], item_id, "610990", "  ")
        with pytest.raises(InvalidInput, match="reason"):
            decisions.reject(s, actors["reviewer"], item_id, "")
        with pytest.raises(InvalidInput, match="approve it instead"):
            decisions.correct(s, actors["reviewer"], item_id, "6109.10", "same")
        decisions.approve(s, actors["reviewer"], item_id)
        for call in (
            lambda: decisions.approve(s, actors["reviewer2"], item_id),
            lambda: decisions.correct(s, actors["reviewer2"], item_id, "610990", "late"),
            lambda: decisions.submit(s, actors["broker"], item_id, "610990"),
        ):
            with pytest.raises(InvalidInput, match="already final"):
                call()


def test_no_review_of_own_submission(factory, actors, item_id):
    with factory.begin() as s:
        decisions.submit(s, actors["admin"], item_id, "610910")
        with pytest.raises(PermissionDenied, match="own submission"):
            decisions.approve(s, actors["admin"], item_id)


def test_missing_item_and_foreign_prediction(factory, actors, item_id):
    with factory.begin() as s:
        with pytest.raises(NotFound):
            decisions.submit(s, actors["broker"], 999_999, "610910")
        with pytest.raises(InvalidInput, match="does not belong"):
            decisions.submit(s, actors["broker"], item_id, "610910", prediction_id=999_999)


def test_deactivated_actor_is_refused(factory, actors, item_id):
    from services.auth import set_user_active

    with factory.begin() as s:
        set_user_active(s, actors["admin"], "bea", False)
    with factory.begin() as s, pytest.raises(PermissionDenied, match="sign in again"):
        decisions.submit(s, actors["broker"], item_id, "610910")


def test_review_queue_lists_submitted_items_fifo(factory, actors, item_id):
    with factory.begin() as s:
        from db import queries

        other = queries.create_line_item(s, description="steel bolt", created_by=actors["broker"].user_id).id
        decisions.submit(s, actors["broker"], other, "731815")
        decisions.submit(s, actors["broker2"], item_id, "610910")
    with factory.begin() as s:
        queue = decisions.review_queue(s, actors["reviewer"])
        assert [(q.line_item_id, q.code, q.decided_by) for q in queue] == [
            (other, "731815", "bea"),
            (item_id, "610910", "bob"),
        ]
        assert queue[1].model_top_code == "610910" and queue[0].model_top_code is None
        assert [
            q.line_item_id for q in decisions.review_queue(s, actors["reviewer"], QueueFilter(code_prefix="73"))
        ] == [other]
        assert decisions.review_queue(s, actors["reviewer"], QueueFilter(username="bob"))[0].line_item_id == item_id
        decisions.approve(s, actors["reviewer"], other)
        assert [q.line_item_id for q in decisions.review_queue(s, actors["reviewer"])] == [item_id]
        approved = decisions.review_queue(s, actors["admin"], QueueFilter(status="approved"))
        assert [q.line_item_id for q in approved] == [other]
        with pytest.raises(InvalidInput):
            decisions.review_queue(s, actors["admin"], QueueFilter(status="pending"))


def test_a_code_other_than_the_models_first_choice_needs_a_justification(factory, actors, item_id):
    """Issue 12 point 12: the reviewer sees why the broker departed from the model."""
    with factory.begin() as s:
        with pytest.raises(InvalidInput, match=r"6109\.90 is not the model's first choice \(6109\.10\)"):
            decisions.submit(s, actors["broker"], item_id, "610990", "   ")
        assert decisions.submit(s, actors["broker"], item_id, "610910").comment == ""  # the first choice: optional
        decisions.reject(s, actors["reviewer"], item_id, "look again")
        assert decisions.submit(s, actors["broker"], item_id, "610990", "50 % polyester").comment == "50 % polyester"
