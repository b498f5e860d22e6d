"""Label texts per HS code: official texts, US tariff-line paths from Indent, UK texts, merging and the cap."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hs_train import label_texts as lt

DATA_DIR = Path(__file__).parents[1] / "../shared/data"
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="needs ../shared/data (the shared data folder)")

US_HEADER = ["HTS Number", "Indent", "Description", "Unit of Quantity", "General Rate of Duty"]
US_ROWS = [
    ("6109", "0", "T-shirts, singlets, tank tops and similar garments, knitted or crocheted:"),
    ("6109.10.00", "1", "Of cotton"),
    ("", "2", "Men's or boys':"),
    ("6109.10.00.04", "3", "T-shirts, all white, <i>short</i> hemmed sleeves (352)"),
    ("", "3", "Other T-shirts:"),
    ("6109.10.00.12", "4", "Men's (338)"),
    ("6109.10.00.14", "4", "Boys' (338)"),
    ("", "2", "Women's or girls':"),
    ("", "3", "Other:"),
    ("", "4", "T-shirts:"),
    ("6109.10.00.40", "5", "Women's (339)"),
    ("6109.10.00.45", "5", "women&#39;s (339)"),  # a case-insensitive repeat of the line above once cleaned
    ("6109.90", "1", "Other:"),
    ("", "2", "Other:"),
    ("6109.90.80", "3", "Other"),  # its path says nothing but "Other: Other: Other": dropped
    ("6109.99.00.00", "1", "Not an HS 2022 subheading"),
    ("0409.00.00", "0", "Natural honey"),  # a line at indent 0 keeps its own text
]


def _write_us(folder: Path, rows=US_ROWS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "chapter-61-test.csv").open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
        writer.writerow(US_HEADER)
        writer.writerows([*row, "", ""] for row in rows)


def _write_uk(data_dir: Path) -> None:
    folder = data_dir / "nomenclature_texts"
    (folder / "uk_labelled_commodities").mkdir(parents=True, exist_ok=True)
    references = {
        "t-shirts": "6109100010",
        "tees, cotton": "6109100099",
        "honey": "0409000010",
        "old code": "9999990000",
    }
    (folder / "uk_search_references.json").write_text(json.dumps(references), encoding="utf-8")
    labelled = [
        {
            "id": "6109100010",
            "commodity_code": "6109100010",
            "description": "Cotton T-shirts and vests, knitted.",
            "original_description": "T-shirts of cotton",
            "synonyms": ["tee shirt", "T-Shirts"],  # the second repeats a reference: dropped
            "colloquial_terms": ["tee"],
            "known_brands": ["Hanes"],
        },
        {"id": "0101000000", "commodity_code": "0101000000", "description": "Heading-level code: no HS6"},
        {"id": "", "commodity_code": "", "description": "no code at all"},
    ]
    (folder / "uk_labelled_commodities" / "model-a.json").write_text(json.dumps(labelled), encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    _write_us(tmp_path / lt.US_HTS_DIR)
    _write_uk(tmp_path)
    return tmp_path


def test_official_heading_and_chapter_texts():
    official = lt.official_texts()
    assert len(official) == 5612 and all(len(texts) == 1 and texts[0] for texts in official.values())
    assert official["610910"] == ["T-shirts, singlets and other vests; of cotton, knitted or crocheted"]
    assert len(lt.heading_texts()) == 1228 and lt.heading_texts()["6109"].startswith("T-shirts")
    assert len(lt.chapter_texts()) == 96 and lt.chapter_texts()["01"] == "Animals; live"


def test_us_lines_rebuild_paths_from_indent():
    rows = [dict(zip(US_HEADER[:3], row, strict=True)) for row in US_ROWS]
    lines = dict(lt.us_lines(rows))
    assert lines["6109100004"] == "Of cotton: Men's or boys': T-shirts, all white, short hemmed sleeves"
    assert lines["6109100012"] == "Of cotton: Men's or boys': Other T-shirts: Men's"
    assert lines["6109100040"] == "Of cotton: Women's or girls': Other: T-shirts: Women's"
    assert lines["61091000"] == "Of cotton"
    assert lines["61099080"] == "Other: Other: Other"
    assert lines["04090000"] == "Natural honey"
    assert "6109" not in lines and "610990" not in lines  # only 8/10-digit lines


def test_us_hts_texts_attach_lines_to_hs6_and_drop_what_is_not_hs2022(data_dir):
    texts = lt.us_hts_texts(data_dir)
    assert set(texts) == {"610910", "040900"}  # 610999 is not in HS 2022; 610990 said only "Other"
    assert texts["610910"][0] == "Of cotton"
    assert texts["610910"].count("Of cotton: Women's or girls': Other: T-shirts: Women's") == 1
    assert not any(
        t.casefold().endswith("women's") and t != "Of cotton: Women's or girls': Other: T-shirts: Women's"
        for t in texts["610910"]
    )
    assert not any(t.endswith(":") or "(338)" in t or "<" in t for t in texts["610910"])


def test_missing_sources_raise_or_fall_back(tmp_path):
    with pytest.raises(FileNotFoundError, match="US HTS"):
        lt.us_hts_texts(tmp_path)
    with pytest.raises(FileNotFoundError, match="UK texts"):
        lt.uk_texts(tmp_path)
    assert lt.code_texts(tmp_path) == lt.official_texts() == lt.code_texts(None)


def test_uk_texts_map_to_hs6_dedupe_case_insensitively(data_dir):
    texts = lt.uk_texts(data_dir)
    assert set(texts) == {"610910", "040900"}  # 010100 (heading-level code) and 999999 are not subheadings
    assert texts["610910"] == [
        "t-shirts",
        "tees, cotton",
        "T-shirts of cotton",
        "Cotton T-shirts and vests, knitted.",
        "tee shirt",
        "tee",
        "Hanes",
    ]
    assert texts["040900"] == ["honey"]


def test_code_texts_put_the_official_text_first_and_merge_sources(data_dir):
    texts = lt.code_texts(data_dir, max_per_code=None)
    assert len(texts) == 5612
    t_shirts = texts["610910"]
    assert t_shirts[0] == lt.official_texts()["610910"][0]
    assert "Of cotton: Men's or boys': Other T-shirts: Men's" in t_shirts and "tee shirt" in t_shirts
    assert t_shirts[-1] == "Hanes"  # brands come last: one brand sells under many codes
    assert len({t.casefold() for t in t_shirts}) == len(t_shirts)
    assert texts["010121"] == lt.official_texts()["010121"]


def test_code_texts_cap_prefers_distinct_texts(data_dir):
    capped = lt.code_texts(data_dir, max_per_code=4)["610910"]
    assert len(capped) == 4
    assert capped[0] == lt.official_texts()["610910"][0]
    assert capped[1:] == ["Of cotton", "t-shirts", "T-shirts of cotton"]  # round-robin: US, references, descriptions
    near = lt.code_texts(data_dir, max_per_code=24)["610910"]
    # "...Other T-shirts: Boys'" nearly repeats "...Other T-shirts: Men's": kept, but after the distinct texts.
    assert near.index("Of cotton: Men's or boys': Other T-shirts: Boys'") > near.index("tee")


def test_code_documents_and_stats(data_dir):
    documents = lt.code_documents(data_dir)
    assert len(documents) == 5612
    assert documents["610910"].startswith("T-shirts, singlets") and " ; tee shirt" in documents["610910"]
    stats = lt.stats(data_dir, max_per_code=24)
    assert stats["codes"] == 5612 and stats["codes_with_us_texts"] == 2 and stats["codes_with_uk_texts"] == 2
    assert stats["per_code"]["min"] == 1 and stats["per_code"]["max"] == len(lt.code_texts(data_dir)["610910"])
    assert stats["codes_with_official_text_only"] == 5610
    assert json.dumps(stats)  # plain numbers, ready for a model card


@needs_data
@pytest.mark.data
def test_real_label_texts_cover_most_codes():
    stats = lt.stats(DATA_DIR)
    assert stats["codes"] == 5612
    assert stats["codes_with_us_texts"] > 5000  # US lines lack chapters 77, 85, 98, 99
    assert stats["codes_with_uk_texts"] > 3000
    assert stats["per_code"]["max"] == lt.DEFAULT_MAX_PER_CODE and stats["per_code"]["median"] >= 5
    texts = lt.code_texts(DATA_DIR)
    assert "laptops" in texts["847130"]
    assert "Of cotton: Men's or boys': Other T-shirts: Men's" in texts["610910"]
