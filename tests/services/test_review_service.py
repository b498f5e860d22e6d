"""Read-side review services: item_detail, list_decisions, log_choices, my_items (role checks and contents); bulk
approval of high-confidence agreements; the queue's new filters; the classification audit event."""

from __future__ import annotations

import io
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from db import queries
from db.models import AuditEvent, Decision, utcnow
from db.photos import store_photo
from services import decisions
from services.errors import InvalidInput, NotFound, PermissionDenied
from services.review import DecisionFilter, QueueFilter, item_detail, list_decisions, log_choices, my_items


def png(color=(40, 70, 140)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, "PNG")
    return buffer.getvalue()


def new_item(session, actor, *, top="610910", needs_review=False, description="cotton t-shirt", **kwargs) -> int:
    item = queries.create_line_item(session, description=description, created_by=actor.user_id, **kwargs)
    queries.record_prediction(
        session,
        line_item_id=item.id,
        model_version="zs-test",
        nomenclature_edition="HS2022",
        latency_ms=5.0,
        needs_review=needs_review,
        candidates=[
            {"level": 6, "rank": 1, "code": top, "description": "best", "score": 0.7},
            {"level": 6, "rank": 2, "code": "610990", "description": "second", "score": 0.2},
            {"level": 4, "rank": 1, "code": top[:4], "description": "heading", "score": 0.8},
            {"level": 2, "rank": 1, "code": top[:2], "description": "chapter", "score": 0.9},
        ],
    )
    return item.id


# --- item_detail -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["reviewer", "admin", "broker"])
def test_item_detail_for_reviewers_admins_and_the_creating_broker(factory, actors, item_id, who):
    with factory() as s:
        detail = item_detail(s, actors[who], item_id)
    assert (detail.line_item_id, detail.description, detail.created_by, detail.status) == (
        item_id,
        "men's cotton t-shirt",
        "bea",
        "new",
    )
    assert [(c.code, c.formatted, c.score) for c in detail.candidates[6]] == [
        ("610910", "6109.10", 0.8),
        ("610990", "6109.90", 0.1),
    ]
    assert (detail.model_version, detail.nomenclature_edition, detail.needs_review) == ("zs-test", "HS2022", False)


@pytest.mark.parametrize("who", ["broker2", None])
def test_item_detail_refuses_other_brokers_and_strangers(factory, actors, item_id, who):
    with factory() as s, pytest.raises(PermissionDenied):
        item_detail(s, actors.get(who), item_id)


def test_item_detail_of_a_missing_item(factory, actors):
    with factory() as s, pytest.raises(NotFound, match="Line item 999 does not exist"):
        item_detail(s, actors["reviewer"], 999)


def test_item_detail_history_keeps_the_submission_after_a_correction(factory, actors, item_id):
    with factory.begin() as s:
        decisions.submit(s, actors["broker"], item_id, "610910", "knitted, cotton label")
        decisions.correct(s, actors["reviewer"], item_id, "610990", "60% polyester")
    with factory() as s:
        detail = item_detail(s, actors["admin"], item_id)
    assert (detail.status, detail.submitted_code, detail.final_code) == ("corrected", "610910", "610990")
    assert (detail.submitted_by, detail.justification) == ("bea", "knitted, cotton label")
    assert [(h.username, h.role, h.kind, h.code, h.comment) for h in detail.history] == [
        ("bea", "broker", "submitted", "610910", "knitted, cotton label"),
        ("rey", "reviewer", "corrected", "610990", "60% polyester"),
    ]
    assert all(h.at.utcoffset() == timedelta(0) for h in detail.history)
    assert detail.agrees_with_model is True  # the broker did submit the model's confident best code


def test_item_detail_photos_are_resolved_inside_the_store(factory, actors, tmp_path):
    root = tmp_path / "photos"
    good, gone = store_photo(png(), root), store_photo(png((200, 10, 10)), root)
    (root / gone.rel_path).unlink()
    escape = SimpleNamespace(**{**gone.__dict__, "rel_path": "../../etc/passwd"})
    with factory.begin() as s:
        item = queries.create_line_item(
            s, description="", created_by=actors["broker"].user_id, photos=[good, gone, escape]
        )
        item_id = item.id
    with factory() as s:
        detail = item_detail(s, actors["reviewer"], item_id, photo_root=root)
    assert [p.position for p in detail.photos] == [0, 1, 2]
    assert detail.photos[0].path == (root / good.rel_path).resolve() and detail.photos[0].problem is None
    assert detail.photos[1].path is None and "missing" in detail.photos[1].problem
    assert detail.photos[2].path is None and "not valid" in detail.photos[2].problem
    assert detail.candidates == {} and detail.model_top is None and detail.agrees_with_model is False


