"""Fixtures for service tests: a fresh migrated database, one signed-in actor per role, a classified item."""

from __future__ import annotations

import pytest

from db import queries
from db.testing import backend, db_url, engine, factory  # noqa: F401 - pytest fixtures
from services.auth import Actor

ROLES_AND_NAMES = {"broker": "bea", "broker2": "bob", "reviewer": "rey", "reviewer2": "rita", "admin": "ada"}


@pytest.fixture
def actors(factory) -> dict[str, Actor]:  # noqa: F811 - the fixture imported above
    """Actors keyed 'broker', 'broker2', 'reviewer', 'reviewer2', 'admin' (placeholder hashes: no sign-in)."""
    out = {}
    with factory.begin() as session:
        for key, name in ROLES_AND_NAMES.items():
            user = queries.add_user(session, username=name, role=key.rstrip("2"), password_hash="!")
            out[key] = Actor.from_user(user)
    return out


@pytest.fixture
def item_id(factory, actors) -> int:  # noqa: F811 - the fixture imported above
    """A line item with one prediction (top 6109.10), not yet submitted."""
    with factory.begin() as session:
        item = queries.create_line_item(
            session, description="men's cotton t-shirt", created_by=actors["broker"].user_id
        )
        queries.record_prediction(
            session,
            line_item_id=item.id,
            model_version="zs-test",
            nomenclature_edition="HS2022",
            latency_ms=10.0,
            needs_review=False,
            candidates=[
                {"level": 6, "rank": 1, "code": "610910", "description": "Of cotton", "score": 0.8},
                {"level": 6, "rank": 2, "code": "610990", "description": "Of other textiles", "score": 0.1},
            ],
        )
        return item.id


@pytest.fixture(autouse=True)
def cheap_password_hashing(request, monkeypatch):
    """Use light argon2 parameters so tests stay fast; tests marked ``real_hasher`` keep the defaults."""
    if "real_hasher" in request.fixturenames:
        return
    from argon2 import PasswordHasher

    from services import auth

    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    monkeypatch.setattr(auth, "_dummy_hash", lambda: auth._hasher.hash("dummy"))


@pytest.fixture
def real_hasher():
    """Request this fixture to keep the production argon2 parameters."""
