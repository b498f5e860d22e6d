"""Decision-log export: filters, CSV formula neutralisation, JSONL/Parquet fidelity, and the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from db import queries
from db.__main__ import main as cli_main
from db.decision_log import LOG_COLUMNS, DecisionFilter
from db.engine import make_engine, make_session_factory
from db.export import export_decision_log, render_rows
from db.models import AuditEvent, User
from hs_core.settings import REPO_ROOT
from hs_core.text import neutralise_formula as neutralise_cell

INJECTION = '=HYPERLINK("x")'


def _seed(session) -> dict[str, int]:
    broker = queries.add_user(session, username="bea", role="broker", password_hash="x")
    reviewer = queries.add_user(session, username="rey", role="reviewer", password_hash="x")
    ship = queries.get_or_create_shipment(session, "SHP-9", created_by=broker.id)
    ids = {}
    for name, code, ship_id, model in [("shirt", "610910", ship.id, "m1"), ("bolt", "731815", None, "m2")]:
        item = queries.create_line_item(session, description=name, created_by=broker.id, shipment_id=ship_id)
        pred = queries.record_prediction(
            session,
            line_item_id=item.id,
            model_version=model,
            nomenclature_edition="HS2022",
            latency_ms=3.0,
            needs_review=name == "bolt",
            candidates=[{"level": 6, "rank": 1, "code": code, "score": 0.6}],
        )
        common = {
            "line_item_id": item.id,
            "prediction_id": pred.id,
            "model_version": model,
            "nomenclature_edition": "HS2022",
        }
        queries.add_decision(
            session, kind="submitted", code=code, comment=INJECTION, user_id=broker.id, role="broker", **common
        )
        queries.add_decision(
            session, kind="approved", code=code, comment="-ok", user_id=reviewer.id, role="reviewer", **common
        )
        ids[name] = item.id
    return ids


def test_filters_select_exactly_the_matching_rows(factory):
    with factory.begin() as session:
        ids = _seed(session)
    today = datetime.now(UTC).date()
    cases = [
        (DecisionFilter(), 4),
        (DecisionFilter(kinds=("approved",)), 2),
        (DecisionFilter(username="REY"), 2),
        (DecisionFilter(code_prefix="61"), 2),
        (DecisionFilter(code_prefix="6109", kinds=("submitted",)), 1),
        (DecisionFilter(shipment_reference="SHP-9"), 2),
        (DecisionFilter(model_version="m2"), 2),
        (DecisionFilter(since=today, until=today), 4),
        (DecisionFilter(since=today + timedelta(days=1)), 0),
        (DecisionFilter(until=today - timedelta(days=1)), 0),
        (DecisionFilter(line_item_id=ids["bolt"]), 2),
    ]
    with factory() as session:
        for flt, expected in cases:
            rows = queries.decision_log(session, flt)
            assert len(rows) == expected, flt
        row = queries.decision_log(session, DecisionFilter(code_prefix="73", kinds=("approved",)))[0]
    assert list(row) == list(LOG_COLUMNS)
    assert row["username"] == "rey" and row["role"] == "reviewer" and row["shipment_reference"] is None
    assert (row["model_top_code"], row["model_top_score"], row["needs_review"]) == ("731815", 0.6, True)
    assert row["decided_at"].tzinfo is not None


@pytest.mark.parametrize("kwargs", [{"kinds": ("maybe",)}, {"code_prefix": "61%"}])
def test_bad_filters_are_refused(kwargs):
    with pytest.raises(ValueError):
        DecisionFilter(**kwargs)


def test_csv_neutralises_formulas_jsonl_and_parquet_keep_them(factory):
    with factory.begin() as session:
        _seed(session)
    flt = DecisionFilter(kinds=("submitted",), code_prefix="61")
    with factory() as session:
        csv_bytes, n_csv = export_decision_log(session, flt, "csv")
        jsonl_bytes, n_jsonl = export_decision_log(session, flt, "jsonl")
        parquet_bytes, _ = export_decision_log(session, flt, "parquet")
    assert n_csv == n_jsonl == 1
    rows = list(csv.DictReader(io.StringIO(csv_bytes.decode("utf-8"))))
    assert len(rows) == 1 and rows[0]["comment"] == "'" + INJECTION and rows[0]["code"] == '="6109.10"'
    records = [json.loads(line) for line in jsonl_bytes.decode("utf-8").splitlines()]
    assert len(records) == 1 and records[0]["comment"] == INJECTION and list(records[0]) == list(LOG_COLUMNS)
    table = pq.read_table(io.BytesIO(parquet_bytes))
    assert table.num_rows == 1 and table.column("comment").to_pylist() == [INJECTION]
    assert table.schema.field("decided_at").type.tz == "UTC"


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_neutralise_cell(value):
    assert neutralise_cell(value) == "'" + value
    assert neutralise_cell("plain -1") == "plain -1"


def test_empty_exports_are_valid():
    assert render_rows([], "csv").decode().strip() == ",".join(LOG_COLUMNS)
    assert render_rows([], "jsonl") == b""
    table = pq.read_table(io.BytesIO(render_rows([], "parquet")))
    assert table.num_rows == 0 and table.schema.names == list(LOG_COLUMNS)
    with pytest.raises(ValueError):
        render_rows([], "xlsx")


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "db", *args],
        cwd=REPO_ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_export_on_brand_new_db_writes_header_only(tmp_path: Path):
    db_path = tmp_path / "new.sqlite3"
    out = tmp_path / "log.csv"
    result = _cli("export", "--db", f"sqlite:///{db_path}", "--format", "csv", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8").splitlines() == [",".join(LOG_COLUMNS)]
    engine = make_engine(f"sqlite:///{db_path}")
    try:
        with make_session_factory(engine)() as session:
            event = session.scalars(select(AuditEvent).where(AuditEvent.action == "export")).one()
        assert event.detail["rows"] == 0 and event.detail["format"] == "csv" and event.detail["via"] == "cli"
    finally:
        engine.dispose()


def test_cli_export_filters_and_formats(tmp_path: Path, capsys):
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    assert cli_main(["upgrade", "--db", url]) == 0
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        _seed(session)
    engine.dispose()
    out = tmp_path / "log.jsonl"
    argv = ["export", "--db", url, "--format", "jsonl", "--out", str(out), "--status", "approved"]
    assert cli_main([*argv, "--code-prefix", "73", "--user", "rey", "--since", "2000-01-01"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["kind"], r["code"]) for r in records] == [("approved", "731815")]
    assert cli_main(["export", "--db", url, "--format", "parquet", "--out", str(tmp_path / "p.parquet")]) == 0
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 4
    assert "wrote 4 decision(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--db", "nosuchdialect://x", "--format", "csv", "--out", "{tmp}/a.csv"], "bad database URL"),
        (["--db", "sqlite:///{tmp}/missing/dir/x.db", "--format", "csv", "--out", "{tmp}/a.csv"], "cannot open"),
        (
            ["--db", "sqlite:///{tmp}/x.db", "--format", "csv", "--out", "{tmp}/a.csv", "--since", "yesterday"],
            "bad date",
        ),
        (["--db", "sqlite:///{tmp}/x.db", "--format", "csv", "--out", "{tmp}/nope/a.csv"], "does not exist"),
        (["--db", "sqlite:///{tmp}/x.db", "--format", "csv", "--out", "{tmp}"], "is a directory"),
        (["--db", "sqlite:///{tmp}/x.db", "--format", "xls", "--out", "{tmp}/a.csv"], "invalid choice"),
        (
            ["--db", "sqlite:///{tmp}/x.db", "--format", "csv", "--out", "{tmp}/a.csv", "--code-prefix", "6a"],
            "code prefix",
        ),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(tmp_path: Path, capsys, args, message):
    try:
        rc = cli_main(["export", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_cli_never_prints_a_password_from_the_url(capsys):
    assert (
        cli_main(["export", "--db", "postgresql+psycopg://u:s3cret@127.0.0.1:1/db", "--format", "csv", "--out", "-"])
        == 2
    )
    err = capsys.readouterr().err
    assert "cannot open database" in err and "s3cret" not in err


def test_cli_users_create_reads_stdin_and_never_echoes(tmp_path: Path, capsys, monkeypatch):
    url = f"sqlite:///{tmp_path / 'u.sqlite3'}"
    secret = "correct horse battery"
    result = _cli(
        "users",
        "create",
        "--db",
        url,
        "--username",
        "Admin",
        "--role",
        "admin",
        "--password-stdin",
        stdin=secret + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            user = session.scalars(select(User)).one()
            events = session.scalars(select(AuditEvent)).all()
        assert (user.username, user.role) == ("admin", "admin") and secret not in user.password_hash
        assert [e.action for e in events] == ["user_created"] and secret not in json.dumps(events[0].detail)
    finally:
        engine.dispose()
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert cli_main(["users", "create", "--db", url, "--username", "bob", "--role", "broker"]) == 2
    assert "at least 10 characters" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(secret + "\n"))
    assert cli_main(["users", "create", "--db", url, "--username", "ADMIN", "--role", "broker"]) == 2
    assert "taken" in capsys.readouterr().err
