"""Batch classification: CSV and zip validation, batched = one-by-one, resume without duplicates, result files."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from sqlalchemy import func, select

from hs_model.batch import (
    BatchFileError,
    BatchLimits,
    BatchRow,
    DirPhotos,
    ZipPhotos,
    classify_rows,
    content_key,
    format_duration,
    read_batch_csv,
    result_record,
    results_csv,
    results_xlsx,
    seconds_left,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"


def jpeg(colour=(30, 60, 160), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


# -- CSV validation ---------------------------------------------------------------------------------------------


def test_reads_a_plain_utf8_file():
    data = b"line_ref,description,photos\nA1,men's knitted cotton T-shirt,\nA2,leather handbag,\n"
    batch = read_batch_csv(data)
    assert [(r.line, r.line_ref, r.description, r.ok) for r in batch.rows] == [
        (2, "A1", "men's knitted cotton T-shirt", True),
        (3, "A2", "leather handbag", True),
    ]
    assert batch.encoding == "utf-8" and batch.notices == ()


def test_missing_columns_are_named_with_what_was_found():
    with pytest.raises(BatchFileError, match=r"Missing column: line_ref .*The header has: 'item', 'description'"):
        read_batch_csv(b"item,description\n1,shirt\n")
    with pytest.raises(BatchFileError, match="Missing columns: line_ref .*; description"):
        read_batch_csv(b"foo,bar\n1,2\n")


def test_header_aliases_and_semicolon_separator():
    batch = read_batch_csv("Line Reference;Product Description;Photo files\nX-1;Café, crème;a.jpg\n".encode())
    assert batch.delimiter == ";"
    assert batch.rows[0].line_ref == "X-1" and batch.rows[0].description == "Café, crème"
    assert batch.rows[0].problems == ("photos are listed but no zip (or folder) of photos was given",)


def test_utf8_with_bom():
    batch = read_batch_csv("\ufeffline_ref,description\nA1,Café crème\n".encode())
    assert batch.encoding == "utf-8-sig" and batch.rows[0].description == "Café crème" and batch.notices == ()


def test_latin1_falls_back_with_a_notice():
    batch = read_batch_csv("line_ref,description\nA1,Café crème brûlée\n".encode("latin-1"))
    assert batch.rows[0].description == "Café crème brûlée"
    assert batch.encoding == "cp1252"
    assert "not valid UTF-8 (first bad byte on line 2)" in batch.notices[0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04rest-of-a-workbook", "Excel workbook"),
        (b"line_ref,description\n\x00\x01\x02", "NUL bytes"),
        (b"   \n\n", "is empty"),
        (b"line_ref,description\n\n", "no line items"),
    ],
)
def test_unusable_files_are_refused_clearly(data, message):
    with pytest.raises(BatchFileError, match=message):
        read_batch_csv(data)


def test_blank_lines_are_skipped_and_reported():
    data = b"line_ref,description\nA1,shirt\n\n , \nA2,shoe\n,,\n"
    batch = read_batch_csv(data)
    assert [r.line_ref for r in batch.rows] == ["A1", "A2"]
    assert batch.blank_lines == (3, 4, 6)
    assert batch.notices == ("3 blank lines skipped (line 3, 4, 6).",)


def test_100000_rows_are_refused_with_a_clear_message():
    data = b"line_ref,description\n" + b"".join(b"L%d,cotton shirt\n" % i for i in range(100_000))
    with pytest.raises(BatchFileError) as info:
        read_batch_csv(data)
    assert str(info.value) == (
        "the CSV has 100,000 line items; one run takes at most 5,000. "
        "Split it into 20 files of up to 5,000 rows and run them one after another."
    )


def test_oversized_file_is_refused_before_parsing():
    with pytest.raises(BatchFileError, match="the limit is 1 MB"):
        read_batch_csv(b"x" * 1_100_000, limits=BatchLimits(max_csv_bytes=1_000_000))


def test_row_problems_are_attached_to_their_rows():
    long_text = "x" * 20_001
    data = (
        "line_ref,description,photos\n"
        f"A1,ok shirt,\n"
        f",no ref,\n"
        f"{'R' * 65},long ref,\n"
        f"A2,{long_text},\n"
        f"A1,duplicate,\n"
        f"A3,,\n"
        f"A4,nine photos,{';'.join(f'p{i}.jpg' for i in range(9))}\n"
    ).encode()
    rows = read_batch_csv(data).rows
    problems = {r.line: r.problems for r in rows}
    assert problems[2] == ()
    assert problems[3] == ("no line reference",)
    assert problems[4] == ("line reference has 65 characters; the limit is 64",)
    assert problems[5] == ("description has 20,001 characters; the limit is 20,000",)
    assert problems[6] == ("line reference 'A1' is also on line 2",)
    assert problems[7] == ("nothing to classify: no description and no photo",)
    assert problems[8] == ("9 photos; at most 8 per line",)


def test_control_characters_are_cleaned_from_descriptions():
    batch = read_batch_csv(b"line_ref,description\nA1,  cotton\x07 shirt\x1b  \n")
    assert batch.rows[0].description == "cotton  shirt"


# -- zips ------------------------------------------------------------------------------------------------------


def test_photo_names_match_case_insensitively_by_basename():
    photos = ZipPhotos(make_zip({"photos/IMG_1.JPG": jpeg(), "img_2.png": jpeg()}))
    data = b"line_ref,description,photos\nA1,shirt,img_1.jpg; sub/IMG_2.png\nA2,shoe,missing.jpg\n"
    rows = read_batch_csv(data, photos).rows
    assert rows[0].ok and rows[0].photos == ("img_1.jpg", "sub/IMG_2.png")
    assert rows[1].problems == ("photo 'missing.jpg' is not in photos.zip",)
    assert photos.read("img_1.jpg") == jpeg()


def test_same_basename_in_two_folders_is_ambiguous():
    photos = ZipPhotos(make_zip({"a/x.jpg": jpeg(), "b/X.jpg": jpeg((1, 2, 3))}))
    assert photos.problem("x.jpg") == "photo 'x.jpg' is in photos.zip 2 times (in different folders): rename one"


def test_mac_metadata_and_folders_are_ignored():
    photos = ZipPhotos(make_zip({"__MACOSX/._x.jpg": b"junk", ".DS_Store": b"junk", "x.jpg": jpeg()}))
    assert photos.photo_count == 1 and photos.problem("x.jpg") is None


@pytest.mark.parametrize("name", ["../x.jpg", "photos/../../x.jpg", "/etc/x.jpg", "C:\\Windows\\x.jpg", "..\\x.jpg"])
def test_path_traversal_entries_refuse_the_zip(name):
    with pytest.raises(BatchFileError, match="points outside the archive"):
        ZipPhotos(make_zip({"ok.jpg": jpeg(), name: jpeg()}))


def test_zip_bomb_is_refused_before_extracting():
    bomb = make_zip({"bomb.jpg": b"\x00" * (20 * 1024 * 1024)})  # 20 MB of zeros packs to about 20 KB
    assert len(bomb) < 100_000
    with pytest.raises(BatchFileError, match="zip bomb guard"):
        ZipPhotos(bomb)


def test_zip_total_size_and_entry_count_limits():
    data = make_zip({f"p{i}.jpg": jpeg() for i in range(5)}, zipfile.ZIP_STORED)
    with pytest.raises(BatchFileError, match="5 entries; a zip may hold at most 4"):
        ZipPhotos(data, limits=BatchLimits(max_zip_entries=4))
    with pytest.raises(BatchFileError, match="zip bomb guard"):
        ZipPhotos(data, limits=BatchLimits(max_zip_total_bytes=1000))


def test_oversized_photo_entry_is_a_row_problem_and_never_read_past_the_cap():
    photos = ZipPhotos(
        make_zip({"big.jpg": b"\xff" * 5000}, zipfile.ZIP_STORED), limits=BatchLimits(max_photo_bytes=4000)
    )
    assert "over the 0 MB limit" in photos.problem("big.jpg") or "limit" in photos.problem("big.jpg")
    rows = read_batch_csv(b"line_ref,description,photos\nA1,x,big.jpg\n", photos).rows
    assert not rows[0].ok


def test_not_a_zip():
    with pytest.raises(BatchFileError, match="not a readable zip"):
        ZipPhotos(b"this is not a zip")


def test_dir_photos(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "Front.JPG").write_bytes(jpeg())
    photos = DirPhotos(tmp_path)
    assert photos.problem("front.jpg") is None and photos.read("FRONT.jpg") == jpeg()
    assert "is not in" in photos.problem("back.jpg")


# -- running the model ---------------------------------------------------------------------------------------


class FakeBatchClassifier:
    """Stands in for Classifier: a deterministic answer per (text, photos), no towers; counts its calls."""

    version = "fake-batch-v1"
    edition = "HS2022"
    card = SimpleNamespace(kind="test")
    SIX = ("610910", "620520", "420221", "010121", "640411")

    def __init__(self, threshold: float = 0.5) -> None:
        self.batch_calls: list[int] = []
        self.threshold = threshold

    def _one(self, text, images, top_k):
        from hs_model.predict import Candidate, Prediction

        seed = int(hashlib.sha256(f"{text}|{len(images)}".encode()).hexdigest(), 16)
        order = [self.SIX[(seed + i) % len(self.SIX)] for i in range(len(self.SIX))]
        score = 0.3 + (seed % 60) / 100
        six = [Candidate(c, 6, f"text of {c}", score / (i + 1)) for i, c in enumerate(order[:top_k])]
        four = [Candidate(c[:4], 4, f"heading {c[:4]}", score / (i + 1)) for i, c in enumerate(order[:top_k])]
        two = [Candidate(order[0][:2], 2, f"chapter {order[0][:2]}", min(1.0, score + 0.1))]
        return Prediction(
            model_version=self.version,
            nomenclature_edition=self.edition,
            levels={6: six, 4: four, 2: two},
            needs_review=four[0].score < self.threshold,
            review_threshold=self.threshold,
            latency_ms=3.0,
            modality="both" if text and images else "image" if images else "text",
            gates=(1.0, 0.0),
            embedding=(0.1, 0.2, 0.3),
        )

    def predict_batch(self, queries, top_k=5):
        from hs_model.predict import validate_query

        self.batch_calls.append(len(queries))
        for q in queries:
            validate_query(q.text, q.images)
        return [self._one(q.text, q.images, top_k) for q in queries]

    def predict(self, text=None, images=(), top_k=5):
        from hs_model.predict import Query

        return self.predict_batch([Query(text, tuple(images))], top_k)[0]


def test_classify_rows_runs_in_chunks_and_a_bad_photo_fails_only_its_row():
    photos = ZipPhotos(make_zip({"good.jpg": jpeg(), "bad.jpg": b"<html>not a photo</html>"}))
    lines = ["line_ref,description,photos"] + [f"L{i},item {i},{'bad.jpg' if i == 3 else 'good.jpg'}" for i in range(7)]
    batch = read_batch_csv("\n".join(lines).encode(), photos)
    fake = FakeBatchClassifier()
    chunks = list(classify_rows(fake, batch.rows, photos, chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    outcomes = [o for c in chunks for o in c]
    assert [o.row.line_ref for o in outcomes] == [f"L{i}" for i in range(7)]
    assert outcomes[3].prediction is None and "bad.jpg: this is not an image file" in outcomes[3].error
    assert all(o.prediction is not None and o.photos[0][0] == "good.jpg" for i, o in enumerate(outcomes) if i != 3)
    assert fake.batch_calls == [3, 2, 1]  # the bad row never reached the model


def test_batched_results_equal_one_by_one_with_the_fake():
    rows = [BatchRow(i + 2, f"L{i}", f"product number {i}") for i in range(10)]
    fake = FakeBatchClassifier()
    batched = [o.prediction for c in classify_rows(fake, rows, None, chunk_size=4) for o in c]
    single = [fake.predict(r.description) for r in rows]
    assert [p.levels for p in batched] == [p.levels for p in single]


def tiny_classifier():
    """A real `Classifier` (its encode / predict_features code) over tiny deterministic towers and a tiny head."""
    import torch

    from hs_core.nomenclature import EDITION, get_nomenclature
    from hs_model.model import HeadConfig, HsJointModel, LabelBank, LabelSpace
    from hs_model.predict import Classifier
    from hs_model.towers import ImageFeatures

    e, c = 16, 24
    codes = ["610910", "610990", "620520", "620530", "640411", "640419", "420221", "010121"]

    class TextTower:
        name, dim, max_length = "tiny-text", e, 128

        def encode_text(self, texts, batch_size=64):
            rows = [torch.Generator().manual_seed(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)) for t in texts]
            return torch.nn.functional.normalize(torch.stack([torch.randn(e, generator=g) for g in rows]), dim=-1)

        def token_count(self, text):
            return len(text.split()) + 2

    class ImageTower:
        name, dim = "tiny-image", c

        def encode_image(self, images, batch_size=16):
            feats = torch.stack(
                [torch.tensor(list(im.resize((4, 2)).tobytes()[:c]), dtype=torch.float32) / 255 for im in images]
            )
            probs = torch.softmax(torch.cat([feats] * 42, dim=1)[:, :1000], dim=1)
            return ImageFeatures(feats, probs)

    g = torch.Generator().manual_seed(0)
    space = LabelSpace.from_codes(codes)
    bank = LabelBank(
        text_emb=torch.nn.functional.normalize(torch.randn(len(codes) + 3, e, generator=g), dim=-1),
        text_code=torch.tensor(list(range(len(codes))) + [0, 2, 4]),
        heading_emb=torch.randn(len(space.headings), e, generator=g),
        chapter_emb=torch.randn(len(space.chapters), e, generator=g),
        class_name_emb=torch.randn(1000, e, generator=g),
    )
    model = HsJointModel(space, bank, HeadConfig(text_dim=e, image_dim=c))
    with torch.no_grad():
        model.image_proj.weight.normal_(0, 0.3, generator=g)
        model.gate.weight.normal_(0, 0.3, generator=g)
    clf = object.__new__(Classifier)
    clf.nomenclature, clf.edition = get_nomenclature(), EDITION
    clf.text_tower, clf.image_tower, clf.device = TextTower(), ImageTower(), torch.device("cpu")
    clf.image_batch_size = 3
    clf.space, clf.model = space, model.eval()
    clf.card = SimpleNamespace(version="tiny-v1", kind="test")
    return clf


def test_batched_results_equal_one_by_one_with_a_tiny_real_classifier():
    from hs_model.predict import Query

    clf = tiny_classifier()
    photos = [Image.new("RGB", (40, 30), (i * 40, 255 - i * 30, 90)) for i in range(5)]
    queries = [
        Query("cotton T-shirt", ()),
        Query(None, (photos[0],)),
        Query("leather handbag", (photos[1], photos[2])),
        Query("shoe", (photos[0], photos[3], photos[4])),  # photos[0] shared with query 1: encoded once
        Query("live horse", ()),
        Query(None, (photos[4], photos[1])),
    ]
    batched = clf.predict_batch(queries, top_k=4)
    for q, b in zip(queries, batched, strict=True):
        one = clf.predict(q.text, q.images, top_k=4)
        for level in (2, 4, 6):
            assert [c.code for c in one.levels[level]] == [c.code for c in b.levels[level]]
            assert [c.score for c in one.levels[level]] == pytest.approx([c.score for c in b.levels[level]], abs=1e-5)
        assert one.modality == b.modality and one.gates == pytest.approx(b.gates, abs=1e-5)
        assert one.embedding == pytest.approx(b.embedding, abs=1e-5)


# -- results ---------------------------------------------------------------------------------------------------


def _records():
    fake = FakeBatchClassifier()
    rows = [BatchRow(2, "=HYPERLINK(1)", "=1+1 cotton"), BatchRow(3, "A2", "mug")]
    recs = [result_record(rows[0], fake.predict("=1+1 cotton")), result_record(rows[1], None, "bad photo")]
    recs[0]["code_1"] = "010121"  # a leading zero must survive
    return recs


def test_results_csv_is_formula_safe_with_bom():
    data = results_csv(_records())
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert "'=HYPERLINK(1),'=1+1 cotton" in text and ',"=""0101.21""",' in text  # Excel keeps ="0101.21" text
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["code_1"] == '="0101.21"' and row["line_ref"] == "'=HYPERLINK(1)"
    assert text.splitlines()[2].endswith("bad photo")


