"""The record, per process: approved, corrected and imported decisions, held in a `HistoryIndex` (one per database and
text tower), read once and then refreshed incrementally before each use (new imported rows, retracted imports,
line items whose decision changed); the use cases that ask it and keep its answers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Protocol

import numpy as np
from sqlalchemy.orm import Session

from db import history as qh
from services.auth import Actor, require_role
from services.history_match import HistoryIndex, Match, Source, normalise

if TYPE_CHECKING:
    from hs_model.predict import Classifier

log = logging.getLogger(__name__)
RECORD_KINDS = ("approved", "corrected")  # reviewed decisions that are the record (besides imported rows)


class Embedder(Protocol):
    """Texts -> unit vectors [N, dim] (float32); `name` says which text tower, so stored vectors are reused."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class TowerEmbedder:
    """The classifier's text tower as an `Embedder` (raw sentence vectors: the same for every model version)."""

    classifier: Classifier

    @property
    def name(self) -> str:
        return str(self.classifier.text_tower.name)

    @property
    def dim(self) -> int:
        return int(self.classifier.text_tower.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.classifier.text_tower.encode_text([t or " " for t in texts]).numpy()


def embedder_for(classifier: object) -> Embedder | None:
    """The classifier's text tower as an embedder; None for a classifier without towers (test stand-ins)."""
    if getattr(classifier, "text_tower", None) is None:
        return None
    return TowerEmbedder(classifier)  # type: ignore[arg-type]  # any object with a text tower will do


# -- the record, per process ---------------------------------------------------------------------------------------
_INDEXES: dict[tuple[str, str], HistoryIndex] = {}
_INDEXES_LOCK = threading.Lock()


def record_index(session: Session, embedder: Embedder) -> HistoryIndex:
    """This process's record for the session's database and the embedder's tower, brought up to date."""
    key = (session.get_bind().engine.url.render_as_string(hide_password=True), embedder.name)
    with _INDEXES_LOCK:
        index = _INDEXES.get(key)
        if index is None:
            index = _INDEXES[key] = HistoryIndex(dim=embedder.dim)
    refresh(session, index, embedder)
    return index


def forget_indexes() -> None:
    """Drop every cached record (tests; a restored database)."""
    with _INDEXES_LOCK:
        _INDEXES.clear()


def refresh(session: Session, index: HistoryIndex, embedder: Embedder, batch: int = 50_000) -> int:
    """Read what changed since the index's cursors: retractions, new imported rows, changed decisions (reads only).

    Returns the number of entries added.
    """
    added = 0
    with index.lock:
        for rid, import_id in qh.retractions_after(session, index.cursors.get("retraction", 0)):
            index.retire_import(import_id)
            index.cursors["retraction"] = rid
        while rows := qh.live_rows_after(session, index.cursors.get("row", 0), batch):
            vecs = row_vectors(rows, embedder)
            index.add(
                [
                    Source(
                        "imported",
                        r.hs6,
                        f"{r.file_name}, imported on {r.imported_at:%Y-%m-%d}",
                        history_row_id=r.id,
                        import_id=r.import_id,
                        line_no=r.line_no,
                        declared_code=r.code if len(r.code) > 6 else None,
                    )  # fmt: skip
                    for r in rows
                ],
                [r.normalised for r in rows],
                vecs,
                [(_key(r.sku), _key(r.importer)) if r.sku and r.importer else None for r in rows],
            )
            added += len(rows)
            index.cursors["row"] = rows[-1].id
        while decisions := qh.latest_decisions_after(session, index.cursors.get("decision", 0)):
            index.retire_items([d.line_item_id for d in decisions])
            keep = [d for d in decisions if d.kind in RECORD_KINDS and d.code and d.description.strip()]
            if keep:
                index.add(
                    [
                        Source(
                            d.kind,
                            d.code or "",
                            f"{d.kind} by {d.reviewer} on {d.decided_at:%Y-%m-%d}",
                            line_item_id=d.line_item_id,
                        )  # fmt: skip
                        for d in keep
                    ],
                    [normalise(d.description) for d in keep],
                    embedder.encode([d.description for d in keep]),
                )
                added += len(keep)
            index.cursors["decision"] = decisions[-1].decision_id
    if added:
        log.info("classification record: %d entries added (%d active)", added, index.active_count)
    return added


def _key(value: str | None) -> str:
    return " ".join((value or "").casefold().split())


def row_vectors(rows: Sequence[qh.RecordRow], embedder: Embedder) -> np.ndarray:
    """Stored vectors where the import was embedded with this tower; the others are embedded now."""
    out = np.zeros((len(rows), embedder.dim), dtype=np.float32)
    todo = []
    for i, r in enumerate(rows):
        if r.embedding is not None and r.embedder == embedder.name and len(r.embedding) == 2 * embedder.dim:
            out[i] = np.frombuffer(r.embedding, dtype=np.float16)
        else:
            todo.append(i)
    if todo:
        out[todo] = embedder.encode([rows[i].description for i in todo])
    return out


def find_match(
    session: Session,
    embedder: Embedder,
    text: str | None,
    *,
    sku: str | None = None,
    importer: str | None = None,
    vector: np.ndarray | None = None,
    exclude_line_item: int | None = None,
) -> Match | None:
    """The record's answer for one product (see `HistoryIndex.match`), or None. Reads only."""
    index = record_index(session, embedder)
    normalised = normalise(text or "")
    sku_key = (_key(sku), _key(importer)) if sku and importer and sku.strip() and importer.strip() else None
    if not normalised and sku_key is None:
        return None
    if vector is None and normalised:
        vector = embedder.encode([text or ""])[0]
    match = index.match(normalised, vector, sku_key)
    if match is not None and exclude_line_item is not None:
        rest = tuple(s for s in match.sources if s.line_item_id != exclude_line_item)
        match = Match(match.how, match.similarity, rest, tuple(dict.fromkeys(s.code for s in rest))) if rest else None
    return match


def find_matches(session: Session, embedder: Embedder, texts: Sequence[str]) -> list[Match | None]:
    """`find_match` for many descriptions, embedded in one batch (Batch runs)."""
    index = record_index(session, embedder)
    vectors = embedder.encode(list(texts)) if texts else np.zeros((0, embedder.dim))
    return [index.match(normalise(t), v, None) if t.strip() else None for t, v in zip(texts, vectors, strict=True)]


def store_match(session: Session, line_item_id: int, match: Match) -> None:
    """Keep what the record said about a classified line item (the reviewer sees it)."""
    qh.add_match(
        session,
        line_item_id,
        how=match.how,
        code=match.code,
        conflict=match.conflict,
        similarity=match.similarity,
        summary=match.summary(),
        sources=[asdict(s) | {"label": s.label} for s in match.sources],
    )


def stored_match(session: Session, line_item_id: int) -> Match | None:
    """The record's answer stored with a line item, as a `Match` again (a Batch line reopened in Classify)."""
    m = qh.latest_match(session, line_item_id)
    if m is None:
        return None
    names = {f.name for f in fields(Source)}
    sources = tuple(Source(**{k: v for k, v in raw.items() if k in names}) for raw in m.sources)
    return Match(m.how, m.similarity, sources, tuple(dict.fromkeys(s.code for s in sources)))


@dataclass(frozen=True)
class RecordNote:
    """What the record said about a line item when it was classified, for the Review screen."""

    how: str
    code: str | None
    conflict: bool
    summary: str
    codes: tuple[str, ...]


def record_note(session: Session, actor: Actor | None, line_item_id: int) -> RecordNote | None:
    """The stored match of a line item (None: the record had nothing when it was classified)."""
    require_role(actor, "broker", "reviewer", "admin", action="see line items")
    m = qh.latest_match(session, line_item_id)
    if m is None:
        return None
    codes = tuple(dict.fromkeys(str(s.get("code")) for s in m.sources))
    return RecordNote(m.how, m.code, m.conflict, m.summary, codes)