# --- list_decisions and log_choices ------------------------------------------------------------------------------


@pytest.fixture
def logged(factory, actors, item_id) -> dict[str, int]:
    """Item 1 submitted and approved; item 2 (shipment S-9, by bob) submitted and rejected."""
    with factory.begin() as s:
        shipment = queries.get_or_create_shipment(s, "S-9", actors["broker2"].user_id)
        other = new_item(s, actors["broker2"], top="020110", shipment_id=shipment.id)
        decisions.submit(s, actors["broker"], item_id, "610910")
        decisions.approve(s, actors["reviewer"], item_id)
        decisions.submit(s, actors["broker2"], other, "020110", "beef, not a shirt")
        decisions.reject(s, actors["reviewer2"], other, "which meat?")
    return {"first": item_id, "second": other}


@pytest.mark.parametrize("who", ["broker", "reviewer", None])
def test_list_decisions_is_for_admins_only(factory, actors, logged, who):
    with factory() as s:
        with pytest.raises(PermissionDenied):
            list_decisions(s, actors.get(who))
        with pytest.raises(PermissionDenied):
            log_choices(s, actors.get(who))


def test_list_decisions_newest_first_and_filtered(factory, actors, logged):
    with factory() as s:
        everything = list_decisions(s, actors["admin"])
        assert [(r["kind"], r["username"]) for r in everything.rows] == [
            ("rejected", "rita"),
            ("submitted", "bob"),
            ("approved", "rey"),
            ("submitted", "bea"),
        ]
        assert everything.total == 4 and everything.filters.max_decision_id == everything.rows[0]["decision_id"]
        assert [r["kind"] for r in list_decisions(s, actors["admin"], DecisionFilter(kinds=("rejected",))).rows] == [
            "rejected"
        ]
        assert list_decisions(s, actors["admin"], DecisionFilter(shipment_reference="S-9")).total == 2
        assert list_decisions(s, actors["admin"], DecisionFilter(code_prefix="6109")).total == 2
        assert list_decisions(s, actors["admin"], DecisionFilter(username="bob")).total == 1
        assert list_decisions(s, actors["admin"], DecisionFilter(model_version="zs-test")).total == 4
        assert list_decisions(s, actors["admin"], DecisionFilter(model_version="other")).total == 0
        tomorrow = (utcnow() + timedelta(days=1)).date()
        assert list_decisions(s, actors["admin"], DecisionFilter(since=tomorrow)).total == 0
        cut = list_decisions(s, actors["admin"], limit=2)
        assert (len(cut.rows), cut.total, cut.rows[0]["kind"]) == (2, 4, "rejected")
        choices = log_choices(s, actors["admin"])
    assert (choices.usernames, choices.model_versions) == (("bea", "bob", "rey", "rita"), ("zs-test",))


def test_listed_filters_pin_the_export_to_what_was_shown(factory, actors, logged, item_id):
    from services.export import export_decisions

    with factory() as s:
        listed = list_decisions(s, actors["admin"], DecisionFilter(username="bob"))
    with factory.begin() as s:  # bob decides again after the table was read
        decisions.submit(s, actors["broker2"], logged["second"], "020120", "bone in")
    with factory.begin() as s:
        data = export_decisions(s, actors["admin"], listed.filters, "jsonl")
        fresh = list_decisions(s, actors["admin"], DecisionFilter(username="bob"))
    assert len(data.splitlines()) == listed.total == 1
    assert fresh.total == 2


def test_an_empty_log_pins_to_nothing(factory, actors):
    with factory() as s:
        listed = list_decisions(s, actors["admin"])
    assert (listed.rows, listed.total, listed.filters.max_decision_id) == ((), 0, 0)


# --- my_items ----------------------------------------------------------------------------------------------------


def test_my_items_lists_only_the_callers_own_items_newest_first(factory, actors, logged):
    with factory.begin() as s:
        newer = new_item(s, actors["broker"], description="second product")
    with factory() as s:
        mine = my_items(s, actors["broker"])
        theirs = my_items(s, actors["broker2"])
        with pytest.raises(PermissionDenied):
            my_items(s, actors["reviewer"])
    assert [(q.line_item_id, q.status, q.code) for q in mine] == [
        (newer, "new", None),
        (logged["first"], "approved", "610910"),
    ]
    assert [(q.line_item_id, q.status, q.shipment_reference) for q in theirs] == [(logged["second"], "rejected", "S-9")]


