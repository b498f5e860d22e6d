"""Shared test fixtures (generic; area-specific ones live in the area's own conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