def test_results_xlsx_opens_and_keeps_codes_as_text():
    from openpyxl import load_workbook

    sheet = load_workbook(io.BytesIO(results_xlsx(_records()))).active
    header = [c.value for c in sheet[1]]
    row = dict(zip(header, [c.value for c in sheet[2]], strict=True))
    assert row["code_1"] == "0101.21" and row["line_ref"] == "=HYPERLINK(1)"
    assert sheet["B2"].data_type == "s"  # stored as text, never a formula
    assert isinstance(row["score_1"], float) and row["needs_review"] in ("yes", "no")
    assert dict(zip(header, [c.value for c in sheet[3]], strict=True))["error"] == "bad photo"


def test_results_xlsx_has_widths_a_header_filter_and_a_frozen_header():
    """Issue 12 point 8: ready to read in Excel without fiddling."""
    from openpyxl import load_workbook

    sheet = load_workbook(io.BytesIO(results_xlsx(_records()))).active
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == sheet.dimensions and sheet.auto_filter.ref.startswith("A1:")
    widths = {c: sheet.column_dimensions[c].width for c in ("A", "C", "E")}  # line, description, code_1
    assert 8 <= widths["A"] < widths["C"] <= 60 and widths["E"] >= len("code_1")
    assert all(c.font.bold for c in sheet[1])


