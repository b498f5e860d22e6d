"""Several threads writing the same database at once lose nothing and never surface 'database is locked'."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from db import queries
from db.engine import run_transaction
from db.models import AuditEvent, Decision, LineItem

THREADS, ROWS = 4, 50


def test_concurrent_writers_lose_nothing(factory):
    with factory.begin() as session:
        user_id = queries.add_user(session, username="bulk", role="broker", password_hash="x").id
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(ROWS):
                # Read first, then write: the pattern that makes SQLite give up at once without retries.
                def unit(session, i=i):
                    shipment = queries.get_or_create_shipment(session, f"S-{i % 5}", created_by=user_id)
                    item = queries.create_line_item(
                        session, description=f"t{n}-{i}", created_by=user_id, shipment_id=shipment.id
                    )
                    queries.add_decision(
                        session,
                        line_item_id=item.id,
                        kind="submitted",
                        code="610910",
                        comment="",
                        user_id=user_id,
                        role="broker",
                    )
                    queries.add_audit_event(session, action="submission", user_id=user_id, detail={"n": n, "i": i})

                run_transaction(factory, unit)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    with factory() as session:
        for model in (LineItem, Decision, AuditEvent):
            assert session.scalar(select(func.count()).select_from(model)) == THREADS * ROWS
        descriptions = set(session.scalars(select(LineItem.description)))
        assert descriptions == {f"t{n}-{i}" for n in range(THREADS) for i in range(ROWS)}
