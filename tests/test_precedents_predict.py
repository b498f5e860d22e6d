"""The real classifier with a precedent index next to its model: evidence, JSON, and codes-only without votes."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from hs_core.settings import DEFAULT_MODEL_DIR
from hs_model.precedents import PrecedentIndex, VoteConfig, valid_code_set
from hs_model.predict import Classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[Classifier, object]:
    folder = tmp_path_factory.mktemp("model")
    for name in ("card.json", "weights.safetensors"):
        shutil.copy(DEFAULT_MODEL_DIR / name, folder / name)
    return Classifier(folder), folder


def with_index(plain, texts, codes, cfg) -> Classifier:
    clf, folder = plain
    index = PrecedentIndex(clf.text_tower.name, clf.text_tower.dim, config=cfg)
    prov = [("cbp_rulings", f"N{i}", "2026-04-0{i + 1}") for i in range(len(texts))]
    index.add(texts, clf.text_tower.encode_text(texts), codes, prov, valid_code_set())
    index.save(folder)
    return clf.with_model(folder)


def test_precedents_raise_their_code_and_carry_evidence(plain):
    cfg = VoteConfig(k=3, lexical_weight=0.3, min_similarity=0.3, beta6=6.0, beta4=3.0, beta2=1.0)
    texts = ["adult bicycle helmets of plastics", "bicycle helmets for children", "men's cotton knitted T-shirts"]
    clf = with_index(plain, texts, ["650610", "650610", "610910"], cfg)
    pred = clf.predict("bicycle helmets", top_k=3)
    assert pred.levels[6][0].code == "650610"
    assert pred.precedent_summary("650610") == "2 earlier rulings on similar goods: 6506.10"
    out = pred.to_json()
    assert {p["code"] for p in out["precedents"]["neighbours"] if p["weight"] > 0} == {"650610"}
    assert out["precedents"]["candidates"]["650610"].startswith("2 earlier rulings")
    assert abs(sum(c.score for c in clf.predict("bicycle helmets", top_k=5612).levels[6]) - 1) < 1e-3


def test_no_votes_means_codes_only_and_a_note(plain):
    base, _ = plain
    cfg = VoteConfig(k=3, lexical_weight=0.3, min_similarity=0.9, beta6=6.0, beta4=3.0)  # nothing is that close
    clf = with_index(plain, ["steel bolts with nuts"], ["731816"], cfg)
    a, b = clf.predict("wooden dining table", top_k=5), base.predict("wooden dining table", top_k=5)
    assert [(c.code, round(c.score, 5)) for c in a.levels[6]] == [(c.code, round(c.score, 5)) for c in b.levels[6]]
    assert any("No earlier precedent" in n for n in a.notes) and not b.precedents
    photo_only = clf.predict(None, [Image.new("RGB", (64, 64), (10, 200, 30))], top_k=3)
    assert photo_only.precedents == () and not any("precedent" in n for n in photo_only.notes)


def test_the_app_serves_the_vote_from_the_registered_shipped_version(plain, app_db, tmp_path, monkeypatch):
    """The path the app takes: the first start registers the shipped model into the store, then serves the
    active version's folder; the shipped precedent index must arrive there (it once did not: no vote at all)."""
    from services import model_registry

    if not (DEFAULT_MODEL_DIR / "precedents.json").is_file():
        pytest.skip("no precedent index shipped in assets/model")
    monkeypatch.setenv("HS_MODEL_REGISTRY", str(tmp_path / "registry"))
    with app_db.factory.begin() as session:
        folder = model_registry.verify(model_registry.ensure_default_registered(session))
    served = plain[0].with_model(folder)
    assert served.precedents is not None and len(served.precedents) > 1000
    pred = served.predict("bicycle helmets", top_k=3)
    assert any(p.weight > 0 for p in pred.precedents)