def test_time_left_estimate():
    assert seconds_left(0, 100, 5.0) is None
    assert seconds_left(25, 100, 10.0) == pytest.approx(30.0)
    assert format_duration(None) == "estimating…" and format_duration(42) == "42 s"
    assert format_duration(125) == "2 min 05 s" and format_duration(7300) == "2 h 01 min"


def test_content_key_depends_on_text_and_photos_in_order():
    assert content_key("a", ["x", "y"]) != content_key("a", ["y", "x"]) != content_key("b", ["x", "y"])
    assert content_key("a", []) == hashlib.sha256(b"a").hexdigest()


# -- the service: stored once, resumable, stoppable --------------------------------------------------------------


@pytest.fixture
def broker(app_db):
    from services.auth import authenticate

    app_db.add_user("bea", "broker", PASSWORD)
    with app_db.factory.begin() as session:
        return authenticate(session, "bea", PASSWORD)


def transact_for(app_db):
    from db.engine import run_transaction

    return lambda fn: run_transaction(app_db.factory, fn)


def counts(app_db) -> tuple[int, int]:
    from db.models import LineItem, Prediction

    with app_db.factory() as session:
        return (
            session.scalar(select(func.count()).select_from(LineItem)),
            session.scalar(select(func.count()).select_from(Prediction)),
        )


