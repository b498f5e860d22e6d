"""The precedents' vote on the Classify screen: which candidates earlier rulings and decisions raised, and which
examples voted (AppTest, no towers)."""

from __future__ import annotations

import dataclasses

import pytest

from hs_model.precedents import Precedent
from screens import common
from services.precedents import vote_evidence
from tests.test_app_classify import FakeClassifier, classify, signed_in

VOTERS = (
    Precedent("Knitted men's T-shirt, 100 % cotton jersey", "610910", "cbp_rulings", "N350001:description",
              "2026-03-02", 0.81, 0.40),
    Precedent("cotton tee for men", "610910", "reviewed", "7", "2026-11-30", 0.77, 0.55),
    Precedent("polo shirt of cotton", "610510", "uk_parcels", "uk-parcel-9", "", 0.35, 0.0),  # below the floor
)  # fmt: skip


class VotedClassifier(FakeClassifier):
    def predict(self, text=None, images=(), top_k=5):
        return dataclasses.replace(super().predict(text, images, top_k), precedents=VOTERS)


def test_vote_evidence_lists_the_voters_of_a_code_strongest_first():
    pred = VotedClassifier().predict("T-shirt")
    rows = vote_evidence(pred, "610910")
    assert [(r.source, r.date, r.code) for r in rows] == [
        ("reviewed line item #7", "2026-11-30", "610910"),
        ("US CBP ruling N350001", "2026-03-02", "610910"),
    ]
    assert [r.source for r in vote_evidence(pred, "6109")] == [r.source for r in rows]  # its heading too
    assert vote_evidence(pred, "610510") == []  # a neighbour below the floor did not vote


def test_the_candidates_say_which_precedents_raised_them(app_db, monkeypatch: pytest.MonkeyPatch):
    fake = VotedClassifier()
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: fake)
    at = classify(signed_in(app_db), "men's cotton T-shirt")
    assert not at.exception and not at.error
    table = next(df.value for df in at.dataframe if "Precedents" in df.value.columns)
    by_code = dict(zip(table["Code"], table["Precedents"], strict=True))
    assert by_code["6109.10"] == "2 labelled precedents on similar goods: 6109.10"
    assert by_code["6105.10"] == ""


def test_the_reviewer_sees_which_candidates_the_precedents_raised(app_db, monkeypatch: pytest.MonkeyPatch):
    from tests.test_app_review import sign_in

    fake = VotedClassifier()
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: fake)
    at = classify(signed_in(app_db), "men's cotton T-shirt")
    at.button(key="classify_submit").click().run()
    assert not at.exception and not at.error
    at = sign_in(app_db, "rita", "reviewer")
    assert not at.exception
    table = next(df.value for df in at.dataframe if "Precedents" in df.value.columns)
    assert dict(zip(table["Code"], table["Precedents"], strict=True))["6109.10"].startswith("2 labelled precedents")


def test_the_decision_log_export_carries_the_vote_for_the_decided_code(app_db, monkeypatch: pytest.MonkeyPatch):
    from db.decision_log import decision_log
    from db.export import render_rows

    fake = VotedClassifier()
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: fake)
    at = classify(signed_in(app_db), "men's cotton T-shirt")
    at.button(key="classify_submit").click().run()
    assert not at.exception and not at.error
    with app_db.factory() as session:
        rows = decision_log(session)
    assert [(r["kind"], r["code"], r["precedents"]) for r in rows] == [
        ("submitted", "610910", "2 labelled precedents on similar goods: 6109.10")
    ]
    assert "2 labelled precedents on similar goods: 6109.10" in render_rows(rows, "csv").decode()
