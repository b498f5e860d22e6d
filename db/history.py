"""Classification history queries: imports and their rows (append-only), retractions, the record's matches, and the
reviewed decisions the record is made of."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from db.models import Decision, HistoryImport, HistoryMatch, HistoryRetraction, HistoryRow, LineItem, User


@dataclass(frozen=True)
class ImportSummary:
    """One import as the admin screen lists it."""

    id: int
    file_name: str
    sha256: str
    row_count: int
    edition: str
    photos_file: str | None
    username: str | None
    via: str
    created_at: datetime
    retracted_at: datetime | None
    retracted_by: str | None
    retraction_reason: str | None


def add_import(session: Session, **values: Any) -> HistoryImport:
    """Append an import record (its rows follow with `add_rows`)."""
    row = HistoryImport(**values)
    session.add(row)
    session.flush()
    return row


def add_rows(session: Session, import_id: int, rows: Sequence[dict[str, Any]], chunk: int = 5_000) -> int:
    """Append an import's rows in bulk (executemany, chunked); returns how many."""
    for start in range(0, len(rows), chunk):
        session.execute(insert(HistoryRow), [{**r, "import_id": import_id} for r in rows[start : start + chunk]])
    return len(rows)


def find_import_by_sha256(session: Session, sha256: str) -> HistoryImport | None:
    """The live (not retracted) import of a file with this content hash, if any."""
    retracted = select(HistoryRetraction.import_id)
    return session.scalars(
        select(HistoryImport)
        .where(HistoryImport.sha256 == sha256, HistoryImport.id.not_in(retracted))
        .order_by(HistoryImport.id)
        .limit(1)
    ).first()


def list_imports(session: Session) -> list[ImportSummary]:
    """Every import, newest first, with its retraction if there is one."""
    stmt = (
        select(HistoryImport, HistoryRetraction)
        .outerjoin(HistoryRetraction, HistoryRetraction.import_id == HistoryImport.id)
        .order_by(HistoryImport.id.desc())
    )
    return [
        ImportSummary(
            imp.id,
            imp.file_name,
            imp.sha256,
            imp.row_count,
            imp.edition,
            imp.photos_file,
            imp.username,
            imp.via,
            imp.created_at,
            ret.created_at if ret else None,
            ret.username if ret else None,
            ret.reason if ret else None,
        )
        for imp, ret in session.execute(stmt)
    ]


def add_retraction(session: Session, import_id: int, *, user_id: int | None, username: str | None, reason: str) -> None:
    """Append the retraction of an import (at most one: the unique constraint refuses a second)."""
    session.add(HistoryRetraction(import_id=import_id, user_id=user_id, username=username, reason=reason))
    session.flush()


def retraction_of(session: Session, import_id: int) -> HistoryRetraction | None:
    return session.scalars(select(HistoryRetraction).where(HistoryRetraction.import_id == import_id)).first()


def retractions_after(session: Session, after_id: int) -> list[tuple[int, int]]:
    """``(retraction id, import id)`` of retractions newer than a cursor, oldest first."""
    stmt = select(HistoryRetraction.id, HistoryRetraction.import_id).where(HistoryRetraction.id > after_id)
    return [(rid, iid) for rid, iid in session.execute(stmt.order_by(HistoryRetraction.id))]


@dataclass(frozen=True)
class RecordRow:
    """A live imported row with what the matcher needs."""

    id: int
    import_id: int
    file_name: str
    imported_at: datetime
    line_no: int
    description: str
    normalised: str
    code: str
    hs6: str
    sku: str | None
    importer: str | None
    declared_on: str | None
    embedding: bytes | None
    embedder: str | None


