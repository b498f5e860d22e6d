"""Classification history: checking a file row by row, importing it (append-only, audited), retracting it, and
answering a product seen before from the record (exact, near duplicate, conflict, the material guard)."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select, text

from db import queries
from db.decision_log import DecisionFilter, decision_log
from db.export import export_decision_log
from db.models import AuditEvent, HistoryRow
from services import history
from services.errors import InvalidInput, PermissionDenied
from services.history_file import HistoryFileError, check_history_file, open_photos
from services.history_match import HistoryIndex, Source, guard_words, normalise


class WordEmbedder:
    """Hashed bag of words, unit length: identical word sets give cosine 1, one word changed a bit less."""

    name = "test-words"
    dim = 64

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in normalise(t).split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


@pytest.fixture(autouse=True)
def _fresh_record():
    history.forget_indexes()
    yield
    history.forget_indexes()


GOOD = (
    "description,code,sku,importer,date\n"
    "Men's knitted cotton T-shirt crew neck,6109.10.00,TS-1,ACME,2026-03-01\n"
    "Stainless steel kitchen knife set of five pieces,821191,KN-5,ACME,2026-03-02\n"
    '"=HYPERLINK(""http://x"")",9503.00,,,\n'
)


def _import(session, actor, data: str = GOOD, name: str = "firm.csv", embedder=None):
    checked = check_history_file(name, data.encode())
    return history.import_history(session, actor, checked, embedder=embedder)


def test_every_problem_is_reported_with_its_line_and_nothing_is_written(factory, actors):
    data = (
        "Description,HS Code,SKU,Importer,Date\n"
        "ok row,610910,,,\n"
        ",610910,,,\n"  # 3: empty description
        "bad code,61091,,,\n"  # 4: 5 digits
        "not hs2022,999999,,,\n"  # 5: not a subheading
        "letters,ABCDEF,,,\n"  # 6
        "ok row,610910,,,\n"  # 7: duplicate of 2
        "future,610910,,,2999-01-01\n"  # 8
        + "long,"
        + "x" * 10
        + ",,,\n"  # 9: 10 letters
        + "x" * 20_001
        + ",610910,,,\n"  # 10: over-long text
    )
    checked = check_history_file("bad.csv", data.encode())
    lines = {p.line: p.problem for p in checked.problems}
    assert set(lines) == {3, 4, 5, 6, 7, 8, 9, 10}
    assert "empty description" in lines[3]
    assert "6 digits" in lines[4] or "digits" in lines[4]
    assert "HS2022" in lines[5]
    assert "duplicate of line 2" in lines[7]
    assert "future" in lines[8]
    assert "20,000" in lines[10]
    with factory.begin() as session, pytest.raises(InvalidInput, match="nothing was imported"):
        history.import_history(session, actors["admin"], checked)
    with factory.begin() as session:
        assert session.scalar(select(func.count()).select_from(HistoryRow)) == 0


def test_header_without_a_code_column_is_refused():
    with pytest.raises(HistoryFileError, match="no code column"):
        check_history_file("x.csv", b"description,price\nshirt,3\n")


def test_import_is_audited_append_only_listed_and_not_repeated(factory, actors):
    with factory.begin() as session:
        result = _import(session, actors["admin"], embedder=WordEmbedder())
    assert result.rows == 3 and result.embedded
    with factory.begin() as session:
        rows = session.scalars(select(HistoryRow).order_by(HistoryRow.id)).all()
        assert [r.hs6 for r in rows] == ["610910", "821191", "950300"]
        assert rows[0].code == "61091000" and rows[0].line_no == 2 and rows[0].sku == "TS-1"
        assert rows[2].description.startswith("=HYPERLINK")  # kept as text; exports neutralise it
        actions = session.scalars(select(AuditEvent.action)).all()
        assert "history_import" in actions
        imports = history.list_imports(session, actors["admin"])
        assert imports[0].row_count == 3 and imports[0].username == "ada" and imports[0].retracted_at is None
    with factory.begin() as session, pytest.raises(InvalidInput, match="already imported as import #1"):
        _import(session, actors["admin"])
    with factory.begin() as session, pytest.raises(Exception, match="append-only"):
        session.execute(text("UPDATE history_rows SET hs6 = '610990'"))


def test_only_admins_import(factory, actors):
    with factory.begin() as session, pytest.raises(PermissionDenied):
        _import(session, actors["broker"])


def test_imported_rows_are_in_the_decision_log_and_its_csv_export(factory, actors):
    with factory.begin() as session:
        _import(session, actors["admin"])
    with factory.begin() as session:
        rows = decision_log(session, DecisionFilter(kinds=("imported",)))
        assert [r["kind"] for r in rows] == ["imported"] * 3
        assert rows[0]["code"] == "610910" and "firm.csv" in rows[0]["history_import"]
        data, count = export_decision_log(session, DecisionFilter(), "csv")
    assert count == 3
    csv_text = data.decode()
    assert "'=HYPERLINK" in csv_text  # neutralised in the CSV
    assert '"=""6109.10"""' in csv_text  # a code a spreadsheet keeps as text


