"""Review shows a corrected item's earlier versions and what changed (issue 12 point 2, remainder): the reviewer sees
the description's word diff and the photos count between versions, as the broker does on My items."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db.queries import find_user
from screens import common
from services import decisions
from services.auth import Actor
from services.classify import UploadedPhoto
from services.errors import PermissionDenied
from services.revisions import revise_rejected_item, version_changes, word_diff
from tests.services.test_review_service import png
from tests.services.test_revisions import rejected_item
from tests.test_app_classify import PASSWORD, FakeClassifier
from tests.test_app_review import texts

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_word_diff_marks_removed_and_added_words_and_cuts_long_unchanged_runs():
    assert word_diff("cotton  T-shirt", "cotton T-shirt\n") == ()  # whitespace alone is no change
    assert word_diff("cotton T-shirt", "polyester T-shirt knitted") == (
        ("removed", "cotton"),
        ("added", "polyester"),
        ("same", "T-shirt"),
        ("added", "knitted"),
    )
    assert word_diff("cotton T-shirt", "cotton T-shirt, knitted") == (
        ("same", "cotton"),
        ("removed", "T-shirt"),
        ("added", "T-shirt, knitted"),
    )  # words, punctuation included
    middle = " ".join(f"w{i}" for i in range(40))
    pieces = word_diff(f"red {middle} small", f"blue {middle} large", context=3)
    assert pieces == (
        ("removed", "red"),
        ("added", "blue"),
        ("same", "w0 w1 w2"),
        ("cut", "…"),
        ("same", "w37 w38 w39"),
        ("removed", "small"),
        ("added", "large"),
    )


def revised(app_db) -> tuple[int, dict[str, Actor]]:
    """A rejected item the broker corrected (new text and a new photo), then submitted again."""
    item_id, actors = rejected_item(app_db)
    with app_db.factory.begin() as s:
        revise_rejected_item(
            s, FakeClassifier(), actors["bea"], item_id, text="polyester T-shirt knitted, with a label",
            photos=[UploadedPhoto("label.png", png((200, 10, 10))), UploadedPhoto("back.png", png((10, 200, 10)))],
            reason="the label photo shows polyester", photo_root=app_db.photo_dir,
        )  # fmt: skip
        decisions.submit(s, actors["bea"], item_id, "610910")
    return item_id, actors


def test_version_changes_for_the_reviewer_and_the_brokers_own_items_only(app_db):
    item_id, actors = revised(app_db)
    with app_db.factory() as s:
        for who in ("rita", "bea"):
            (change,) = version_changes(s, actors[who], item_id)
            assert (change.previous, change.version, change.by) == (1, 2, "bea")
            assert change.reason == "the label photo shows polyester"
            assert (change.photos_before, change.photos_after, change.photos_replaced) == (1, 2, True)
            assert change.description == (
                ("removed", "cotton"),
                ("added", "polyester"),
                ("same", "T-shirt"),
                ("added", "knitted, with a label"),
            )
        with pytest.raises(PermissionDenied):
            version_changes(s, actors["bob"], item_id)  # another broker
        with pytest.raises(PermissionDenied):
            version_changes(s, None, item_id)


def test_an_item_never_corrected_has_no_changes(app_db):
    item_id, actors = rejected_item(app_db)
    with app_db.factory() as s:
        assert version_changes(s, actors["rita"], item_id) == []


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: FakeClassifier())


def test_the_reviewer_sees_what_the_broker_changed_between_versions(app_db):
    item_id, _ = revised(app_db)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="auth_username").input("rita")
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.title[0].value == "Review submitted codes"
    assert [e.label for e in at.expander if "Earlier versions" in e.label] == [
        "Earlier versions: corrected once by the broker"
    ]
    page = texts(at)
    assert f"Line item #{item_id}" in page
    assert "**v1 → v2**" in page and "bea · “the label photo shows polyester”" in page
    assert "Description: :red[~~cotton~~] :green[**polyester**] T-shirt :green[**knitted, with a label**]" in page
    assert "Photos: replaced: 1 → 2 photo(s)" in page


def test_an_item_never_corrected_shows_no_versions_block(app_db):
    app_db.add_user("bea", "broker", PASSWORD)
    app_db.add_user("rita", "reviewer", PASSWORD)
    from services.classify import classify_and_record

    with app_db.factory.begin() as s:
        bea = Actor.from_user(find_user(s, "bea"))
        recorded = classify_and_record(s, FakeClassifier(), bea, text="cotton T-shirt", photos=[])
        decisions.submit(s, bea, recorded.line_item_id, "610910")
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="auth_username").input("rita")
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    assert not at.exception and not at.error
    assert not [e for e in at.expander if "Earlier versions" in e.label]
    assert "Photos:" not in texts(at)