def upload(n: int = 6, bad_row: bool = True):
    from services.batch import check_batch

    zipped = make_zip({"a.jpg": jpeg(), "b.png": jpeg((200, 10, 10))})
    lines = ["line_ref,description,photos"] + [f"L{i},product {i},{'a.jpg' if i % 2 else ''}" for i in range(n)]
    if bad_row:
        lines.append("L99,,missing.jpg")
    return check_batch("items.csv", "\n".join(lines).encode(), "photos.zip", zipped)


def test_run_stores_each_line_once_and_a_rerun_resumes_without_duplicates(app_db, broker):
    from services.batch import run_batch

    fake, check = FakeBatchClassifier(), upload()
    progress = []
    first = run_batch(
        transact_for(app_db), fake, broker, check, shipment_ref="SHIP-1", photo_root=app_db.photo_dir,
        chunk_size=4, on_progress=progress.append,
    )  # fmt: skip
    assert (first.stored, first.resumed, first.errors, first.skipped, first.stopped) == (6, 0, 0, 1, False)
    assert counts(app_db) == (6, 6)
    assert [p.done for p in progress] == [0, 4, 6] and progress[-1].fraction == 1.0
    assert [r["status"] for r in first.records] == ["classified"] * 6 + ["not run"]
    assert first.records[-1]["error"] == "photo 'missing.jpg' is not in photos.zip"

    second = run_batch(transact_for(app_db), fake, broker, upload(), shipment_ref="SHIP-1", photo_root=app_db.photo_dir)
    assert (second.stored, second.resumed) == (0, 6)
    assert counts(app_db) == (6, 6)
    assert [r["line_item_id"] for r in second.records] == [r["line_item_id"] for r in first.records]
    assert [r["code_1"] for r in second.records[:6]] == [r["code_1"] for r in first.records[:6]]
    assert sum(fake.batch_calls) == 6  # the rerun never reached the model

    other = run_batch(transact_for(app_db), fake, broker, upload(), shipment_ref="SHIP-2", photo_root=app_db.photo_dir)
    assert other.stored == 6 and counts(app_db) == (12, 12)  # another shipment is another key


