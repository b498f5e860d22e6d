"""Concurrent submissions and reviews through the real services lose nothing and surface no lock errors.

A small run of ``scripts/concurrency_check.py`` by default; the full 8 workers x 500 items under ``slow``.
"""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from db import queries
from db.engine import make_engine, make_session_factory
from db.testing import fresh_database
from scripts import concurrency_check as cc


def assert_clean(run: dict, workers: int, per_worker: int, race_items: int) -> None:
    assert run["ok"], run["problems"]
    assert run["errors"] == {} and run["locked_errors"] == 0, run["error_samples"]
    items = workers * per_worker
    assert run["counts"]["line_items"] == items
    assert run["counts"]["predictions"] == items
    assert run["counts"]["decisions"] == 2 * items  # submitted + approved/corrected
    assert run["counts"]["audit_events"] == 2 * items
    assert run["transactions"] == 3 * items
    assert run["race"] == {
        "items": race_items,
        "approvals_won": race_items,
        "refused": (workers - 1) * race_items,
        "errors": {},
    }


def test_threads_on_sqlite(tmp_path):
    report = cc.check(f"sqlite:///{tmp_path / 'cc.sqlite3'}", ["threads"], workers=4, per_worker=25, race_items=10)
    assert report["ok"]
    assert report["runs"][0]["counts"]["integrity_check"] == "ok"
    assert_clean(report["runs"][0], 4, 25, 10)


def test_processes_on_sqlite(tmp_path):
    report = cc.check(f"sqlite:///{tmp_path / 'cc.sqlite3'}", ["processes"], workers=3, per_worker=10, race_items=5)
    assert_clean(report["runs"][0], 3, 10, 5)


@pytest.mark.postgres
def test_threads_and_processes_on_postgres(tmp_path):
    with fresh_database("postgres", tmp_path) as url:
        report = cc.check(url, ["threads", "processes"], workers=4, per_worker=25, race_items=10)
    for run in report["runs"]:
        assert_clean(run, 4, 25, 10)


def test_the_verifier_notices_an_extra_decision(tmp_path):
    """The check is only worth its figures if it fails on a database that disagrees with the callers."""
    url = f"sqlite:///{tmp_path / 'cc.sqlite3'}"
    cc.check(url, ["threads"], workers=1, per_worker=1, race_items=0)  # migrates
    plan = cc.setup(url, "sabotage", 1, 0)
    plan = cc.Plan(url, "sabotage", 2, plan.brokers, plan.reviewers, ())
    results = cc.run_threads(plan, 1)
    assert cc.verify(url, plan, results, 1)["problems"] == []
    item_id = next(iter(results[0].items))
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:  # a decision no caller was told about
        queries.add_decision(
            session, line_item_id=item_id, kind="rejected", code=None, comment="", user_id=plan.reviewers[0].user_id,
            role="reviewer",
        )  # fmt: skip
    engine.dispose()
    problems = cc.verify(url, plan, results, 1)["problems"]
    assert any("decision ids differ" in p for p in problems)
    assert any("derived states disagree" in p for p in problems)
    assert any("without exactly one audit event" in p for p in problems)


def test_lock_errors_get_their_own_bucket():
    locked = OperationalError("INSERT ...", {}, Exception("database is locked"))
    assert cc.error_key(locked) == "database is locked"
    assert cc.error_key(ValueError("x")) == "ValueError"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_full_8_workers_x_500(tmp_path, backend):
    with fresh_database(backend, tmp_path) as url:
        report = cc.check(url, ["threads", "processes"], workers=8, per_worker=500, race_items=20)
    for run in report["runs"]:
        print(cc.summary_line(report, run))
        assert_clean(run, 8, 500, 20)
