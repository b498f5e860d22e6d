"""Concurrency check: workers submit and review line items at once through the real services; nothing may be lost.

    .venv/bin/python scripts/concurrency_check.py --db sqlite:////tmp/cc.sqlite3 --workers 8 --per-worker 500 --json
    .venv/bin/python scripts/concurrency_check.py --db "$(scripts/start_postgres.sh | tail -n 1)" --mode both

Each worker (a thread, or a process with its own engine) repeats, for its own line items: create the item and its
prediction (``db.queries``), ``services.decisions.submit`` as its broker, then ``approve`` (or, one item in four,
``correct``) as its reviewer; one transaction each, through ``db.engine.run_transaction`` as the app does. Then every
worker races to approve the same few submitted items: exactly one approval per item may win.

Afterwards the database is checked against what the callers were told: every line item, prediction, decision and
audit event present exactly once, every decision id a caller received is in the database and no other one is, each
item's derived state (``db.queries.current_state``) agrees with its events, and (SQLite) ``PRAGMA integrity_check``
and ``foreign_key_check`` pass. Errors surfaced to callers are counted by type ("database is locked" separately).
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import random
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file: make db/, services/ and hs_model/ importable
    sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from db import queries  # noqa: E402
from db.engine import make_engine, make_session_factory, run_transaction, upgrade  # noqa: E402
from db.models import AuditEvent, Decision, LineItem, Prediction, Shipment, User  # noqa: E402
from services import decisions  # noqa: E402
from services.auth import Actor  # noqa: E402
from services.errors import InvalidInput  # noqa: E402

log = logging.getLogger("concurrency_check")

# Real HS 2022 subheadings: submissions cycle through them, corrections take the next one.
CODES = ("610910", "610510", "620342", "640399", "851762", "847130", "950300", "420221", "392690", "940360")
SHIPMENTS = 10  # shipments shared by all workers: exercises the concurrent get-or-create


@dataclass
class WorkerResult:
    """What one worker did and was told."""

    worker: int
    items: dict[int, dict[str, Any]] = field(default_factory=dict)  # line_item_id -> expected facts
    transactions: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    race_won: list[int] = field(default_factory=list)
    race_refused: int = 0
    race_errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs; plain data so it pickles into a spawned process."""

    url: str
    run: str
    per_worker: int
    brokers: tuple[Actor, ...]
    reviewers: tuple[Actor, ...]
    race_items: tuple[int, ...]
    sqlite_begin: str = "DEFERRED"  # how SQLite transactions start; the app uses DEFERRED


def session_factory(engine, plan: Plan):
    """The workers' session factory; ``IMMEDIATE`` takes SQLite's write lock at BEGIN (ignored elsewhere)."""
    return make_session_factory(engine.execution_options(sqlite_begin=plan.sqlite_begin))


def error_key(exc: BaseException) -> str:
    """Classify an error surfaced to a caller; lock errors get their own bucket."""
    text = str(exc).lower()
    if "database is locked" in text or "database table is locked" in text or "database is busy" in text:
        return "database is locked"
    return type(exc).__name__


def _valid_code():
    from hs_core.nomenclature import get_nomenclature

    return get_nomenclature().is_valid


def _note_error(result: WorkerResult, exc: BaseException, where: str, bucket: dict[str, int] | None = None) -> None:
    bucket = result.errors if bucket is None else bucket
    key = error_key(exc)
    bucket[key] = bucket.get(key, 0) + 1
    if len(result.error_samples) < 5:
        result.error_samples.append(f"{where}: {type(exc).__name__}: {str(exc)[:300]}")