def test_changed_content_under_the_same_line_ref_is_stored_again(app_db, broker):
    from services.batch import check_batch, run_batch

    fake, transact = FakeBatchClassifier(), transact_for(app_db)
    run_batch(transact, fake, broker, check_batch("a.csv", b"line_ref,description\nL1,red shirt\n"), shipment_ref="S")
    again = run_batch(
        transact, fake, broker, check_batch("a.csv", b"line_ref,description\nL1,blue shirt\n"), shipment_ref="S"
    )
    assert again.stored == 1 and counts(app_db) == (2, 2)


def test_stop_between_chunks_keeps_what_is_stored_and_a_rerun_finishes(app_db, broker):
    from services.batch import run_batch

    fake, transact = FakeBatchClassifier(), transact_for(app_db)
    stopped = run_batch(
        transact, fake, broker, upload(10, bad_row=False), shipment_ref="S", photo_root=app_db.photo_dir,
        chunk_size=4, should_stop=lambda: True,
    )  # fmt: skip
    assert stopped.stopped and stopped.stored == 4 and counts(app_db) == (4, 4)
    assert len(stopped.records) == 4  # only what ran
    rest = run_batch(transact, fake, broker, upload(10, bad_row=False), shipment_ref="S", photo_root=app_db.photo_dir)
    assert (rest.stored, rest.resumed, rest.stopped) == (6, 4, False) and counts(app_db) == (10, 10)


