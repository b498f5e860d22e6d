"""The batch screen through Streamlit's AppTest with a fake classifier: check, run, resume, download, open a line."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db.models import LineItem, Prediction
from screens import common
from tests.test_batch import FakeBatchClassifier, jpeg

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = str(REPO_ROOT / "app.py")
PASSWORD = "correct horse battery"
CSV = (
    b"line_ref,description,photos\n"
    b"A1,men's knitted cotton T-shirt,front.jpg\n"
    b"A2,leather handbag,\n"
    b"\n"
    b"A3,,missing.jpg\n"
    b"A2,duplicate ref,\n"
)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBatchClassifier:
    clf = FakeBatchClassifier(threshold=0.7)
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: clf)
    return clf


def photos_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("shots/FRONT.JPG", jpeg())
    return buf.getvalue()


def batch_screen(app_db, role: str = "broker") -> AppTest:
    app_db.add_user("bea", role, PASSWORD)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_input(key="auth_username").input("bea")
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    at.switch_page("screens/batch.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Classify a batch"
    return at


def upload(at: AppTest, csv: bytes = CSV, with_zip: bool = True, shipment: str = "SHIP-7") -> AppTest:
    at.file_uploader(key="batch_csv_0").set_value(("items.csv", csv, "text/csv"))
    if with_zip:
        at.file_uploader(key="batch_zip_0").set_value(("photos.zip", photos_zip(), "application/zip"))
    at.text_input(key="batch_shipment").input(shipment)
    return at.run()


def count(app_db, model) -> int:
    with app_db.factory() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize("role", ["broker", "admin"])
def test_the_menu_offers_batch_to_brokers_and_admins(app_db, fake, role):
    at = batch_screen(app_db, role)
    assert not at.exception and not at.error


def test_problems_are_shown_per_row_before_anything_runs(app_db, fake):
    at = upload(batch_screen(app_db))
    assert not at.exception and not at.error
    assert [m.value for m in at.metric] == ["4", "2", "2", "1"]
    assert any("1 blank line skipped" in i.value and "line 4" in i.value for i in at.info)
    problems = at.dataframe[0].value
    assert list(problems["Line"]) == [5, 6]
    assert "missing.jpg" in problems["Problem"].iloc[0] and "also on line 3" in problems["Problem"].iloc[1]
    assert at.button(key="batch_run").label == "Classify 2 lines"
    assert fake.batch_calls == [] and count(app_db, LineItem) == 0


def test_run_stores_shows_and_resumes_without_duplicates(app_db, fake):
    at = upload(batch_screen(app_db))
    at = at.button(key="batch_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "**2** classified and stored under shipment **SHIP\\-7**" in at.success[0].value
    assert "2 not run" in at.success[0].value
    table = at.dataframe[-1].value
    assert list(table["Line ref"]) == ["A1", "A2", "A3", "A2"]
    assert list(table["Status"]) == ["classified", "classified", "not run", "not run"]
    assert table["Code 1"].iloc[0].count(".") == 1  # shown as dddd.dd (score)
    assert count(app_db, LineItem) == 2 and count(app_db, Prediction) == 2
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download CSV", "Download XLSX"]

    at = at.button(key="batch_run").click().run()  # the same file, the same shipment: a resume
    assert "2 already stored (not classified again)" in at.success[0].value
    assert count(app_db, LineItem) == 2 and sum(fake.batch_calls) == 2


def test_a_whole_file_problem_is_one_clear_error(app_db, fake):
    rows = b"line_ref,description\n" + b"".join(b"L%d,shirt\n" % i for i in range(100_000))
    at = upload(batch_screen(app_db), csv=rows, with_zip=False)
    assert len(at.error) == 1 and "100,000 line items; one run takes at most 5,000" in at.error[0].value
    assert "batch_run" not in [b.key for b in at.button] and count(app_db, LineItem) == 0


def test_run_needs_a_shipment_reference(app_db, fake):
    at = upload(batch_screen(app_db), shipment="")
    assert at.button(key="batch_run").disabled
    assert any("Give a shipment reference" in c.value for c in at.caption)


def test_a_line_opens_in_the_classify_screen(app_db, fake):
    at = upload(batch_screen(app_db))
    at = at.button(key="batch_run").click().run()
    with app_db.factory() as session:
        first = session.scalars(select(LineItem).where(LineItem.line_ref == "A1")).one()
    at.selectbox(key="batch_open_pick").select(first.id)
    at = at.button(key="batch_open").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Classify a product"
    assert at.subheader[0].value == f"Candidates for line item #{first.id}"
    assert at.text_area(key="classify_text").value == "men's knitted cotton T-shirt"
    assert at.text_input(key="classify_shipment").value == "SHIP-7"
    assert at.radio(key="classify_choice").value == at.session_state["classify_result"].prediction.levels[6][0].code


def test_reviewers_do_not_get_the_batch_screen(app_db, fake):
    app_db.add_user("rita", "reviewer", PASSWORD)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_input(key="auth_username").input("rita")
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    with pytest.raises(ValueError, match=r"Known pages: \['/.*/screens/review.py'\]"):
        at.switch_page("screens/batch.py")
