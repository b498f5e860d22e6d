"""Precedents: reviewed items nearest in the joint space, same model version only, none on an empty database."""

from __future__ import annotations

import numpy as np
import pytest

from db import queries
from services import decisions
from services.errors import PermissionDenied
from services.precedents import find_precedents


def vec(*xs: float) -> bytes:
    v = np.array(xs, dtype=np.float32)
    return (v / np.linalg.norm(v)).tobytes()


def classified(session, broker, description: str, emb: bytes, version: str = "v1") -> int:
    item = queries.create_line_item(session, description=description, created_by=broker.user_id, embedding=emb)
    queries.record_prediction(
        session,
        line_item_id=item.id,
        model_version=version,
        nomenclature_edition="HS2022",
        latency_ms=1.0,
        needs_review=False,
        candidates=[{"level": 6, "rank": 1, "code": "610910", "description": "x", "score": 0.9}],
    )
    return item.id


def test_no_precedents_on_empty_database(factory, actors):
    with factory() as session:
        assert find_precedents(session, actors["broker"], [1.0, 0.0, 0.0], "v1") == []


def test_nearest_reviewed_items_first(factory, actors):
    broker, reviewer = actors["broker"], actors["reviewer"]
    with factory.begin() as s:
        near = classified(s, broker, "cotton tee", vec(1, 0.1, 0))
        far = classified(s, broker, "steel bolt", vec(0, 0, 1))
        pending = classified(s, broker, "cotton tee, not reviewed", vec(1, 0, 0))
        other_version = classified(s, broker, "cotton tee, old model", vec(1, 0, 0), version="v0")
        for item in (near, far, other_version):
            decisions.submit(s, broker, item, "610910", "")
        for item in (far, other_version):
            decisions.approve(s, reviewer, item, "")
        decisions.correct(s, reviewer, near, "610990", "synthetic fibres per label")
        decisions.submit(s, broker, pending, "610910", "")
    with factory() as s:
        found = find_precedents(s, broker, np.frombuffer(vec(1, 0, 0), dtype=np.float32).tolist(), "v1", k=5)
    assert [p.line_item_id for p in found] == [near, far]  # pending and other-version items never appear
    assert found[0].code == "610990" and found[0].kind == "corrected" and found[0].reviewer == "rey"
    assert found[0].similarity > found[1].similarity


def test_signed_out_caller_is_refused(factory):
    with factory() as s, pytest.raises(PermissionDenied):
        find_precedents(s, None, [1.0], "v1")
