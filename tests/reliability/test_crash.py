"""SIGKILL while writing decisions or a checkpoint: the database and the model folder stay whole.

About 5 kills per target by default (``scripts/crash_check.py``), 20 under ``slow``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from db import queries
from db.engine import make_engine, make_session_factory, upgrade
from hs_model import checkpoint
from hs_model.checkpoint import CheckpointError, ModelCard, load_checkpoint, save_checkpoint
from scripts import crash_check as cc


def assert_decisions_survived(result: dict, kills: int) -> None:
    assert result["kills"] == kills and len(result["rounds"]) == kills
    assert result["ok"], [r["problems"] for r in result["rounds"] if r["problems"]]
    assert result["final"]["decisions"] > 0  # the child did write between the kills


def assert_checkpoint_always_loads(result: dict, kills: int) -> None:
    """After every kill the folder loads, and the weights are the ones its card describes (never a torn pair)."""
    assert len(result["rounds"]) == kills
    assert [r for r in result["rounds"] if r["loaded"] is None or r["problems"]] == []


def test_decisions_survive_sigkill(tmp_path):
    result = cc.crash_decisions(5, tmp_path, random.Random(7), max_delay_s=1.0)
    assert_decisions_survived(result, 5)


def test_checkpoint_survives_sigkill(tmp_path):
    result = cc.crash_checkpoint(5, tmp_path, random.Random(7), max_delay_s=0.5)
    assert_checkpoint_always_loads(result, 5)


@pytest.mark.slow
def test_decisions_survive_20_kills(tmp_path):
    assert_decisions_survived(cc.crash_decisions(20, tmp_path, random.Random(20), max_delay_s=1.5), 20)


@pytest.mark.slow
def test_checkpoint_survives_20_kills(tmp_path):
    assert_checkpoint_always_loads(cc.crash_checkpoint(20, tmp_path, random.Random(20), max_delay_s=1.0), 20)


class Crash(BaseException):
    """Stands for SIGKILL at one exact point (a BaseException, so no ``except Exception`` swallows it)."""


def test_a_crash_between_weights_and_card_leaves_a_loadable_folder(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    save_checkpoint(folder, cc.tiny_tensors(torch, 1), cc.tiny_card(ModelCard, 1))
    real_replace = checkpoint.os.replace

    def replace(src, dst):
        if Path(dst).name == checkpoint.CARD:
            raise Crash  # the process dies after the new weights are in place, before the new card is
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(Crash):
        save_checkpoint(folder, cc.tiny_tensors(torch, 2), cc.tiny_card(ModelCard, 2))
    monkeypatch.undo()
    card, tensors = load_checkpoint(folder)  # the old checkpoint, or the new one: either is fine
    assert card.version == f"crash-v{int(tensors['marker'][0])}"


def test_the_crash_checker_notices_broken_records(tmp_path):
    """A checker that always says ok proves nothing: feed it the damage a torn write would leave."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        user = queries.add_user(session, username="bea", role="broker", password_hash="!")
        item = queries.create_line_item(session, description="no prediction", created_by=user.id)
        queries.add_decision(  # approved without a submission, and no audit event
            session, line_item_id=item.id, kind="approved", code="610910", comment="", user_id=user.id, role="broker"
        )
    engine.dispose()
    (tmp_path / "photos" / "ab").mkdir(parents=True)
    (tmp_path / "photos" / "ab" / ("ab" + "0" * 62 + ".png")).write_bytes(b"not what the name promises")
    problems = cc.check_database(url, tmp_path / "photos")["problems"]
    assert any("invalid event sequence" in p for p in problems)
    assert any("0 audit events" in p for p in problems)
    assert any("0 predictions" in p for p in problems)
    assert any("does not hold the bytes" in p for p in problems)


def test_the_checkpoint_checker_notices_a_torn_pair(tmp_path):
    folder = tmp_path / "model"
    save_checkpoint(folder, cc.tiny_tensors(torch, 1), cc.tiny_card(ModelCard, 2))  # card says v2, weights are v1
    assert cc.check_checkpoint(folder)["problems"] == ["torn checkpoint: card crash-v2 with the weights of crash-v1"]
    (folder / checkpoint.WEIGHTS).write_bytes(b"changed")
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)
    assert cc.check_checkpoint(folder)["loaded"] is None
