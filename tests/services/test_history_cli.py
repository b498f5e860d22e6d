"""The history commands: `python -m db import-history / retract-history`, and `predict --history-db --json`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from db.__main__ import main as db_main
from db.models import HistoryImport, HistoryRetraction
from services import history
from tests.services.test_history import WordEmbedder


@pytest.fixture(autouse=True)
def _fresh_record():
    history.forget_indexes()
    yield
    history.forget_indexes()


def test_import_history_command_checks_imports_and_retracts(db_url, factory, actors, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("description,code\n,610910\nshirt,999999\n", encoding="utf-8")
    assert db_main(["import-history", "--db", db_url, str(bad), "--no-embed"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv:2: empty description" in err and "bad.csv:3: 9999.99" in err and "nothing was imported" in err
    good = tmp_path / "good.csv"
    good.write_text("description,code\ncotton shirt,620520\n", encoding="utf-8")
    assert db_main(["import-history", "--db", db_url, str(good), "--no-embed", "--actor", "bea"]) == 2
    assert "not an active admin" in capsys.readouterr().err
    assert db_main(["import-history", "--db", db_url, str(good), "--no-embed", "--actor", "ada"]) == 0
    assert "imported 1 row(s) of good.csv as history import #1" in capsys.readouterr().out
    assert db_main(["retract-history", "--db", db_url, "1", "--reason", "test file"]) == 0
    with factory() as session:
        imp = session.scalars(select(HistoryImport)).one()
        assert imp.username == "ada" and imp.embedder is None
        assert session.scalars(select(HistoryRetraction)).one().reason == "test file"


class RecordClassifier:
    """A fixed prediction and a word-hashing text tower (what `predict --history-db` needs)."""

    def __init__(self) -> None:
        import torch

        emb = WordEmbedder()
        self.text_tower = SimpleNamespace(
            name=emb.name, dim=emb.dim, encode_text=lambda texts: torch.from_numpy(emb.encode(texts))
        )

    def predict(self, text=None, images=(), top_k=5):
        from tests.test_batch import FakeBatchClassifier

        return FakeBatchClassifier().predict(text, images, top_k)


def test_predict_json_returns_the_record_match(db_url, factory, actors, monkeypatch, capsys):
    from hs_model import __main__ as entry
    from hs_model import cli
    from services.history_file import check_history_file

    with factory.begin() as session:
        checked = check_history_file("firm.csv", b"description,code,sku,importer\nceramic mug,691200,M-1,ACME\n")
        history.import_history(session, actors["admin"], checked, embedder=WordEmbedder())
    monkeypatch.setattr(cli, "load_classifier", lambda args: RecordClassifier())
    assert entry.main(["predict", "--text", "Ceramic mug", "--history-db", db_url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["record"]["code"] == "691200" and out["record"]["how"] == "description"
    assert "line 2 of firm.csv" in out["record"]["summary"] and out["levels"]["6"]
    assert entry.main(["predict", "--text", "a bicycle", "--sku", "m-1", "--importer", "acme", "--history-db",
                       db_url, "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["record"]["how"] == "sku"
    assert entry.main(["predict", "--text", "a bicycle", "--history-db", db_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["record"] is None
