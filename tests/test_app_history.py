"""The classification history screen (import, problems, retract) and the record shown first in Classify."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db.models import HistoryMatch, HistoryRetraction, HistoryRow
from screens import common
from services import history
from tests.services.test_history import WordEmbedder
from tests.test_app_classify import APP, PASSWORD, FakeClassifier, classify, signed_in


class RecordingFakeClassifier(FakeClassifier):
    """The Classify screen's stand-in, with a word-hashing text tower so the record is asked."""

    def __init__(self) -> None:
        import torch

        super().__init__()
        emb = WordEmbedder()
        self.text_tower = type("T", (), {"name": emb.name, "dim": emb.dim,
                                         "encode_text": staticmethod(lambda t: torch.from_numpy(emb.encode(t)))})()  # fmt: skip


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> RecordingFakeClassifier:
    history.forget_indexes()
    clf = RecordingFakeClassifier()
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: clf)
    yield clf
    history.forget_indexes()


def history_screen(app_db) -> AppTest:
    app_db.add_user("ada", "admin", PASSWORD)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_input(key="auth_username").input("ada")
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    at.switch_page("screens/history.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Classification history"
    return at


def rows(app_db, model) -> int:
    with app_db.factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_problems_are_listed_and_nothing_is_imported(app_db, fake):
    at = history_screen(app_db)
    at.file_uploader(key="history_file_0").set_value(("h.csv", b"description,code\n,610910\nmug,12\n", "text/csv"))
    at.run()
    at.button(key="history_check").click().run()
    assert not at.exception, at.exception
    assert "2 problem(s) in h.csv" in at.error[0].value.replace("\\", "")  # markdown escapes
    assert next(d.value["Line"] for d in at.dataframe if "Line" in d.value).tolist() == [2, 3]
    assert rows(app_db, HistoryRow) == 0


def test_import_then_classify_shows_the_record_then_retract(app_db, fake):
    at = history_screen(app_db)
    data = b"description,code\nmen's knitted cotton T-shirt,610910\n"
    at.file_uploader(key="history_file_0").set_value(("firm.csv", data, "text/csv"))
    at.run()
    at.button(key="history_check").click().run()
    at.button(key="history_import").click().run()
    assert not at.exception, at.exception
    assert "Imported 1 line(s) of firm.csv as import #1" in at.success[0].value.replace("\\", "")
    assert next(d.value["Rows"] for d in at.dataframe if "Rows" in d.value).tolist() == [1]

    at.switch_page("screens/classify.py").run()
    classify(at, "Men's knitted cotton T-shirt")
    assert not at.exception, at.exception
    shown = [s.value.replace("\\", "") for s in at.success]
    assert any("From the record: 6109.10" in s and "line 2 of firm.csv" in s for s in shown), shown
    assert at.radio(key="classify_choice").value == "610910"
    assert rows(app_db, HistoryMatch) == 1

    at.switch_page("screens/history.py").run()
    at.text_input(key="history_retract_reason").input("wrong customer")
    at.button(key="history_retract").click().run()
    assert not at.exception, at.exception
    assert rows(app_db, HistoryRetraction) == 1


def test_brokers_do_not_get_the_history_screen(app_db, fake):
    at = signed_in(app_db)
    with pytest.raises(ValueError, match=r"Known pages: \[.*screens/classify.py"):
        at.switch_page("screens/history.py")


def test_the_reviewer_sees_that_the_code_came_from_the_record(app_db, fake):
    from db.queries import find_user
    from services.auth import Actor
    from services.classify import classify_and_record, submit_decision
    from services.history_file import check_history_file
    from tests.test_app_review import sign_in, texts

    app_db.add_user("ada", "admin", PASSWORD)
    app_db.add_user("bea", "broker", PASSWORD)
    emb = WordEmbedder()
    with app_db.factory.begin() as session:
        admin, broker = (Actor.from_user(find_user(session, n)) for n in ("ada", "bea"))
        checked = check_history_file("firm.csv", b"description,code\ncotton T-shirt,610910\nleather belt,420330\n")
        history.import_history(session, admin, checked, embedder=emb)
        for text, code in (("cotton T-shirt", "610910"), ("leather belt", "610990")):
            item = classify_and_record(session, fake, broker, text=text, photos=[], embedder=emb,
                                       photo_root=app_db.photo_dir)  # fmt: skip
            submit_decision(session, broker, line_item_id=item.line_item_id, code=code, justification="as before")
    at = sign_in(app_db, "rey", "reviewer")
    shown = texts(at).replace("\\", "")
    assert "From the record**: the broker's code is the record's" in shown
    at.selectbox(key="review_item").select(2).run()
    assert "Differs from the record** (4203.30)" in texts(at).replace("\\", "")
