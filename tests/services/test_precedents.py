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


class _ToyTower:
    """Hashes words into 8 dimensions: enough to embed descriptions without the real text tower."""

    name, dim = "toy", 8

    def encode_text(self, texts):
        import torch

        out = torch.zeros(len(texts), 8)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % 8] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)


class _ToyClassifier:
    def __init__(self, index):
        self.precedents, self.text_tower = index, _ToyTower()


def test_reviewed_decisions_join_the_index_incrementally(factory, actors):
    from hs_model.precedents import PrecedentIndex
    from services.precedents import sync_reviewed_precedents

    broker, reviewer = actors["broker"], actors["reviewer"]
    clf = _ToyClassifier(PrecedentIndex("toy", 8))
    with factory.begin() as s:
        tee = classified(s, broker, "cotton tee", vec(1, 0, 0))
        bolt = classified(s, broker, "steel bolt", vec(0, 0, 1))
        pending = classified(s, broker, "wool scarf", vec(0, 1, 0))
        for item in (tee, bolt, pending):
            decisions.submit(s, broker, item, "610910", "")
        decisions.approve(s, reviewer, tee, "")
        decisions.correct(s, reviewer, bolt, "731815", "a bolt, not a shirt")
    with factory() as s:
        first = sync_reviewed_precedents(s, clf)
    assert (first.added, first.retired) == (2, 0)
    assert sorted(clf.precedents.codes) == ["610910", "731815"]
    assert {p[0] for p in clf.precedents.provenance} == {"reviewed"}
    with factory() as s:
        again = sync_reviewed_precedents(s, clf)
    assert again.added == 0 and len(clf.precedents) == 2  # nothing new: nothing re-embedded
    with factory.begin() as s:
        decisions.approve(s, reviewer, pending, "")  # reviewed later: joins at the next sync, alone
    with factory() as s:
        third = sync_reviewed_precedents(s, clf)
    assert (third.added, third.retired) == (1, 0) and len(clf.precedents) == 3
    assert clf.precedents.texts[-1] == "wool scarf" and clf.precedents.cursor == third.cursor > first.cursor


def test_sync_without_an_index_does_nothing(factory, actors):
    from services.precedents import sync_reviewed_precedents

    with factory() as s:
        assert sync_reviewed_precedents(s, _ToyClassifier(None)).enabled is False


def test_imported_history_votes_and_a_retracted_import_stops_voting(factory, actors):
    """A firm's imported declarations join the precedents' vote at the next sync (the same-product record is
    not the only use of them); retracting the import retires its rows."""
    from hs_model.precedents import PrecedentIndex
    from services import history
    from services.history_file import check_history_file
    from services.precedents import sync_reviewed_precedents

    data = "description,code,date\nMen's knitted cotton T-shirt,6109.10.00,2026-03-01\nsteel bolts M8,731815,\n"
    with factory.begin() as s:
        imp = history.import_history(s, actors["admin"], check_history_file("firm.csv", data.encode()))
    clf = _ToyClassifier(PrecedentIndex("toy", 8))
    with factory() as s:
        first = sync_reviewed_precedents(s, clf)
    assert first.imported_added == 2 and sorted(clf.precedents.codes) == ["610910", "731815"]
    assert clf.precedents.provenance[0] == ("imported", f"{imp.import_id}:2", "2026-03-01")
    with factory() as s:
        assert sync_reviewed_precedents(s, clf).imported_added == 0  # nothing new: nothing re-read
    with factory.begin() as s:
        history.retract_import(s, actors["admin"], imp.import_id, "another customer's file")
    with factory() as s:
        after = sync_reviewed_precedents(s, clf)
    assert after.imported_retired == 2 and clf.precedents.retired == {0, 1}
