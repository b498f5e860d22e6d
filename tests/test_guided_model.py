"""Guided classification on the real shipped model: no confident guess on an unstated material, questions in the CLI."""

from __future__ import annotations

import json

import pytest

from hs_model.predict import Classifier
from hs_model.questions import apply_answers
from tests.test_cli import assert_user_error, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier()


def test_unstated_material_is_not_a_confident_split(classifier):
    pred = classifier.predict("men's T-shirt")
    scores = {c.code: c.score for c in pred.levels[6]}
    assert {"610910", "610990"} <= set(scores)
    assert max(scores["610910"], scores["610990"]) <= 0.8
    assert "textile" in [q.key for q in pred.guidance.questions]


def test_stated_cotton_decides(classifier):
    pred = classifier.predict("men's 100% cotton T-shirt")
    assert pred.levels[6][0].code == "610910"
    assert ("textile", "cotton") in {(e.criterion, e.option) for e in pred.guidance.evidence}


def test_answer_of_cotton_reorders_in_place(classifier):
    pred = classifier.predict("Wrangler Men Motor Rider Red T-Shirts")
    answered = apply_answers(pred, {"textile": "cotton"})
    assert answered.levels[6][0].code == "610910"
    assert answered.levels[4][0].code == "6109" and answered.levels[4][0].score >= answered.levels[6][0].score


def test_cli_json_has_questions_evidence_and_applies_answers():
    proc = run("predict", "--text", "men's T-shirt", "--json", "--answer", "textile=cotton")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answers"] == {"textile": "cotton"}
    assert "textile" in [q["key"] for q in out["questions"]]
    assert {"criterion": "gender", "option": "men"}.items() <= out["evidence"][0].items()
    assert out["levels"]["6"][0]["code"] == "610910"


def test_cli_bad_answer_is_a_user_error():
    assert_user_error(run("predict", "--text", "T-shirt", "--answer", "textile=kevlar"), "not an option")


def test_the_pool_holds_every_subheading_of_the_headings_a_question_can_offer(classifier):
    from hs_core.nomenclature import get_nomenclature
    from hs_model.predict import Query
    from hs_model.questions import HEADINGS_COVERED, POOL

    raw = classifier.predict_features(classifier.encode([Query("brass door handle")]), POOL)[0]
    pool = [c.code for c in raw.levels[6]]
    scores = [c.score for c in raw.levels[6]]
    assert scores == sorted(scores, reverse=True) and len(pool) == len(set(pool)) >= POOL
    every = [c.digits for c in get_nomenclature().subheadings]
    for heading in raw.levels[4][:HEADINGS_COVERED]:
        assert {code for code in every if code[:4] == heading.code} <= set(pool)
    heads = {c.code: c.score for c in raw.levels[4]}
    for code, p in zip(pool, scores, strict=True):  # each added subheading's probability is the model's own
        assert p <= heads.get(code[:4], 1.0) + 1e-6
