"""services.classify: validation before any write, photos by content hash, role checks, code submission."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image
from sqlalchemy import func, select

from db.models import LineItem, Photo, Prediction, Shipment
from db.queries import find_user
from services.auth import Actor
from services.classify import (
    UploadedPhoto,
    classify_and_record,
    search_subheadings,
    submit_decision,
)
from services.errors import InvalidInput, PermissionDenied
from tests.test_app_classify import PASSWORD, FakeClassifier


def png(colour: str = "red", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((128, 128), 40).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def actor(app_db, role: str = "broker", username: str = "bea") -> Actor:
    app_db.add_user(username, role, PASSWORD)
    with app_db.factory() as session:
        return Actor.from_user(find_user(session, username))


def record(app_db, who: Actor, classifier=None, **kwargs):
    kwargs.setdefault("text", "men's knitted cotton T-shirt")
    kwargs.setdefault("photos", [])
    with app_db.factory.begin() as session:
        return classify_and_record(session, classifier or FakeClassifier(), who, photo_root=app_db.photo_dir, **kwargs)


def rows(app_db) -> tuple[int, ...]:
    with app_db.factory() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(m)) for m in (LineItem, Prediction, Photo, Shipment)
        )


def test_records_item_photos_and_prediction_at_every_level(app_db):
    photo = png()
    recorded = record(
        app_db, actor(app_db), photos=[UploadedPhoto("front.png", photo)], shipment_ref=" SH-1 ", line_ref="L7"
    )
    sha = hashlib.sha256(photo).hexdigest()
    assert (app_db.photo_dir / sha[:2] / f"{sha}.png").read_bytes() == photo
    with app_db.factory() as session:
        item = session.get(LineItem, recorded.line_item_id)
        prediction = session.get(Prediction, recorded.prediction_id)
        assert (item.shipment.reference, item.line_ref) == ("SH-1", "L7")
        assert [(p.sha256, p.mime, p.width) for p in item.photos] == [(sha, "image/png", 64)]
    assert prediction.line_item_id == item.id and prediction.needs_review is False
    assert prediction.nomenclature_edition == "HS2022" and prediction.latency_ms == 12.0
    assert sorted((c["level"], c["rank"], c["code"]) for c in prediction.candidates)[:2] == [
        (2, 1, "61"),
        (4, 1, "6109"),
    ]


def test_the_same_photo_is_stored_once(app_db):
    who, photo = actor(app_db), UploadedPhoto("a.png", png("blue"))
    record(app_db, who, photos=[photo])
    record(app_db, who, photos=[photo], text="")
    assert rows(app_db)[:3] == (2, 2, 2)
    assert len([p for p in app_db.photo_dir.rglob("*") if p.is_file()]) == 1


@pytest.mark.parametrize(
    ("photos", "message"),
    [
        ([UploadedPhoto("page.jpg", b"<html><script>alert(1)</script></html>")], "page.jpg: this is not an image file"),
        ([UploadedPhoto("cut.jpg", jpeg()[:600])], "cut.jpg: the image is corrupt or truncated"),
        ([UploadedPhoto("empty.png", b"")], "empty.png: the file is empty"),
        ([UploadedPhoto("tiny.png", png(size=(4, 4)))], "tiny.png: 4x4 pixels is too small"),
        ([UploadedPhoto(f"p{i}.png", png()) for i in range(9)], "at most 8 per product"),
    ],
)
def test_bad_photos_are_refused_before_anything_is_written(app_db, photos, message):
    good = UploadedPhoto("good.png", png("green"))
    with pytest.raises(InvalidInput, match=message):
        record(app_db, actor(app_db), photos=[good, *photos])
    assert rows(app_db) == (0, 0, 0, 0)
    assert not app_db.photo_dir.exists()


def test_long_reference_is_refused_before_the_model_runs(app_db):
    fake = FakeClassifier()
    with pytest.raises(InvalidInput, match="shipment reference has 65 characters; the limit is 64"):
        record(app_db, actor(app_db), fake, shipment_ref="S" * 65)
    assert fake.calls == 0 and rows(app_db) == (0, 0, 0, 0)


@pytest.mark.parametrize("role", ["reviewer", None])
def test_only_brokers_and_admins_classify(app_db, role):
    fake = FakeClassifier()
    who = actor(app_db, role) if role else None
    with pytest.raises(PermissionDenied):
        record(app_db, who, fake, photos=[UploadedPhoto("a.png", png())])
    assert fake.calls == 0 and rows(app_db) == (0, 0, 0, 0)


def test_submit_checks_the_code_against_hs_2022(app_db):
    who = actor(app_db, "admin", "ada")
    recorded = record(app_db, who)
    with app_db.factory.begin() as session, pytest.raises(InvalidInput, match=r"1234\.56. does not exist in HS 2022"):
        submit_decision(session, who, line_item_id=recorded.line_item_id, code="1234.56")
    with app_db.factory.begin() as session:
        decision = submit_decision(
            session, who, line_item_id=recorded.line_item_id, code="6109.10", prediction_id=recorded.prediction_id
        )
    assert (decision.kind, decision.code, decision.role) == ("submitted", "610910", "admin")


def test_search_offers_subheadings_only():
    assert [o.formatted for o in search_subheadings("6109")] == ["6109.10", "6109.90"]
    assert all(len(o.code) == 6 for o in search_subheadings("61", limit=30))
    assert search_subheadings("cotton t-shirt")[0].code == "610910"
    assert search_subheadings("   ") == []