def test_stored_lines_have_photos_predictions_and_an_audit_event(app_db, broker):
    from db.models import AuditEvent, LineItem, Photo, Prediction, Shipment
    from services.batch import run_batch

    run_batch(transact_for(app_db), FakeBatchClassifier(), broker, upload(2, bad_row=False), shipment_ref="S-9",
              photo_root=app_db.photo_dir)  # fmt: skip
    with app_db.factory() as session:
        items = session.scalars(select(LineItem).order_by(LineItem.id)).all()
        shipment = session.scalars(select(Shipment)).one()
        photo = session.scalars(select(Photo)).one()
        prediction = session.scalars(select(Prediction).where(Prediction.line_item_id == items[0].id)).one()
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "batch_classification")).one()
    assert [(i.line_ref, i.shipment_id, i.description) for i in items] == [
        ("L0", shipment.id, "product 0"),
        ("L1", shipment.id, "product 1"),
    ]
    assert photo.line_item_id == items[1].id and (app_db.photo_dir / photo.path).is_file()
    assert {c["level"] for c in prediction.candidates} == {2, 4, 6} and prediction.model_version == "fake-batch-v1"
    assert audit.detail["line_items"] == 2 and audit.detail["shipment"] == "S-9"


def test_only_brokers_and_admins_run_batches_and_a_shipment_is_required(app_db, broker):
    from services.auth import authenticate
    from services.batch import run_batch
    from services.errors import InvalidInput, PermissionDenied

    app_db.add_user("rita", "reviewer", PASSWORD)
    with app_db.factory.begin() as session:
        reviewer = authenticate(session, "rita", PASSWORD)
    with pytest.raises(PermissionDenied):
        run_batch(transact_for(app_db), FakeBatchClassifier(), reviewer, upload(), shipment_ref="S")
    with pytest.raises(InvalidInput, match="shipment reference"):
        run_batch(transact_for(app_db), FakeBatchClassifier(), broker, upload(), shipment_ref="  ")
    assert counts(app_db) == (0, 0)


def test_open_line_item_rebuilds_the_prediction(app_db, broker):
    from db.models import LineItem
    from services.batch import open_line_item, run_batch

    result = run_batch(transact_for(app_db), FakeBatchClassifier(), broker, upload(2, bad_row=False),
                       shipment_ref="S", photo_root=app_db.photo_dir)  # fmt: skip
    record = result.records[1]
    with app_db.factory() as session:
        recorded = open_line_item(session, broker, record["line_item_id"], 0.5, photo_root=app_db.photo_dir)
        stored = session.get(LineItem, record["line_item_id"]).photos
    assert recorded.line_item_id == record["line_item_id"]
    # the line comes with its photos, as stored (issue 12 point 2)
    assert [hashlib.sha256(p.data).hexdigest() for p in recorded.photos] == [p.sha256 for p in stored]
    assert len(recorded.photos) == 1 and recorded.photos[0].name == "photo 1"
    assert recorded.prediction.levels[6][0].code == record["code_1"]
    assert recorded.prediction.modality == "both" and recorded.prediction.needs_review == record["needs_review"]


