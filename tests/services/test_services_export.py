"""Admin export of the decision log through the service layer."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import select

from db.decision_log import DecisionFilter
from db.models import AuditEvent
from services import decisions
from services.errors import InvalidInput, PermissionDenied
from services.export import export_decisions, export_filename

INJECTION = '=HYPERLINK("x")'


@pytest.fixture
def reviewed(factory, actors, item_id):
    with factory.begin() as s:
        decisions.submit(s, actors["broker"], item_id, "610910", INJECTION)
        decisions.correct(s, actors["reviewer"], item_id, "610990", "+blend")
    return item_id


@pytest.mark.parametrize("role", ["broker", "reviewer", None])
def test_only_admins_export(factory, actors, reviewed, role):
    with factory.begin() as s, pytest.raises(PermissionDenied, match="sign in" if role is None else "Only admins"):
        export_decisions(s, actors.get(role) if role else None, None, "csv")


def test_export_formats_filters_and_audit(factory, actors, reviewed):
    admin = actors["admin"]
    with factory.begin() as s:
        data = export_decisions(s, admin, DecisionFilter(kinds=("corrected",)), "csv")
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        assert [(r["kind"], r["code"], r["comment"], r["username"]) for r in rows] == [
            ("corrected", '="6109.90"', "'+blend", "rey")
        ]
        lines = export_decisions(s, admin, DecisionFilter(kinds=("submitted",)), "jsonl").decode().splitlines()
        assert [json.loads(line)["comment"] for line in lines] == [INJECTION]
        assert export_decisions(s, admin, None, "parquet").startswith(b"PAR1")
        with pytest.raises(InvalidInput, match="format"):
            export_decisions(s, admin, None, "xlsx")
    with factory() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "export").order_by(AuditEvent.id)).all()
        assert [(e.username, e.detail["format"], e.detail["rows"]) for e in events] == [
            ("ada", "csv", 1),
            ("ada", "jsonl", 1),
            ("ada", "parquet", 2),
        ]
        assert events[0].detail["filters"] == {"kinds": ["corrected"]}
    assert export_filename("csv").startswith("hs-decisions-") and export_filename("csv").endswith(".csv")