def test_retraction_is_audited_and_takes_the_rows_out_of_the_record(factory, actors):
    emb = WordEmbedder()
    with factory.begin() as session:
        imp = _import(session, actors["admin"], embedder=emb)
    with factory.begin() as session:
        match = history.find_match(session, emb, "men's knitted cotton t-shirt, crew neck")
        assert match is not None and match.how == "description" and match.code == "610910"
        assert "of firm.csv, imported on" in match.summary()
    with factory.begin() as session:
        history.retract_import(session, actors["admin"], imp.import_id, "wrong customer's file")
    with factory.begin() as session, pytest.raises(InvalidInput, match="already retracted"):
        history.retract_import(session, actors["admin"], imp.import_id, "again")
    with factory.begin() as session:
        assert history.find_match(session, emb, "men's knitted cotton t-shirt, crew neck") is None
        listed = history.list_imports(session, actors["admin"])[0]
        assert listed.retracted_by == "ada" and listed.retraction_reason == "wrong customer's file"
        assert "history_retraction" in session.scalars(select(AuditEvent.action)).all()
        assert "retracted" in decision_log(session)[0]["history_import"]
    with factory.begin() as session:  # the same file may be imported again once retracted
        assert _import(session, actors["admin"]).rows == 3


def test_sku_and_importer_match_before_the_description(factory, actors):
    emb = WordEmbedder()
    with factory.begin() as session:
        _import(session, actors["admin"], embedder=emb)
    with factory.begin() as session:
        match = history.find_match(session, emb, "something else entirely", sku="ts-1", importer="acme")
        assert match is not None and match.how == "sku" and match.code == "610910"
        assert history.find_match(session, emb, "something else entirely", sku="TS-1", importer="OTHER") is None


def test_conflicting_history_is_a_conflict_not_a_code(factory, actors):
    emb = WordEmbedder()
    data = "description,code\nleather wallet,420231\nLeather wallet!,420232\n"
    with factory.begin() as session:
        _import(session, actors["admin"], data, embedder=emb)
    with factory.begin() as session:
        match = history.find_match(session, emb, "leather wallet")
    assert match is not None and match.conflict and match.code is None
    assert set(match.codes) == {"420231", "420232"}
    assert "Conflict" in match.summary() and "4202.31" in match.summary() and "4202.32" in match.summary()


def test_near_duplicate_matches_but_not_with_another_material(factory, actors):
    emb = WordEmbedder()
    data = "description,code\nwomens long sleeve cotton blouse with buttons white,620630\n"
    with factory.begin() as session:
        _import(session, actors["admin"], data, embedder=emb)
    with factory.begin() as session:
        index = history.record_index(session, emb)
        index.threshold = 0.8
        near = history.find_match(session, emb, "white womens long sleeve cotton blouse with buttons and collar")
        assert near is not None and near.how == "near" and near.code == "620630"
        assert history.find_match(session, emb, "womens long sleeve polyester blouse with buttons white") is None


def test_the_material_guard_words():
    assert guard_words(normalise("Cotton T-shirt")) != guard_words(normalise("Polyester T-shirt"))
    assert guard_words(normalise("steel bracket 40mm")) != guard_words(normalise("aluminium bracket 40mm"))
    assert guard_words(normalise("aluminum bracket")) == guard_words(normalise("aluminium bracket"))
    assert guard_words(normalise("set of 2 mugs")) != guard_words(normalise("set of 6 mugs"))
    assert guard_words(normalise("two mugs")) == guard_words(normalise("2 mugs"))


def test_index_guard_refuses_a_near_duplicate_of_another_material():
    index = HistoryIndex(dim=3, threshold=0.9)
    index.add([Source("imported", "610910", "row 1", "cotton t-shirt", history_row_id=1)], ["cotton t shirt"],
              np.array([[1.0, 0.0, 0.0]]))  # fmt: skip
    same_vector = np.array([1.0, 0.01, 0.0])
    assert index.match("polyester t shirt", same_vector) is None  # the vectors agree; the material does not
    hit = index.match("t shirt cotton", same_vector)
    assert hit is not None and hit.how == "near" and hit.code == "610910"