def test_check_batch_turns_file_errors_into_invalid_input():
    from services.batch import check_batch
    from services.errors import InvalidInput

    with pytest.raises(InvalidInput, match="points outside the archive"):
        check_batch("a.csv", b"line_ref,description\nA,b\n", "p.zip", make_zip({"../evil.jpg": jpeg()}))


# -- the real towers (slow) ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_batched_equals_one_by_one_with_the_real_towers():
    from hs_model.predict import Classifier

    clf = Classifier(None)
    photo_bytes = {"blue.jpg": jpeg((30, 60, 160), (320, 240)), "red.jpg": jpeg((200, 30, 30), (240, 320))}
    photos = ZipPhotos(make_zip(photo_bytes))
    data = (
        b"line_ref,description,photos\n"
        b"A1,men's knitted cotton T-shirt,blue.jpg\nA2,leather handbag,\nA3,,red.jpg\n"
        b"A4,stainless steel kitchen knife,red.jpg;blue.jpg\nA5,laptop computer 14 inch,blue.jpg\n"
    )
    rows = read_batch_csv(data, photos).rows
    batched = [o for chunk in classify_rows(clf, rows, photos, top_k=5, chunk_size=4) for o in chunk]
    for outcome in batched:
        from hs_model.images import load_image

        images = [load_image(photo_bytes[n], n) for n in outcome.row.photos]
        one = clf.predict(outcome.row.description or None, images, top_k=5)
        for level in (2, 4, 6):
            assert [c.code for c in one.levels[level]] == [c.code for c in outcome.prediction.levels[level]]
            want = [c.score for c in outcome.prediction.levels[level]]
            assert [c.score for c in one.levels[level]] == pytest.approx(want, abs=1e-4)


@pytest.mark.slow
def test_cli_batch_smoke(tmp_path: Path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "Shirt.JPG").write_bytes(jpeg((30, 60, 160), (320, 240)))
    csv_path = tmp_path / "items.csv"
    csv_path.write_bytes(
        "line_ref,description,photos\nA1,men's knitted cotton T-shirt,shirt.jpg\nA2,Café crème mug,\n"
        "A3,,nope.jpg\n".encode("latin-1")
    )
    out = tmp_path / "out.xlsx"
    cmd = [sys.executable, "-m", "hs_model", "predict", "--model", "zero-shot", "--batch", str(csv_path)]
    cmd += ["--images-dir", str(tmp_path / "photos"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "read as Windows-1252" in proc.stderr and "1 of 3 lines will not run" in proc.stderr
    from openpyxl import load_workbook

    sheet = load_workbook(out).active
    rows = [
        dict(zip([c.value for c in sheet[1]], [c.value for c in r], strict=True)) for r in sheet.iter_rows(min_row=2)
    ]
    assert [r["line_ref"] for r in rows] == ["A1", "A2", "A3"]
    assert re.fullmatch(r"\d{4}\.\d{2}", rows[0]["code_1"]) and rows[0]["error"] is None  # dotted text in XLSX
    assert rows[1]["description"] == "Café crème mug" and rows[1]["heading"]
    assert rows[2]["code_1"] is None and "nope.jpg" in rows[2]["error"]


def test_downloads_are_audited(app_db, broker):
    from openpyxl import load_workbook

    from db.models import AuditEvent
    from services.batch import export_results, run_batch

    result = run_batch(transact_for(app_db), FakeBatchClassifier(), broker, upload(2), shipment_ref="S-1",
                       photo_root=app_db.photo_dir)  # fmt: skip
    with app_db.factory.begin() as session:
        data = export_results(session, broker, result, "xlsx")
    sheet = load_workbook(io.BytesIO(data)).active
    assert [c.value for c in sheet[1]][:4] == ["line", "line_ref", "line_item_id", "status"]
    assert sheet.max_row == 4  # header + 2 classified + 1 not run
    with app_db.factory() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "batch_export")).one()
    assert event.detail == {"format": "xlsx", "shipment": "S-1", "rows": 3, "via": "app"}
    assert event.username == "bea"
