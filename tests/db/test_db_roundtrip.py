"""Line items, photos, predictions and decisions round-trip; append-only tables refuse changes."""

from __future__ import annotations

import io
from datetime import UTC

import pytest
from PIL import Image
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from db import queries
from db.model_versions import activate_model_version, active_model_version, register_model_version
from db.models import AppendOnlyError, AuditEvent, Decision, LineItem
from db.photos import store_photo

CANDIDATES = [
    {"level": 2, "rank": 1, "code": "61", "description": "Knitted apparel", "score": 0.9},
    {"level": 4, "rank": 1, "code": "6109", "description": "T-shirts", "score": 0.8},
    {"level": 6, "rank": 2, "code": "610990", "description": "Of other textiles", "score": 0.1},
    {"level": 6, "rank": 1, "code": "610910", "description": "Of cotton", "score": 0.7},
]


def png_bytes(color=(200, 30, 30), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _item_with_history(session, tmp_path):
    broker = queries.add_user(session, username="Bea", role="broker", password_hash="x")
    reviewer = queries.add_user(session, username="rey", role="reviewer", password_hash="x")
    shipment = queries.get_or_create_shipment(session, "SHP-1", created_by=broker.id)
    photos = [store_photo(png_bytes(), tmp_path), store_photo(png_bytes((0, 0, 255), (4, 4)), tmp_path)]
    item = queries.create_line_item(
        session,
        description=" cotton t-shirt ",
        created_by=broker.id,
        shipment_id=shipment.id,
        line_ref="1",
        photos=photos,
        embedding=b"\x00\x00\x80?" * 4,
    )
    pred = queries.record_prediction(
        session,
        line_item_id=item.id,
        model_version="zs-test",
        nomenclature_edition="HS2022",
        latency_ms=12.5,
        needs_review=False,
        candidates=CANDIDATES,
    )
    queries.add_decision(
        session,
        line_item_id=item.id,
        kind="submitted",
        code="610910",
        comment="as predicted",
        user_id=broker.id,
        role="broker",
        prediction_id=pred.id,
        model_version="zs-test",
        nomenclature_edition="HS2022",
    )
    queries.add_decision(
        session,
        line_item_id=item.id,
        kind="corrected",
        code="610990",
        comment="blend",
        user_id=reviewer.id,
        role="reviewer",
        prediction_id=pred.id,
        model_version="zs-test",
        nomenclature_edition="HS2022",
    )
    return item.id


def test_round_trip(factory, tmp_path):
    with factory.begin() as session:
        item_id = _item_with_history(session, tmp_path)
    with factory() as session:
        item = session.get(LineItem, item_id)
        assert item.description == "cotton t-shirt"
        assert item.shipment.reference == "SHP-1"
        assert [p.position for p in item.photos] == [0, 1]
        assert (item.photos[0].width, item.photos[0].height, item.photos[0].mime) == (8, 6, "image/png")
        assert item.created_at.tzinfo is not None and item.created_at.utcoffset().total_seconds() == 0
        pred = queries.latest_prediction(session, item_id)
        assert (pred.top_code, pred.top_score, pred.needs_review) == ("610910", 0.7, False)
        assert pred.candidates[0] == CANDIDATES[0]
        state = queries.current_state(session, item_id)
        assert (state.status, state.submitted_code, state.final_code) == ("corrected", "610910", "610990")
        assert [d.kind for d in state.history] == ["submitted", "corrected"]
        assert state.history[0].user.username == "bea"
        examples = queries.reviewed_examples(session)
        assert [(e.line_item_id, e.code, e.kind) for e in examples] == [(item_id, "610990", "corrected")]
        assert len(examples[0].photo_paths) == 2 and examples[0].embedding == b"\x00\x00\x80?" * 4
        assert queries.get_or_create_shipment(session, "SHP-1").id == item.shipment_id
        assert queries.find_user(session, " BEA ").role == "broker"


def test_line_item_needs_description_or_photo(factory):
    with factory.begin() as session, pytest.raises(ValueError, match="description or at least one photo"):
        queries.create_line_item(session, description="  ", created_by=None)


@pytest.mark.parametrize(
    "bad",
    [
        {"level": 6, "rank": 1, "code": "6109", "score": 0.1},
        {"level": 3, "rank": 1, "code": "610", "score": 0.1},
        {"level": 6, "rank": 1, "code": "610910", "score": float("nan")},
    ],
)
def test_bad_candidates_are_refused(factory, bad):
    with factory.begin() as session:
        item = queries.create_line_item(session, description="x", created_by=None)
        with pytest.raises(ValueError):
            queries.record_prediction(
                session,
                line_item_id=item.id,
                model_version="m",
                nomenclature_edition="HS2022",
                latency_ms=1,
                needs_review=True,
                candidates=[bad],
            )


def test_orm_update_and_delete_of_decisions_raise(factory, tmp_path):
    with factory.begin() as session:
        item_id = _item_with_history(session, tmp_path)
    with factory() as session:
        decision = session.scalars(select(Decision).where(Decision.line_item_id == item_id)).first()
        decision.comment = "rewritten"
        with pytest.raises(AppendOnlyError):
            session.flush()
        session.rollback()
        session.delete(session.get(Decision, decision.id))
        with pytest.raises(AppendOnlyError):
            session.flush()
        session.rollback()
        event = queries.add_audit_event(session, action="test", detail={"a": 1})
        session.commit()
        event.action = "tampered"
        with pytest.raises(AppendOnlyError):
            session.commit()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE decisions SET code = '999999'",
        "DELETE FROM decisions",
        "UPDATE audit_events SET action = 'x'",
        "DELETE FROM audit_events",
    ],
)
def test_raw_sql_changes_are_refused_by_triggers(factory, tmp_path, sql):
    with factory.begin() as session:
        item_id = _item_with_history(session, tmp_path)
        queries.add_audit_event(session, action="test")
    with factory() as session:
        with pytest.raises(DBAPIError, match="append-only"):
            session.execute(text(sql))
        session.rollback()
        with pytest.raises(DBAPIError, match="append-only"):
            session.execute(update(Decision).where(Decision.line_item_id == item_id).values(comment="x"))
        session.rollback()
        assert session.scalar(select(Decision.code).order_by(Decision.id).limit(1)) == "610910"
        assert session.scalars(select(AuditEvent.action)).all() == ["test"]


def test_model_versions_active_is_latest_activation(factory):
    with factory.begin() as session:
        admin = queries.add_user(session, username="root", role="admin", password_hash="x")
        register_model_version(session, version_id="zs-a", path="assets/a", sha256="a" * 64)
        register_model_version(session, version_id="ft-b", path="runs/b", sha256="b" * 64, parent_id="zs-a")
        assert active_model_version(session) is None
        activate_model_version(session, "zs-a", user_id=admin.id, username="root", reason="first")
        activate_model_version(session, "ft-b", user_id=admin.id, username="root", reason="better")
    with factory() as session:
        active = active_model_version(session)
        assert (active.id, active.status, active.parent_id) == ("ft-b", "active", "zs-a")
        actions = session.scalars(select(AuditEvent.action)).all()
        assert actions == ["model_change", "model_change"]
        with pytest.raises(ValueError, match="another checkpoint hash"):
            register_model_version(session, version_id="zs-a", path="x", sha256="c" * 64)


def test_timestamps_are_utc_aware(factory):
    with factory.begin() as session:
        event = queries.add_audit_event(session, action="t")
        event_id = event.id
    with factory() as session:
        assert session.get(AuditEvent, event_id).at.tzinfo == UTC