def test_inverted_file_search_finds_the_near_duplicates_exact_search_finds():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3000, 32)).astype(np.float32)
    index = HistoryIndex(dim=32, threshold=0.95, exact_up_to=500, n_probe=8)
    index.add([Source("imported", "610910", f"row {i}", "", history_row_id=i) for i in range(3000)], [""] * 3000, base)
    queries_ = base[:200] + 0.05 * rng.standard_normal((200, 32)).astype(np.float32)
    found = sum(int(i in index.near(q)[0]) for i, q in enumerate(queries_))
    assert found >= 196  # recall of the probed lists against exact search (all 200 are above the threshold)
    extra = rng.standard_normal((10, 32)).astype(np.float32)  # rows added after the lists were built join them
    index.add([Source("imported", "610910", "new", "", history_row_id=9000 + i) for i in range(10)], [""] * 10, extra)
    assert index.near(extra[3])[0][:1] == [3003]


def test_reviewed_decisions_join_the_record_and_leave_it_when_sent_back(factory, actors, item_id):
    emb = WordEmbedder()
    with factory.begin() as session:
        queries.add_decision(session, line_item_id=item_id, kind="submitted", code="610910",
                             user_id=actors["broker"].user_id, role="broker", comment="")  # fmt: skip
        queries.add_decision(session, line_item_id=item_id, kind="approved", code="610910",
                             user_id=actors["reviewer"].user_id, role="reviewer", comment="sent back")  # fmt: skip
    with factory.begin() as session:
        match = history.find_match(session, emb, "Men's cotton T-shirt")
        assert match is not None and match.code == "610910"
        assert f"line item #{item_id}, approved by rey" in match.summary()
    with factory.begin() as session:
        queries.add_decision(session, line_item_id=item_id, kind="rejected", code=None,
                             user_id=actors["reviewer"].user_id, role="reviewer", comment="sent back")  # fmt: skip
    with factory.begin() as session:
        assert history.find_match(session, emb, "Men's cotton T-shirt") is None


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "PNG")
    return buf.getvalue()


def test_photos_zip_is_checked_and_photos_are_stored(factory, actors, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("shirt.png", _png())
        z.writestr("notes.png", b"not an image at all")
    photos = open_photos("p.zip", buf.getvalue())
    data = "description,code,photos\nred shirt,610910,shirt.png\nblue shirt,610910,notes.png\ngreen,610910,gone.jpg\n"
    checked = check_history_file("p.csv", data.encode(), photos)
    assert {p.line for p in checked.problems} == {3, 4}
    good = check_history_file("p.csv", b"description,code,photos\nred shirt,610910,shirt.png\n", photos)
    with factory.begin() as session:
        result = history.import_history(session, actors["admin"], good, photos=photos, photos_name="p.zip",
                                        photo_root=tmp_path / "photos")  # fmt: skip
    assert result.photos == 1
    with factory.begin() as session:
        row = session.scalars(select(HistoryRow)).one()
        assert row.photos[0]["mime"] == "image/png" and (tmp_path / "photos" / row.photos[0]["path"]).is_file()


def test_xlsx_files_are_read_like_csv(factory, actors):
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["Goods description", "Commodity code", "SKU"])
    sheet.append(["ceramic mug", "691200", "M-1"])
    sheet.append(["", "691200", None])
    buf = io.BytesIO()
    book.save(buf)
    checked = check_history_file("h.xlsx", buf.getvalue())
    assert [r.hs6 for r in checked.rows] == ["691200"]
    assert [(p.line, p.problem) for p in checked.problems] == [(3, "empty description")]


def test_classify_shows_the_record_and_the_reviewer_sees_it(factory, actors, tmp_path):
    from services.classify import classify_and_record, submit_decision
    from tests.test_batch import FakeBatchClassifier

    emb = WordEmbedder()
    with factory.begin() as session:
        _import(session, actors["admin"], embedder=emb)
    with factory.begin() as session:
        recorded = classify_and_record(session, FakeBatchClassifier(), actors["broker"], photos=[], embedder=emb,
                                       text="Stainless steel kitchen knife set of five pieces",
                                       photo_root=tmp_path)  # fmt: skip
    assert recorded.record is not None and recorded.record.code == "821191"
    assert recorded.prediction.levels[6]  # the model's candidates are still there, beside the record
    with factory.begin() as session:
        submit_decision(session, actors["broker"], line_item_id=recorded.line_item_id, code="821191",
                        justification=f"From the record: {recorded.record.summary()}")  # fmt: skip
    with factory.begin() as session:
        note = history.record_note(session, actors["reviewer"], recorded.line_item_id)
    assert note is not None and note.code == "821191" and not note.conflict
    assert "of firm.csv, imported on" in note.summary