def live_rows_after(session: Session, after_id: int, limit: int = 50_000) -> list[RecordRow]:
    """Rows of imports not retracted, with an id above a cursor, oldest first."""
    stmt = (
        select(HistoryRow, HistoryImport.file_name, HistoryImport.created_at, HistoryImport.embedder)
        .join(HistoryImport, HistoryImport.id == HistoryRow.import_id)
        .where(HistoryRow.id > after_id, HistoryRow.import_id.not_in(select(HistoryRetraction.import_id)))
        .order_by(HistoryRow.id)
        .limit(limit)
    )
    return [
        RecordRow(
            r.id,
            r.import_id,
            name,
            at,
            r.line_no,
            r.description,
            r.normalised,
            r.code,
            r.hs6,
            r.sku,
            r.importer,
            r.declared_on,
            r.embedding,
            embedder,
        )  # fmt: skip
        for r, name, at, embedder in session.execute(stmt)
    ]


def max_row_id(session: Session) -> int:
    return session.scalar(select(func.max(HistoryRow.id))) or 0


@dataclass(frozen=True)
class ReviewedRecord:
    """The latest decision of a line item that changed after a cursor (approved/corrected ones are the record)."""

    decision_id: int
    line_item_id: int
    description: str
    code: str | None
    kind: str
    decided_at: datetime
    reviewer: str


def latest_decisions_after(session: Session, after_decision_id: int, limit: int = 20_000) -> list[ReviewedRecord]:
    """Items whose latest decision is newer than a cursor, with that decision and who made it, oldest first."""
    last_d = (
        select(Decision.line_item_id, func.max(Decision.id).label("did")).group_by(Decision.line_item_id).subquery()
    )
    stmt = (
        select(Decision, LineItem.description, User.username)
        .join(last_d, last_d.c.did == Decision.id)
        .join(LineItem, LineItem.id == Decision.line_item_id)
        .join(User, User.id == Decision.user_id)
        .where(Decision.id > after_decision_id)
        .order_by(Decision.id)
        .limit(limit)
    )
    return [
        ReviewedRecord(d.id, d.line_item_id, desc or "", d.code, d.kind, d.created_at, name)
        for d, desc, name in session.execute(stmt)
    ]


def add_match(session: Session, line_item_id: int, **values: Any) -> HistoryMatch:
    """Append what the record said about a line item when it was classified."""
    row = HistoryMatch(line_item_id=line_item_id, **values)
    session.add(row)
    session.flush()
    return row


def latest_match(session: Session, line_item_id: int) -> HistoryMatch | None:
    return session.scalars(
        select(HistoryMatch).where(HistoryMatch.line_item_id == line_item_id).order_by(HistoryMatch.id.desc()).limit(1)
    ).first()


def latest_matches(session: Session, line_item_ids: Iterable[int]) -> dict[int, HistoryMatch]:
    """The newest match row of each of these line items (absent: the record had nothing)."""
    ids = sorted(set(line_item_ids))
    out: dict[int, HistoryMatch] = {}
    for start in range(0, len(ids), 500):
        stmt = (
            select(HistoryMatch)
            .where(HistoryMatch.line_item_id.in_(ids[start : start + 500]))
            .order_by(HistoryMatch.id)
        )
        for m in session.scalars(stmt):
            out[m.line_item_id] = m
    return out


def imported_log_rows(
    session: Session, *, max_row_id: int | None = None
) -> list[tuple[HistoryRow, HistoryImport, HistoryRetraction | None]]:
    """Every imported row with its import and retraction (if any), for the decision log, oldest first."""
    stmt = (
        select(HistoryRow, HistoryImport, HistoryRetraction)
        .join(HistoryImport, HistoryImport.id == HistoryRow.import_id)
        .outerjoin(HistoryRetraction, HistoryRetraction.import_id == HistoryImport.id)
        .order_by(HistoryRow.id)
    )
    if max_row_id is not None:
        stmt = stmt.where(HistoryRow.id <= max_row_id)
    return [(r, i, x) for r, i, x in session.execute(stmt)]


def live_training_rows(session: Session) -> list[tuple[HistoryRow, HistoryImport]]:
    """Rows of live imports (training data for fine-tuning), oldest first."""
    stmt = (
        select(HistoryRow, HistoryImport)
        .join(HistoryImport, HistoryImport.id == HistoryRow.import_id)
        .where(HistoryRow.import_id.not_in(select(HistoryRetraction.import_id)))
        .order_by(HistoryRow.id)
    )
    return [(r, i) for r, i in session.execute(stmt)]
