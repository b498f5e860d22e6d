"""Fixtures for the reliability and security suite: databases, one actor per role, a fake classifier, test images."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from db import queries
from db.models import AuditEvent, Decision, LineItem, Photo, Prediction, Shipment
from db.testing import backend, db_url, engine, factory  # noqa: F401 - pytest fixtures
from services.auth import Actor

ROLES = ("broker", "reviewer", "admin")
NAMES = {"broker": "bea", "broker2": "bob", "reviewer": "rey", "reviewer2": "rita", "admin": "ada"}
COUNTED = (LineItem, Prediction, Photo, Decision, AuditEvent, Shipment)


@pytest.fixture(autouse=True)
def cheap_password_hashing(request, monkeypatch):
    """Light argon2 parameters keep the suite fast; tests that ask for ``real_hasher`` keep the defaults."""
    if "real_hasher" in request.fixturenames:
        return
    from argon2 import PasswordHasher

    from services import auth

    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    monkeypatch.setattr(auth, "_dummy_hash", lambda: auth._hasher.hash("dummy"))


@pytest.fixture
def real_hasher():
    """Request this fixture to keep the production argon2 parameters."""


def add_actors(factory) -> dict[str, Actor]:  # noqa: F811 - a session factory, not the fixture
    """Users 'broker', 'broker2', 'reviewer', 'reviewer2', 'admin' ("!" is no hash: they cannot sign in)."""
    out = {}
    with factory.begin() as session:
        for key, name in NAMES.items():
            user = queries.add_user(session, username=name, role=key.rstrip("2"), password_hash="!")
            out[key] = Actor.from_user(user)
    return out


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_db(request, tmp_path_factory):
    """One migrated database (and its actors) for a whole module: for tests that each add their own rows."""
    from db.engine import make_engine, make_session_factory, upgrade
    from db.testing import fresh_database

    with fresh_database(request.param, tmp_path_factory.mktemp("shared-db")) as url:
        upgrade(url)
        eng = make_engine(url)
        session_factory = make_session_factory(eng)
        yield session_factory, add_actors(session_factory)
        eng.dispose()


@pytest.fixture
def actors(factory) -> dict[str, Actor]:  # noqa: F811 - the fixture imported above
    return add_actors(factory)


def new_item(factory, actor: Actor, description: str = "men's cotton t-shirt", submit_as: Actor | None = None) -> int:  # noqa: F811
    """A line item with one prediction (top 6109.10); submitted as 6109.10 by ``submit_as`` when given."""
    from services import decisions

    with factory.begin() as session:
        item = queries.create_line_item(session, description=description, created_by=actor.user_id)
        queries.record_prediction(
            session,
            line_item_id=item.id,
            model_version="fake-v1",
            nomenclature_edition="HS2022",
            latency_ms=1.0,
            needs_review=False,
            candidates=[{"level": 6, "rank": 1, "code": "610910", "description": "Of cotton", "score": 0.8}],
        )
        if submit_as is not None:
            decisions.submit(session, submit_as, item.id, "6109.10")
        return item.id


def row_counts(factory) -> dict[str, int]:  # noqa: F811
    """Rows in every table a refused request must leave alone."""
    with factory() as session:
        return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) for m in COUNTED}


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


class FakeClassifier:
    """Stands in for ``hs_model.predict.Classifier``: a fixed answer, no towers; counts its calls."""

    version = "fake-v1"
    edition = "HS2022"
    card = SimpleNamespace(kind="test")

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, text=None, images=(), top_k=5):
        from hs_model.predict import Candidate, Prediction

        self.calls += 1
        levels = {
            6: [Candidate("610910", 6, "T-shirts, singlets and other vests; of cotton", 0.62)],
            4: [Candidate("6109", 4, "T-shirts, singlets and other vests", 0.70)],
            2: [Candidate("61", 2, "Apparel and clothing accessories; knitted or crocheted", 0.93)],
        }
        modality = "both" if images and text else "image" if images else "text"
        return Prediction(
            model_version=self.version,
            nomenclature_edition=self.edition,
            levels=levels,
            needs_review=False,
            review_threshold=0.5,
            latency_ms=3.0,
            modality=modality,
            gates=(0.5, 0.5),
            embedding=(0.1, 0.2, 0.3),
        )


@pytest.fixture
def fake_classifier() -> FakeClassifier:
    return FakeClassifier()


def encode(image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.fixture
def good_jpeg() -> bytes:
    from PIL import Image

    return encode(Image.new("RGB", (64, 48), (200, 30, 30)), "JPEG")
