"""A rejected item is corrected where the error is: a new version of description and photos (issue 12 point 2)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import AppendOnlyError, AuditEvent, LineItem, LineItemVersion, Prediction
from db.queries import find_user
from services import decisions
from services.auth import Actor
from services.classify import UploadedPhoto, classify_and_record
from services.errors import InvalidInput, PermissionDenied
from services.revisions import item_versions, revise_rejected_item
from tests.services.test_review_service import png
from tests.test_app_classify import PASSWORD, FakeClassifier


def rejected_item(app_db) -> tuple[int, dict[str, Actor]]:
    for name, role in (("bea", "broker"), ("bob", "broker"), ("rita", "reviewer")):
        app_db.add_user(name, role, PASSWORD)
    with app_db.factory.begin() as s:
        actors = {n: Actor.from_user(find_user(s, n)) for n in ("bea", "bob", "rita")}
        recorded = classify_and_record(
            s, FakeClassifier(), actors["bea"], text="cotton T-shirt", photos=[UploadedPhoto("a.png", png())],
            photo_root=app_db.photo_dir,
        )  # fmt: skip
        decisions.submit(s, actors["bea"], recorded.line_item_id, "610910")
        decisions.reject(s, actors["rita"], recorded.line_item_id, "The label says polyester.")
    return recorded.line_item_id, actors


def test_a_rejected_item_gets_a_new_version_and_the_old_one_is_kept(app_db):
    item_id, actors = rejected_item(app_db)
    with app_db.factory.begin() as s:
        revise_rejected_item(
            s, FakeClassifier(), actors["bea"], item_id, text="polyester T-shirt, knitted",
            photos=[UploadedPhoto("label.png", png((200, 10, 10)))], reason="the label photo shows polyester",
            photo_root=app_db.photo_dir,
        )  # fmt: skip
    with app_db.factory() as s:
        item = s.get(LineItem, item_id)
        versions = item_versions(s, actors["bea"], item_id)
        predictions = s.scalars(select(Prediction).where(Prediction.line_item_id == item_id)).all()
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "item_revised")).one()
    assert item.description == "polyester T-shirt, knitted" and len(item.photos) == 1
    assert [(v.version, v.description, v.photo_count, v.reason, v.by) for v in versions] == [
        (1, "cotton T-shirt", 1, "original", "bea"),
        (2, "polyester T-shirt, knitted", 1, "the label photo shows polyester", "bea"),
    ]
    assert len(predictions) == 2 and event.detail["version"] == 2 and event.detail["photos_replaced"] is True
    with app_db.factory.begin() as s:  # the broker submits for the new version as usual
        decisions.submit(s, actors["bea"], item_id, "610910")
    with app_db.factory.begin() as s, pytest.raises(AppendOnlyError):
        s.scalars(select(LineItemVersion)).first().description = "rewritten history"
        s.flush()


def test_only_the_brokers_rejected_item_with_a_reason_and_a_change(app_db):
    item_id, actors = rejected_item(app_db)
    revise = lambda s, who, **kw: revise_rejected_item(  # noqa: E731
        s, FakeClassifier(), actors[who], item_id, photo_root=app_db.photo_dir,
        **({"text": "polyester T-shirt", "photos": None, "reason": "label"} | kw),
    )  # fmt: skip
    with app_db.factory.begin() as s:
        with pytest.raises(PermissionDenied):
            revise(s, "bob")
        with pytest.raises(PermissionDenied):
            revise(s, "rita")
        with pytest.raises(InvalidInput, match="Say what you corrected"):
            revise(s, "bea", reason=" ")
        with pytest.raises(InvalidInput, match="Nothing changed"):
            revise(s, "bea", text="cotton T-shirt")
        revise(s, "bea")  # the description only; the stored photo is kept and read again
        with pytest.raises(InvalidInput, match="Only a rejected item"):
            decisions.submit(s, actors["bea"], item_id, "610910")
            revise(s, "bea", text="again")
    with app_db.factory() as s:
        assert [v.version for v in s.scalars(select(LineItemVersion))] == [1, 2]