def test_batch_results_say_which_lines_matched_the_record(factory, actors, tmp_path):
    from db.engine import run_transaction
    from services.batch import OUTPUT_COLUMNS, check_batch, results_csv, run_batch
    from tests.test_batch import FakeBatchClassifier

    emb = WordEmbedder()
    with factory.begin() as session:
        _import(session, actors["admin"], "description,code\nceramic mug,691200\nceramic mug,691110\n", embedder=emb)
        _import(session, actors["admin"], "description,code\nglass vase,701391\n", "b.csv", embedder=emb)
    check = check_batch("b.csv", b"line_ref,description\nL1,Glass vase\nL2,ceramic mug\nL3,a bicycle bell\n")
    result = run_batch(lambda fn: run_transaction(factory, fn), FakeBatchClassifier(), actors["broker"], check,
                       shipment_ref="S-1", photo_root=tmp_path, embedder=emb)  # fmt: skip
    cells = [(r["record_code"], (r["record"] or "")[:8]) for r in result.records]
    assert cells == [("701391", "Same pro"), (None, "Conflict"), (None, "")]
    assert b'"=""7013.91"""' in results_csv(result.records, OUTPUT_COLUMNS)
    again = run_batch(lambda fn: run_transaction(factory, fn), FakeBatchClassifier(), actors["broker"], check,
                      shipment_ref="S-1", photo_root=tmp_path, embedder=emb)  # fmt: skip
    assert again.resumed == 3 and [r["record_code"] for r in again.records] == ["701391", None, None]


def test_fine_tuning_collects_imported_decisions_with_their_provenance(factory, actors, item_id):
    from services.finetune import collect_reviewed, training_provenance

    with factory.begin() as session:
        queries.add_decision(session, line_item_id=item_id, kind="submitted", code="610910",
                             user_id=actors["broker"].user_id, role="broker", comment="")  # fmt: skip
        queries.add_decision(session, line_item_id=item_id, kind="approved", code="610910",
                             user_id=actors["reviewer"].user_id, role="reviewer", comment="")  # fmt: skip
        _import(session, actors["admin"])
        gone = _import(session, actors["admin"], "description,code\nold wrong row,010121\n", "old.csv")
        history.retract_import(session, actors["admin"], gone.import_id, "wrong file")
    with factory.begin() as session:
        items = collect_reviewed(session)
        provenance = training_provenance(session, items)
    assert [i.code for i in items] == ["610910", "610910", "821191", "950300"]  # the retracted row is left out
    assert items[0].line_item_id == item_id and all(i.line_item_id < 0 for i in items[1:])
    assert provenance["reviewed"] == 1 and provenance["imported"] == 3
    assert list(provenance["imports"].values()) == [3] and "firm.csv" in next(iter(provenance["imports"]))


def test_hash_lookup_finds_rows_before_and_after_a_merge():
    from services.history_match import HashLookup

    lookup = HashLookup(merge_every=3)
    for row, word in enumerate(["mug", "vase", "mug", "bell", "lamp", "mug"]):
        lookup.add(word, row)
    assert sorted(lookup.get("mug")) == [0, 2, 5] and lookup.get("vase") == [1] and lookup.get("chair") == []
    assert len(lookup.keys) >= 3  # some rows were merged into the sorted arrays


def test_a_batch_line_reopened_in_classify_brings_its_record(factory, actors, tmp_path):
    from db.engine import run_transaction
    from services.batch import check_batch, open_line_item, run_batch
    from tests.test_batch import FakeBatchClassifier

    emb = WordEmbedder()
    with factory.begin() as session:
        _import(session, actors["admin"], "description,code\nglass vase,701391\n", "b.csv", embedder=emb)
    check = check_batch("b.csv", b"line_ref,description\nL1,Glass vase\n")
    result = run_batch(lambda fn: run_transaction(factory, fn), FakeBatchClassifier(), actors["broker"], check,
                       shipment_ref="S-1", photo_root=tmp_path, embedder=emb)  # fmt: skip
    with factory.begin() as session:
        reopened = open_line_item(session, actors["broker"], result.records[0]["line_item_id"], photo_root=tmp_path)
    assert reopened.record is not None and reopened.record.code == "701391"
    assert reopened.record.summary() == result.records[0]["record"]