def one_item(plan: Plan, n: int, i: int, factory, valid, result: WorkerResult) -> None:
    """Create, submit and review one line item: three transactions, as three user actions in the app."""
    broker, reviewer = plan.brokers[n], plan.reviewers[n]
    k = n * plan.per_worker + i
    code = CODES[k % len(CODES)]
    corrected = i % 4 == 3
    expected: dict[str, Any] = {
        "description": f"cc{plan.run}/w{n}/i{i}",
        "code": code,
        "kind": "corrected" if corrected else "approved",
        "final_code": CODES[(k + 1) % len(CODES)] if corrected else code,
        "submitted": None,
        "reviewed": None,
    }

    def create(session):
        shipment = queries.get_or_create_shipment(session, f"cc{plan.run}-S{i % SHIPMENTS}", broker.user_id)
        item = queries.create_line_item(
            session, description=expected["description"], created_by=broker.user_id, shipment_id=shipment.id
        )
        prediction = queries.record_prediction(
            session,
            line_item_id=item.id,
            model_version="cc-fake-v1",
            nomenclature_edition="HS2022",
            latency_ms=1.0,
            needs_review=False,
            candidates=[{"level": 6, "rank": 1, "code": code, "description": "", "score": 0.9}],
        )
        return item.id, prediction.id

    def submit(session):
        formatted = decisions.format_code(code)  # as a broker types it: 6109.10
        return decisions.submit(session, broker, item_id, formatted, f"w{n} i{i}", prediction_id, valid_code=valid)

    def review(session):
        if corrected:
            return decisions.correct(session, reviewer, item_id, expected["final_code"], "cc", valid_code=valid)
        return decisions.approve(session, reviewer, item_id)

    item_id, prediction_id = run_transaction(factory, create)
    result.transactions += 1
    result.items[item_id] = expected
    expected["submitted"] = run_transaction(factory, submit).id
    result.transactions += 1
    expected["reviewed"] = run_transaction(factory, review).id
    result.transactions += 1


def run_worker(plan: Plan, n: int, factory, start: Any, race_start: Any) -> WorkerResult:
    """One worker's whole workload: its own items, then the approval race."""
    valid = _valid_code()
    reviewer = plan.reviewers[n]
    result = WorkerResult(worker=n)
    start.wait()
    t0 = time.perf_counter()
    for i in range(plan.per_worker):
        try:
            one_item(plan, n, i, factory, valid, result)
        except Exception as exc:  # noqa: BLE001 - counted and reported; the check fails on any
            _note_error(result, exc, f"worker {n} item {i}")
    result.seconds = time.perf_counter() - t0

    race_start.wait()
    for item_id in random.Random(n).sample(plan.race_items, len(plan.race_items)):
        try:
            run_transaction(factory, lambda s, item_id=item_id: decisions.approve(s, reviewer, item_id, "race"))
            result.race_won.append(item_id)
        except InvalidInput as exc:
            if "Only submitted items can be reviewed" not in str(exc):
                _note_error(result, exc, f"race item {item_id}", result.race_errors)
            else:
                result.race_refused += 1
        except Exception as exc:  # noqa: BLE001 - counted
            _note_error(result, exc, f"race item {item_id}", result.race_errors)
    return result


def _process_main(plan: Plan, n: int, start, race_start, results) -> None:
    engine = make_engine(plan.url)
    try:
        results.put(run_worker(plan, n, session_factory(engine, plan), start, race_start))
    except BaseException:  # noqa: BLE001 - the parent reports a missing worker
        results.put(WorkerResult(worker=n, errors={"worker crashed": 1}, error_samples=[traceback.format_exc()]))
    finally:
        engine.dispose()