# --- bulk approval -----------------------------------------------------------------------------------------------


def test_approve_agreements_approves_each_as_its_own_decision_and_refuses_the_rest(factory, actors):
    with factory.begin() as s:
        agree = [new_item(s, actors["broker"]), new_item(s, actors["broker2"])]
        differs = new_item(s, actors["broker"])
        unsure = new_item(s, actors["broker"], needs_review=True)
        own = new_item(s, actors["admin"])
        for i in (*agree, unsure):
            decisions.submit(s, actors["broker"], i, "610910")
        decisions.submit(s, actors["broker"], differs, "610990", "synthetic fibres")
        decisions.submit(s, actors["admin"], own, "610910")
    with factory.begin() as s:
        result = decisions.approve_agreements(s, actors["admin"], [*agree, differs, unsure, own, 999], "bulk")
    assert [(d.line_item_id, d.kind, d.code, d.comment) for d in result.approved] == [
        (i, "approved", "610910", "bulk") for i in agree
    ]
    refused = dict(result.refused)
    assert set(refused) == {differs, unsure, own, 999}
    assert "not a high-confidence agreement" in refused[differs] and "not a high-confidence" in refused[unsure]
    assert "your own submission" in refused[own] and "does not exist" in refused[999]
    with factory() as s:
        kinds = {i: queries.current_state(s, i).status for i in (*agree, differs, unsure, own)}
        reviews = s.scalars(select(AuditEvent).where(AuditEvent.action == "review")).all()
    assert kinds == {
        agree[0]: "approved",
        agree[1]: "approved",
        differs: "submitted",
        unsure: "submitted",
        own: "submitted",
    }
    assert sorted(e.detail["line_item_id"] for e in reviews) == agree


def test_approve_agreements_checks_the_role_and_the_selection(factory, actors, item_id):
    with factory.begin() as s:
        decisions.submit(s, actors["broker"], item_id, "610910")
    with factory.begin() as s:
        with pytest.raises(PermissionDenied):
            decisions.approve_agreements(s, actors["broker2"], [item_id])
        with pytest.raises(InvalidInput, match="Tick at least one"):
            decisions.approve_agreements(s, actors["reviewer"], [])
    with factory() as s:
        assert s.scalars(select(Decision).where(Decision.kind == "approved")).first() is None


# --- the queue's filters -----------------------------------------------------------------------------------------


def test_review_queue_filters_by_score_and_age(factory, actors, item_id):
    with factory.begin() as s:
        decisions.submit(s, actors["broker"], item_id, "610910")  # the model's top score is 0.8
    with factory() as s:

        def ids(**f) -> list[int]:
            return [q.line_item_id for q in decisions.review_queue(s, actors["reviewer"], QueueFilter(**f))]

        assert ids(min_score=0.8) == [item_id] and ids(min_score=0.81) == []
        assert ids(max_score=0.8) == [item_id] and ids(max_score=0.5) == []
        assert ids(decided_before=utcnow() + timedelta(minutes=1)) == [item_id]
        assert ids(decided_before=utcnow() - timedelta(days=1)) == []
        assert ids(decided_after=utcnow() - timedelta(days=1)) == [item_id]
        assert ids(code_prefix="61", username="bea") == [item_id] and ids(code_prefix="02") == []


# --- the classification audit event ------------------------------------------------------------------------------


def test_classifying_records_an_audit_event(factory, actors):
    from services.classify import classify_and_record
    from tests.test_app_classify import FakeClassifier

    with factory.begin() as s:
        recorded = classify_and_record(s, FakeClassifier(), actors["broker"], text="cotton T-shirt", photos=[])
    with factory() as s:
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "classification")).all()
    assert (event.user_id, event.username) == (actors["broker"].user_id, "bea")
    assert event.detail == {
        "line_item_id": recorded.line_item_id,
        "prediction_id": recorded.prediction_id,
        "model_version": "fake-v1",
    }


