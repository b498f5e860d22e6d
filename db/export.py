"""Render the decision log as CSV (formula-safe), JSONL or Parquet, and record the export."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.orm import Session

from db.decision_log import LOG_COLUMNS, DecisionFilter, decision_log
from db.queries import add_audit_event
from hs_core.text import excel_text_code, neutralise_formula

ExportFormat = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}
CODE_COLUMNS = frozenset({"code", "model_top_code"})


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float):
        return repr(value)
    return neutralise_formula(str(value))


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _parquet_schema():
    import pyarrow as pa

    string_cols = {
        "kind",
        "code",
        "comment",
        "username",
        "role",
        "line_ref",
        "shipment_reference",
        "description",
        "model_version",
        "nomenclature_edition",
        "model_top_code",
        "broker_facts",
        "history_import",
        "precedents",
    }
    special = {
        "decision_id": pa.int64(),
        "decided_at": pa.timestamp("us", tz="UTC"),
        "line_item_id": pa.int64(),
        "prediction_id": pa.int64(),
        "model_top_score": pa.float64(),
        "needs_review": pa.bool_(),
    }
    assert set(special) | string_cols == set(LOG_COLUMNS)
    return pa.schema([(name, special.get(name, pa.string())) for name in LOG_COLUMNS])


def render_rows(rows: Iterable[Mapping[str, Any]], fmt: str) -> bytes:
    """Serialise decision-log rows (keys: :data:`LOG_COLUMNS`) to bytes.

    An empty ``rows`` still gives a valid file: CSV with its header, an empty JSONL file, or a
    Parquet file carrying the schema. Only CSV cells are neutralised, and CSV codes are written as text a
    spreadsheet keeps (`excel_text_code`); JSONL and Parquet keep the values (6 digits).

    Raises:
        ValueError: Unknown format.
    """
    rows = list(rows)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(LOG_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    excel_text_code(row[col]) if col in CODE_COLUMNS and row.get(col) else _csv_cell(row.get(col))
                    for col in LOG_COLUMNS
                ]
            )
        return buf.getvalue().encode("utf-8")
    if fmt == "jsonl":
        lines = (json.dumps({c: _json_value(row.get(c)) for c in LOG_COLUMNS}, ensure_ascii=False) for row in rows)
        return "".join(line + "\n" for line in lines).encode("utf-8")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{c: row.get(c) for c in LOG_COLUMNS} for row in rows], schema=_parquet_schema())
        out = io.BytesIO()
        pq.write_table(table, out)
        return out.getvalue()
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")


def export_decision_log(session: Session, filters: DecisionFilter | None, fmt: str) -> tuple[bytes, int]:
    """Query the filtered decision log and render it.

    Returns:
        ``(data, row_count)``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    rows = decision_log(session, filters)
    return render_rows(rows, fmt), len(rows)


def record_export(
    session: Session,
    *,
    fmt: str,
    filters: DecisionFilter | None,
    rows: int,
    user_id: int | None,
    username: str | None,
    via: str,
    out: str | None = None,
) -> None:
    """Append the ``export`` audit event (who, format, filters, row count, destination)."""
    detail: dict[str, Any] = {"format": fmt, "filters": (filters or DecisionFilter()).to_dict(), "rows": rows}
    detail["via"] = via
    if out is not None:
        detail["out"] = out
    add_audit_event(session, action="export", user_id=user_id, username=username, detail=detail)