def run_threads(plan: Plan, workers: int) -> list[WorkerResult]:
    engine = make_engine(plan.url)  # one engine shared by all threads, as in the app
    factory = session_factory(engine, plan)
    start, race_start = threading.Barrier(workers), threading.Barrier(workers)
    results: list[WorkerResult | None] = [None] * workers

    def target(n: int) -> None:
        try:
            results[n] = run_worker(plan, n, factory, start, race_start)
        except BaseException:  # noqa: BLE001
            results[n] = WorkerResult(worker=n, errors={"worker crashed": 1}, error_samples=[traceback.format_exc()])

    threads = [threading.Thread(target=target, args=(n,), name=f"cc-worker-{n}") for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    return [r for r in results if r is not None]


def run_processes(plan: Plan, workers: int) -> list[WorkerResult]:
    ctx = multiprocessing.get_context("spawn")
    start, race_start, queue = ctx.Barrier(workers), ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(plan, n, start, race_start, queue)) for n in range(workers)]
    for p in procs:
        p.start()
    results: list[WorkerResult] = []
    while len(results) < len(procs):  # drain before join: a full pipe would block the children
        try:
            results.append(queue.get(timeout=5))
        except Empty:
            if all(p.exitcode is not None for p in procs):  # every worker ended; the missing ones died early
                done = {r.worker for r in results}
                results += [
                    WorkerResult(
                        worker=n, errors={"worker died before reporting": 1}, error_samples=[f"exit {p.exitcode}"]
                    )
                    for n, p in enumerate(procs)
                    if n not in done
                ]
    for p in procs:
        p.join()
    return results


def setup(url: str, run: str, workers: int, race_items: int) -> Plan:
    """Create one broker and one reviewer per worker, plus submitted items for the approval race."""
    engine = make_engine(url)
    factory = make_session_factory(engine)
    brokers, reviewers = [], []

    def add(session, name: str, role: str) -> Actor:
        # "!" is no argon2 hash: these accounts can act through the services but can never sign in.
        return Actor.from_user(queries.add_user(session, username=f"cc{run}-{name}", role=role, password_hash="!"))

    with factory.begin() as session:
        for n in range(workers):
            brokers.append(add(session, f"b{n}", "broker"))
            reviewers.append(add(session, f"r{n}", "reviewer"))
        racer = add(session, "racer", "broker")
    race: list[int] = []
    for r in range(race_items):

        def submitted(session, r=r):
            item = queries.create_line_item(session, description=f"cc{run}/race/{r}", created_by=racer.user_id)
            decisions.submit(session, racer, item.id, CODES[r % len(CODES)])
            return item.id

        race.append(run_transaction(factory, submitted))
    engine.dispose()
    return Plan(url, run, 0, tuple(brokers), tuple(reviewers), tuple(race))