def scored_item(session, actor, sixes, *, needs_review=False) -> int:
    """A line item whose prediction ranks the given subheadings ``[(code, probability), ...]``."""
    item = queries.create_line_item(session, description="bag", created_by=actor.user_id)
    queries.record_prediction(
        session,
        line_item_id=item.id,
        model_version="zs-test",
        nomenclature_edition="HS2022",
        latency_ms=5.0,
        needs_review=needs_review,
        candidates=[
            {"level": 6, "rank": rank, "code": code, "description": "", "score": score}
            for rank, (code, score) in enumerate(sixes, 1)
        ]
        + [{"level": 4, "rank": 1, "code": sixes[0][0][:4], "description": "", "score": 0.9}],
    )
    return item.id


def test_bulk_approval_is_confident_only_at_six_digits_above_the_threshold_without_a_near_tie(factory, actors):
    """Issue 12 point 3: a confident heading is not enough; 50 %, 41 % or a near tie at 6 digits is refused."""
    cases = {
        "confident": [("420292", 0.85), ("420222", 0.10)],
        "half": [("420292", 0.50), ("640399", 0.20)],  # below the threshold, other heading
        "near_tie": [("420292", 0.62), ("420222", 0.33)],  # same heading, runner-up over half of the best
        "other_heading_close": [("420292", 0.62), ("640399", 0.35)],  # not a tie inside one heading
    }
    with factory.begin() as s:
        ids = {name: scored_item(s, actors["broker"], sixes) for name, sixes in cases.items()}
        for item_id in ids.values():
            decisions.submit(s, actors["broker"], item_id, "420292")
    with factory() as s:
        queue = {q.line_item_id: q for q in decisions.review_queue(s, actors["reviewer"])}
    agreeing = {
        name for name, i in ids.items() if decisions.is_agreement(queue[i].code, queue[i].model_subheadings, False)
    }
    assert agreeing == {"confident", "other_heading_close"}
    with factory.begin() as s:
        result = decisions.approve_agreements(s, actors["reviewer"], list(ids.values()))
    assert sorted(d.line_item_id for d in result.approved) == sorted([ids["confident"], ids["other_heading_close"]])
    refused = dict(result.refused)
    assert set(refused) == {ids["half"], ids["near_tie"]}
    assert "no near tie" in refused[ids["near_tie"]]


@pytest.mark.parametrize(
    ("sixes", "needs_review", "expected"),
    [
        ([("610910", 0.60), ("610990", 0.29)], False, True),
        ([("610910", 0.59), ("620520", 0.01)], False, False),
        ([("610910", 0.70), ("610990", 0.35)], False, False),  # near tie inside heading 6109
        ([("610910", 0.95)], True, False),  # flagged for review
        ([("610910", 0.95)], None, False),  # no prediction flag
        ([], False, False),
    ],
)
def test_is_agreement(sixes, needs_review, expected):
    assert decisions.is_agreement("610910", sixes, needs_review) is expected
    assert decisions.is_agreement("610990", sixes, needs_review) is False


# --- comment thread (issue 12 point 12) --------------------------------------------------------------------------


def test_a_comment_thread_between_the_broker_and_reviewers_is_audited_and_append_only(factory, actors, item_id):
    from db.models import AppendOnlyError, ItemComment
    from services.comments import add_comment, item_comments

    with factory.begin() as s:
        add_comment(s, actors["reviewer"], item_id, "Is the lining leather?")
        add_comment(s, actors["broker"], item_id, "  No:\x00 textile lining.  ")
        with pytest.raises(PermissionDenied, match="only comment on the line items they classified"):
            add_comment(s, actors["broker2"], item_id, "me too")
        with pytest.raises(InvalidInput, match="Write the comment"):
            add_comment(s, actors["reviewer"], item_id, "   ")
        with pytest.raises(NotFound):
            add_comment(s, actors["reviewer"], 999, "where?")
    with factory() as s:
        thread = item_comments(s, actors["admin"], item_id)
        with pytest.raises(PermissionDenied):
            item_comments(s, actors["broker2"], item_id)
        audited = s.scalars(select(AuditEvent).where(AuditEvent.action == "comment")).all()
    assert [(c.username, c.role, c.body) for c in thread] == [
        ("rey", "reviewer", "Is the lining leather?"),
        ("bea", "broker", "No:  textile lining."),
    ]
    assert [e.detail["line_item_id"] for e in audited] == [item_id, item_id]
    with factory.begin() as s, pytest.raises(AppendOnlyError):
        s.scalars(select(ItemComment)).first().body = "edited"
        s.flush()
