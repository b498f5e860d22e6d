"""The HS tree search finds trade names (issue 12 point 5): shipped terms, plurals, and the model's own ranking."""

from __future__ import annotations

from types import SimpleNamespace

from hs_model.trade_names import TradeNames, get_trade_names
from services.classify import search_subheadings


def test_the_shipped_index_knows_the_trade_names_brokers_type():
    names = get_trade_names()
    assert len(names) > 10_000
    for query, code in [("backpack", "420291"), ("rucksacks", "420291"), ("phone case", "420291"),
                        ("necklace", "711319")]:  # fmt: skip
        assert code in [h.code for h in names.find(query)], query


def test_every_word_must_match_and_the_exact_term_ranks_first():
    names = TradeNames(
        [("watch straps of leather", ["911390"]), ("watches", ["910211"]), ("wrist watches", ["910211"])]
    )
    assert [h.code for h in names.find("watch")] == ["910211", "911390"]
    assert [h.term for h in names.find("leather watch")] == ["watch straps of leather"]
    assert names.find("watch gold") == [] and names.find("  ") == []


def test_search_offers_official_then_trade_names_then_the_models_ranking():
    def predict(text, images, top_k=5):
        assert text == "sneakers"
        return SimpleNamespace(levels={6: [SimpleNamespace(code="640411", score=0.41)]})

    found = search_subheadings("sneakers", classifier=SimpleNamespace(predict=predict))
    assert [(o.code, o.source) for o in found][-1] == ("640411", "model 41%")
    rucksack = search_subheadings("rucksack")
    assert any(o.code == "420291" and o.source.startswith("trade name") for o in rucksack)
    assert search_subheadings("6109.10")[0].code == "610910"  # a code is still a code