def verify(url: str, plan: Plan, results: list[WorkerResult], workers: int) -> dict[str, Any]:
    """Compare the database with what every caller was told. Returns counts and a list of problems."""
    problems: list[str] = []
    expected: dict[int, dict[str, Any]] = {}
    for r in results:
        expected.update(r.items)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    prefix = f"cc{plan.run}/w"
    with factory() as session:
        items = session.execute(
            select(LineItem.id, LineItem.description).where(LineItem.description.like(prefix + "%"))
        ).all()
        descriptions = Counter(d for _, d in items)
        dupes = [d for d, c in descriptions.items() if c > 1]
        if dupes:
            problems.append(f"{len(dupes)} line items stored more than once, e.g. {dupes[:3]}")
        stored_ids = {i for i, _ in items}
        if stored_ids - set(expected):
            # Written but the caller never heard back (only legitimate when the caller saw an error).
            problems.append(f"{len(stored_ids - set(expected))} line items stored that no caller was told about")
        if set(expected) - stored_ids:
            problems.append(f"{len(set(expected) - stored_ids)} line items a caller was told about are missing")
        item_ids = sorted(stored_ids)

        predictions = Counter(
            session.scalars(select(Prediction.line_item_id).where(Prediction.line_item_id.in_(item_ids)))
        )
        bad_predictions = [i for i in item_ids if predictions.get(i) != 1]
        if bad_predictions:
            problems.append(f"{len(bad_predictions)} items without exactly one prediction, e.g. {bad_predictions[:3]}")

        rows = session.scalars(select(Decision).where(Decision.line_item_id.in_(item_ids))).all()
        stored_decisions = {d.id: d for d in rows}
        told = {facts[k] for facts in expected.values() for k in ("submitted", "reviewed") if facts[k] is not None}
        if set(stored_decisions) != told:
            problems.append(
                f"decision ids differ from those returned to callers: {len(set(stored_decisions) - told)} extra, "
                f"{len(told - set(stored_decisions))} missing"
            )

        user_ids = [a.user_id for a in (*plan.brokers, *plan.reviewers)]
        audits = session.scalars(
            select(AuditEvent).where(AuditEvent.user_id.in_(user_ids), AuditEvent.action.in_(("submission", "review")))
        ).all()
        audits = [a for a in audits if a.detail.get("line_item_id") in stored_ids]  # the race has its own
        audit_per_decision = Counter(a.detail.get("decision_id") for a in audits)
        missing_audit = [d for d in stored_decisions if audit_per_decision.get(d) != 1]
        if missing_audit:
            problems.append(f"{len(missing_audit)} decisions without exactly one audit event, e.g. {missing_audit[:3]}")

        state_mismatches = []
        for item_id in item_ids:
            facts = expected.get(item_id)
            state = queries.current_state(session, item_id)
            if facts is None or facts["reviewed"] is None:
                continue
            got = (
                state.status,
                state.final_code,
                state.submitted_code,
                [d.id for d in state.history],
                [d.kind for d in state.history],
            )
            want = (
                facts["kind"],
                facts["final_code"],
                facts["code"],
                [facts["submitted"], facts["reviewed"]],
                ["submitted", facts["kind"]],
            )
            if got != want:
                state_mismatches.append((item_id, got, want))
        if state_mismatches:
            problems.append(f"{len(state_mismatches)} derived states disagree with events, e.g. {state_mismatches[:2]}")

        winners = Counter(item_id for r in results for item_id in r.race_won)
        race_bad = []
        for item_id in plan.race_items:
            kinds = [d.kind for d in queries.current_state(session, item_id).history]
            if kinds != ["submitted", "approved"] or winners.get(item_id) != 1:
                race_bad.append((item_id, kinds, winners.get(item_id, 0)))
        if race_bad:
            problems.append(f"approval race: {len(race_bad)} items not approved exactly once, e.g. {race_bad[:3]}")

        counts = {
            "line_items": len(item_ids),
            "predictions": sum(predictions.values()),
            "decisions": len(stored_decisions),
            "audit_events": len(audits),
            "shipments": session.scalar(
                select(func.count()).select_from(Shipment).where(Shipment.reference.like(f"cc{plan.run}-S%"))
            ),
        }
        if session.get_bind().dialect.name == "sqlite":
            integrity = session.connection().exec_driver_sql("PRAGMA integrity_check").scalar()
            fk_violations = session.connection().exec_driver_sql("PRAGMA foreign_key_check").all()
            counts["integrity_check"] = integrity
            if integrity != "ok" or fk_violations:
                problems.append(f"integrity_check={integrity!r}, foreign key violations={len(fk_violations)}")
        counts["users"] = session.scalar(
            select(func.count()).select_from(User).where(User.username.like(f"cc{plan.run}-%"))
        )
    engine.dispose()
    return {"counts": counts, "problems": problems}


