"""Dataset loaders and converters on tiny synthetic files, and row counts on the real shared data."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from hs_train import datasets as ds

DATA_DIR = Path(__file__).parents[1] / "../shared/data"
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason="needs ../shared/data (the shared data folder)")


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


# ---------------------------------------------------------------------------------------------- evaluation JSONL


def test_load_eval_jsonl_resolves_images_against_the_file(tmp_path):
    (tmp_path / "eval" / "img").mkdir(parents=True)
    (tmp_path / "eval" / "img" / "a.jpg").write_bytes(b"")
    path = _write_lines(
        tmp_path / "eval" / "set.jsonl",
        [
            json.dumps({"text": "cotton t-shirt", "images": ["img/a.jpg"], "hs": "610910"}),
            "",
            json.dumps({"text": None, "images": ["/abs/b.jpg"], "hs": "6109", "id": "x7", "source": "mine"}),
            json.dumps({"text": "  jeans ", "images": [], "hs": "62"}),
            json.dumps({"text": "not a real code, still kept", "images": [], "hs": "999999"}),
        ],
    )
    examples = ds.load_eval_jsonl(path)
    assert [e.hs for e in examples] == ["610910", "6109", "62", "999999"]
    assert examples[0].images == [tmp_path / "eval" / "img" / "a.jpg"] and examples[0].images[0].is_file()
    assert examples[1].images == [Path("/abs/b.jpg")] and examples[1].text is None
    assert (examples[1].id, examples[1].source) == ("x7", "mine")
    assert (examples[2].text, examples[2].id, examples[2].source) == ("jeans", "set:4", "set")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"text": "x", "images": []}', "'hs' must be 2, 4 or 6 digits"),
        ('{"text": "x", "images": [], "hs": "61091"}', "'hs' must be 2, 4 or 6 digits"),
        ('{"text": "x", "images": [], "hs": 610910}', "'hs' must be 2, 4 or 6 digits"),
        ('{"text": "x", "images": [], "hs": "6109100012"}', "'hs' must be 2, 4 or 6 digits"),
        ('{"text": 5, "images": [], "hs": "61"}', "'text' must be a string or null"),
        ('{"text": "x", "images": "a.jpg", "hs": "61"}', "'images' must be a list"),
        ('{"text": " ", "images": [], "hs": "61"}', "neither text nor images"),
    ],
)
def test_load_eval_jsonl_names_the_bad_line(tmp_path, line, message):
    path = _write_lines(tmp_path / "bad.jsonl", ['{"text": "fine", "images": [], "hs": "61"}', line])
    with pytest.raises(ValueError, match=message) as caught:
        ds.load_eval_jsonl(path)
    assert f"{path}:2:" in str(caught.value)


def _hscodecomp_record(task_id: int, hs_code, **extra) -> dict:
    record = {
        "task_id": task_id,
        "product_name": "Dragon Pendant",
        "product_attributes": json.dumps({" Material": "Metal", "Origin": "Mainland China"}),
        "cate_lv1_desc": "Jewelry & Accessories",
        "cate_lv2_desc": "Fashion Jewelry",
        "cate_lv3_desc": "Pendants",
        "cate_lv4_desc": "Pendants",
        "cate_lv5_desc": "",
        "hs_code": hs_code,
    }
    return {**record, **extra}


def test_convert_hscodecomp_builds_the_baseline_text_and_keeps_every_row(tmp_path, caplog):
    src = _write_lines(
        tmp_path / "hcc.jsonl",
        [
            json.dumps(_hscodecomp_record(0, 7117199000)),
            json.dumps(_hscodecomp_record(1, 101210000, product_attributes="{}")),  # an int that lost its zero
            json.dumps(_hscodecomp_record(2, 9999990000, product_attributes="not json")),
        ],
    )
    with caplog.at_level(logging.INFO, logger="hs_train.datasets"):
        rows = ds.convert_hscodecomp(src)
    assert (
        rows[0]["text"]
        == "Dragon Pendant. Category: Jewelry & Accessories > Fashion Jewelry > Pendants. Material: Metal"
    )
    assert rows[1]["text"] == "Dragon Pendant. Category: Jewelry & Accessories > Fashion Jewelry > Pendants"
    assert [(r["hs"], r["hs_national"], r["in_hs2022"]) for r in rows] == [
        ("711719", "7117199000", True),
        ("010121", "0101210000", True),
        ("999999", "9999990000", False),
    ]
    assert rows[0]["id"] == "hscodecomp-0" and rows[0]["images"] == [] and rows[0]["source"] == "hscodecomp"
    assert "1 with a code not in HS 2022" in caplog.text


def _atlas_record(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_convert_atlas_strips_the_question_and_reads_the_first_code(tmp_path):
    src = _write_lines(
        tmp_path / "atlas.jsonl",
        [
            json.dumps(
                _atlas_record(
                    "What is the HTS US Code for Polivac film?", "HTS US Code -> 3920.62.0000\nReasoning -> ..."
                )
            ),
            json.dumps(
                _atlas_record(
                    "What is the HTS US Code for steel tubes?", "HTS US Code -> 7304.39.00, 7304.51.5045, ..."
                )
            ),
            json.dumps(_atlas_record("What is the HTS US Code for a lamp kit?", "HTS US Code -> 9405.40.8000")),
        ],
    )
    rows = ds.convert_atlas(src)
    assert [r["text"] for r in rows] == ["Polivac film", "steel tubes", "a lamp kit"]
    assert [r["hs"] for r in rows] == ["392062", "730439", "940540"]
    assert [r["in_hs2022"] for r in rows] == [True, True, False]  # 9405.40 was split in HS 2022: kept, not dropped
    assert rows[1]["hs_national"] == "73043900"


def test_convert_atlas_rejects_rows_without_a_code(tmp_path):
    src = _write_lines(
        tmp_path / "atlas.jsonl", [json.dumps(_atlas_record("What is the HTS US Code for x?", "No idea"))]
    )
    with pytest.raises(ValueError, match=r"atlas.jsonl:1: expected"):
        ds.convert_atlas(src)


def test_write_then_load_round_trip(tmp_path):
    rows = [
        {"id": "a", "text": "steel tubes", "images": [], "hs": "730439", "extra": 1},
        {"text": None, "images": [Path("p.jpg")], "hs": "61"},
    ]
    out = tmp_path / "deep" / "out.jsonl"
    assert ds.write_eval_jsonl(rows, out) == 2
    examples = ds.load_eval_jsonl(out)
    assert [(e.text, e.hs, e.id) for e in examples] == [("steel tubes", "730439", "a"), (None, "61", "out:2")]
    assert examples[1].images == [out.parent / "p.jpg"]


# ---------------------------------------------------------------------------------------------- Myntra


def test_split_of_is_deterministic_and_test_and_val_are_disjoint():
    ids = [str(i) for i in range(20000)]
    splits = [ds.split_of(i) for i in ids]
    assert splits == [ds.split_of(i) for i in ids] and ds.split_of(15970) == ds.split_of("15970")
    counts = Counter(splits)
    assert set(counts) == {"train", "val", "test"}
    assert 0.18 < counts["test"] / len(ids) < 0.22 and 0.08 < counts["val"] / len(ids) < 0.12
    # Known values pin the rule (test = md5 % 5 == 0, the shared baselines' split).
    assert [ds.split_of(i) for i in ("15970", "59263", "1")] == ["train", "val", "val"]


STYLES_HEADER = [
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
]


@pytest.fixture
def myntra_dir(tmp_path: Path) -> Path:
    products = tmp_path / "products"
    _write_csv(
        products / "articletype_to_hs4.csv",
        [
            ["articleType", "hs4_men_or_unisex", "hs4_women", "note"],
            ["Shirts", "6205", "6206", "woven"],
            ["Tshirts", "6109", "6109", ""],
            ["Umbrellas", "", "", "no mapping"],
        ],
    )
    _write_lines(
        products / "styles.csv",
        [
            ",".join(STYLES_HEADER),
            "1,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
            "2,Women,Apparel,Topwear,Shirts,White,Fall,2011,Casual,Women White Shirt",
            "3,Girls,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,Girls Red, Printed, T-shirt",
            "4,Men,Accessories,Umbrellas,Umbrellas,Black,Fall,2011,Casual,Black Umbrella",
            "5,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Shirt without a photo",
            "6,Men,Apparel,Topwear",
        ],
    )
    (products / "images").mkdir()
    for style_id in (1, 2, 3, 4, 6):
        (products / "images" / f"{style_id}.jpg").write_bytes(b"")
    return tmp_path


def test_load_myntra_labels_by_article_type_and_gender(myntra_dir, caplog):
    with caplog.at_level(logging.INFO, logger="hs_train.datasets"):
        examples = ds.load_myntra(myntra_dir)
    assert [(e.id, e.hs) for e in examples] == [("1", "6205"), ("2", "6206"), ("3", "6109")]
    assert examples[2].text == "Girls Red, Printed, T-shirt"  # extra commas joined back into the name
    assert examples[0].images == [myntra_dir / "products" / "images" / "1.jpg"] and examples[0].source == "myntra"
    assert "6 rows read, 3 kept" in caplog.text
    for reason in ("1 no photo", "1 unmapped article type", "1 too few fields", "1 names with commas re-joined"):
        assert reason in caplog.text


def test_load_myntra_split_filter_partitions_the_rows(myntra_dir):
    parts = {split: ds.load_myntra(myntra_dir, split) for split in ("train", "val", "test")}
    assert sorted(e.id for part in parts.values() for e in part) == ["1", "2", "3"]
    assert all(ds.split_of(e.id) == split for split, part in parts.items() for e in part)


# ---------------------------------------------------------------------------------------------- UK training texts


def test_load_uk_parcels_maps_codes_to_hs6_and_counts_drops(tmp_path, caplog):
    _write_csv(
        tmp_path / "train" / "uk_parcel_descriptions.csv",
        [
            ["Goods Description", "Commodity Code"],
            ["100 ariel pods", "34025090"],
            ["sarcococca plant", "06029047"],
            ["leg trainers", "9506919000"],
            ["loreal faux brw tnt", "dark brun"],
            ["odd length", "6029047"],
            ["gone from HS 2022", "9999990000"],
            ["100 Ariel pods", "34025090"],
            ["", "34025090"],
        ],
    )
    with caplog.at_level(logging.INFO, logger="hs_train.datasets"):
        examples = ds.load_uk_parcels(tmp_path)
    assert [(e.text, e.hs) for e in examples] == [
        ("100 ariel pods", "340250"),
        ("sarcococca plant", "060290"),
        ("leg trainers", "950691"),
    ]
    assert examples[0].id == "uk-parcel-2" and examples[0].source == "uk_parcels" and examples[0].images == []
    for reason in (
        "8 rows read, 3 kept",
        "2 malformed code",
        "1 HS6 not in HS 2022",
        "1 repeated pair",
        "1 empty description",
    ):
        assert reason in caplog.text


def test_load_uk_brands_cuts_labels_that_can_only_go_to_4_digits(tmp_path):
    _write_csv(
        tmp_path / "train" / "uk_brands.csv",
        [
            [
                "CMDTYCODE",
                "GDSDESC",
                "GDSDESC (Brand / Product)",
                "Description for context / augmenting",
                "Comments",
                "Initials",
            ],
            [
                "04029110",
                "Muller milk no added sugar",
                "Muller milk",
                "",
                "Can only go to 4 digits as more information is needed",
                "ER",
            ],
            [
                "040390",
                "Yeo Valley kefir drink",
                "Yeo Valley",
                "",
                "Can only go to 6 digits as more information is needed",
                "LR",
            ],
            ["9999990000", "Gone", "Gone", "", "", ""],
        ],
    )
    examples = ds.load_uk_brands(tmp_path)
    assert [(e.text, e.hs, e.source) for e in examples] == [
        ("Muller milk no added sugar", "0402", "uk_brands"),
        ("Yeo Valley kefir drink", "040390", "uk_brands"),
    ]


def test_load_uk_weak_keeps_high_scores_only(tmp_path):
    records = [
        {"request_description": "SPEAKER", "code": "85182100", "score": "50.17", "request_digits": "8"},
        {"request_description": "SAMSUNG GALAXY TAB", "code": "84713000", "score": "901.3", "request_digits": "8"},
        {"request_description": "HOT WHEELS RACEWAY", "code": "950300", "score": "612", "request_digits": "6"},
        {"request_description": "NOT A CODE", "code": "abc", "score": "999", "request_digits": "6"},
    ]
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "uk_parcel_predictions_weak.json").write_text(json.dumps(records), encoding="utf-8")
    assert [(e.text, e.hs) for e in ds.load_uk_weak(tmp_path)] == [
        ("SAMSUNG GALAXY TAB", "847130"),
        ("HOT WHEELS RACEWAY", "950300"),
    ]
    assert [e.hs for e in ds.load_uk_weak(tmp_path, min_score=700)] == ["847130"]
    assert len(ds.load_uk_weak(tmp_path, min_score=0)) == 3


# ---------------------------------------------------------------------------------------------- the real files


@needs_data
@pytest.mark.data
def test_real_evaluation_sets_keep_every_row(tmp_path):
    hcc = ds.convert_hscodecomp(DATA_DIR / "eval" / "hscodecomp.jsonl")
    atlas = ds.convert_atlas(DATA_DIR / "eval" / "atlas_validation.jsonl")
    assert (len(hcc), len(atlas)) == (632, 200)
    assert sum(not r["in_hs2022"] for r in hcc) == 0
    assert sorted(r["hs"] for r in atlas if not r["in_hs2022"]) == ["293490", "940540"]
    assert len({r["hs"] for r in hcc}) == 268 and len({r["hs"][:2] for r in hcc}) == 27
    assert all(r["text"] and not r["text"].startswith("What is") and not r["text"].endswith("?") for r in atlas)
    assert ds.write_eval_jsonl(hcc, tmp_path / "hcc.jsonl") == 632
    assert len(ds.load_eval_jsonl(tmp_path / "hcc.jsonl")) == 632


@needs_data
@pytest.mark.data
def test_real_myntra_rows_and_splits_match_the_baselines():
    examples = ds.load_myntra(DATA_DIR)
    assert len(examples) == 8530  # 8,619 photos, 89 with an unmapped article type
    counts = Counter(ds.split_of(e.id) for e in examples)
    assert counts["test"] == 1663 and counts["train"] + counts["val"] == 6867
    assert all(len(e.hs) == 4 and e.images[0].is_file() for e in examples[:50])


@needs_data
@pytest.mark.data
def test_real_uk_training_texts():
    parcels = ds.load_uk_parcels(DATA_DIR)
    assert 2250 < len(parcels) <= 2358 and all(len(e.hs) == 6 for e in parcels)
    assert 100 < len(ds.load_uk_brands(DATA_DIR)) <= 139
    assert 1000 < len(ds.load_uk_weak(DATA_DIR)) < 2000
