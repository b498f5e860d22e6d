"""Shared test fixtures (generic; area-specific ones live in the area's own conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest


@dataclass(frozen=True)
class AppDatabase:
    """A migrated SQLite file and a photo folder under ``tmp_path``, as the app sees them through env vars."""

    url: str
    path: Path
    photo_dir: Path
    factory: object  # sqlalchemy sessionmaker

    def add_user(self, username: str, role: str, password: str) -> None:
        """Create a user the way an operator would (``python -m db users create``)."""
        from services.auth import provision_user

        with self.factory.begin() as session:
            provision_user(session, username, password, role, via="test")


@pytest.fixture
def app_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppDatabase]:
    """Point ``HS_DB_URL`` / ``HS_PHOTO_DIR`` at a fresh, migrated database and photo store; unset ``HS_MODEL_DIR``."""
    from db.engine import make_engine, make_session_factory, upgrade

    path = tmp_path / "hs_desk.sqlite3"
    url = f"sqlite:///{path}"
    photo_dir = tmp_path / "photos"
    monkeypatch.setenv("HS_DB_URL", url)
    monkeypatch.setenv("HS_PHOTO_DIR", str(photo_dir))
    monkeypatch.delenv("HS_MODEL_DIR", raising=False)
    upgrade(url)
    engine = make_engine(url)
    yield AppDatabase(url=url, path=path, photo_dir=photo_dir, factory=make_session_factory(engine))
    engine.dispose()


# -- fixtures several test modules share (they used to import them from each other) --------------------------------
@pytest.fixture
def factory(app_db: AppDatabase):
    """Session factory on a fresh, migrated SQLite file (the services and reliability suites override it with one
    parametrised over SQLite and PostgreSQL)."""
    return app_db.factory


@pytest.fixture
def actors(factory) -> dict:
    """One actor per role, 'broker', 'reviewer', 'admin' (placeholder password hashes: no sign-in)."""
    from db.queries import add_user
    from services.auth import Actor

    with factory.begin() as session:
        return {
            role: Actor.from_user(add_user(session, username=f"{role}-user", role=role, password_hash="!"))
            for role in ("broker", "reviewer", "admin")
        }


@pytest.fixture
def model_env(app_db: AppDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A tiny shipped model, the model registry, the feature cache and an (absent) data folder under tmp_path."""
    from tests.test_finetune import TinyClassifier, shipped_checkpoint

    root = tmp_path / "registry"
    shipped = shipped_checkpoint(tmp_path / "shipped")
    monkeypatch.setenv("HS_MODEL_REGISTRY", str(root))
    monkeypatch.setenv("HS_MODEL_DIR", str(shipped))
    monkeypatch.setenv("HS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HS_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("HS_PHOTO_DIR", str(tmp_path / "photos"))
    return SimpleNamespace(root=root, shipped=shipped, classifier=TinyClassifier())


@pytest.fixture
def fake_classifier(monkeypatch: pytest.MonkeyPatch):
    """The app's classifier replaced by a fixed answer (no towers): `tests.test_app_classify.FakeClassifier`."""
    from screens import common
    from tests.test_app_classify import FakeClassifier

    fake = FakeClassifier()
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: fake)
    return fake