def run_mode(
    url: str, mode: str, workers: int, per_worker: int, race_items: int, sqlite_begin: str = "DEFERRED"
) -> dict[str, Any]:
    """Set up, run the workers in ``mode``, verify; returns the figures of one run."""
    run = uuid.uuid4().hex[:8]
    plan = setup(url, run, workers, race_items)
    plan = Plan(plan.url, run, per_worker, plan.brokers, plan.reviewers, plan.race_items, sqlite_begin)
    t0 = time.perf_counter()
    results = (run_threads if mode == "threads" else run_processes)(plan, workers)
    wall = time.perf_counter() - t0
    if len(results) != workers:
        raise RuntimeError(f"{workers - len(results)} workers did not report")
    checked = verify(url, plan, results, workers)
    errors: Counter[str] = Counter()
    race_errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
        race_errors.update(r.race_errors)
    seconds = max(r.seconds for r in results)  # all workers start at one barrier: the slowest one's time
    c = checked["counts"]
    rows = c["line_items"] + c["predictions"] + c["decisions"] + c["audit_events"] + c["shipments"]
    problems = list(checked["problems"])
    if errors:
        problems.append(f"errors surfaced to callers: {dict(errors)}")
    if race_errors:
        problems.append(f"errors in the approval race: {dict(race_errors)}")
    return {
        "mode": mode,
        "sqlite_begin": sqlite_begin,
        "workers": workers,
        "per_worker": per_worker,
        "items": c["line_items"],
        "rows_written": rows,
        "transactions": sum(r.transactions for r in results),
        "seconds": round(seconds, 2),
        "wall_seconds": round(wall, 2),
        "rows_per_s": round(rows / seconds, 1) if seconds else None,
        "transactions_per_s": round(sum(r.transactions for r in results) / seconds, 1) if seconds else None,
        "errors": dict(errors),
        "locked_errors": errors.get("database is locked", 0) + race_errors.get("database is locked", 0),
        "race": {
            "items": race_items,
            "approvals_won": sum(len(r.race_won) for r in results),
            "refused": sum(r.race_refused for r in results),
            "errors": dict(race_errors),
        },
        "counts": c,
        "error_samples": [s for r in results for s in r.error_samples][:5],
        "problems": problems,
        "ok": not problems,
    }


def check(
    url: str, modes: list[str], workers: int, per_worker: int, race_items: int = 20, sqlite_begin: str = "DEFERRED"
) -> dict[str, Any]:
    """Run the check in each mode against ``url`` (migrated first). Returns the JSON report."""
    upgrade(url)
    runs = [run_mode(url, mode, workers, per_worker, race_items, sqlite_begin) for mode in modes]
    u = make_url(url)
    return {
        "db": u.render_as_string(hide_password=True),
        "backend": u.get_backend_name(),
        "runs": runs,
        "ok": all(r["ok"] for r in runs),
    }


def summary_line(report: dict[str, Any], run: dict[str, Any]) -> str:
    """The figure, one line: rows, errors, seconds, rows/s."""
    sqlite_note = f" (BEGIN {run['sqlite_begin']})" if report["backend"] == "sqlite" else ""
    return (
        f"{report['backend']} {run['mode']}{sqlite_note}: {run['workers']} workers x {run['per_worker']} items -> "
        f"{run['rows_written']} rows ({run['counts']['decisions']} decisions, {run['transactions']} transactions) "
        f"in {run['seconds']:.1f} s = {run['rows_per_s']:.0f} rows/s; errors {sum(run['errors'].values())} "
        f"(database is locked: {run['locked_errors']}); race: {run['race']['approvals_won']}/{run['race']['items']} "
        f"approved once, {run['race']['refused']} refused; {'OK' if run['ok'] else 'FAILED: ' + '; '.join(run['problems'])}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLAlchemy URL (default: a new SQLite file in a temporary folder)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--per-worker", type=int, default=500)
    parser.add_argument("--mode", choices=("threads", "processes", "both"), default="both")
    parser.add_argument("--race-items", type=int, default=20, help="submitted items every worker tries to approve")
    parser.add_argument(
        "--sqlite-begin",
        choices=("deferred", "immediate"),
        default="deferred",
        help="how SQLite write transactions start (the app: deferred)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.per_worker < 1 or args.race_items < 0:
        parser.error("--workers and --per-worker must be positive, --race-items not negative")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    modes = ["threads", "processes"] if args.mode == "both" else [args.mode]
    with tempfile.TemporaryDirectory(prefix="hs-cc-") as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'concurrency.sqlite3'}"
        report = check(url, modes, args.workers, args.per_worker, args.race_items, args.sqlite_begin.upper())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for run in report["runs"]:
            print(summary_line(report, run))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
