"""Similar past decisions: reviewed items nearest to a new product in the model's joint space; and the reviewed
decisions joining the classifier's precedent index (the vote), as they are made."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from db.precedents import latest_decisions_after, reviewed_with_embeddings
from services.auth import Actor, require_role

if TYPE_CHECKING:  # torch and the towers only where a model is used
    import torch

    from hs_model.predict import Classifier, Prediction

log = logging.getLogger(__name__)
REVIEWED = "reviewed"  # the provenance dataset of database decisions in the index


@dataclass(frozen=True)
class Precedent:
    """A reviewed decision shown as evidence beside a candidate."""

    line_item_id: int
    description: str
    code: str
    kind: str
    decided_at: datetime
    reviewer: str
    similarity: float


def find_precedents(
    session: Session,
    actor: Actor | None,
    embedding: Sequence[float],
    model_version: str,
    k: int = 5,
    exclude_line_item: int | None = None,
    code_prefix: str | None = None,
) -> list[Precedent]:
    """The k reviewed items most similar (cosine) to `embedding`; empty when there are none yet.

    Args:
        embedding: the product's joint-space vector (Prediction.embedding).
        model_version: only vectors from this model version are comparable.
        exclude_line_item: the item being classified (never its own precedent).
        code_prefix: keep only precedents whose final code starts with this (e.g. a candidate's heading).
    """
    require_role(actor, "broker", "reviewer", "admin", action="see precedents")
    query = np.asarray(embedding, dtype=np.float32)
    if query.size == 0 or not np.isfinite(query).all():
        return []
    rows = [
        r
        for r in reviewed_with_embeddings(session, model_version)
        if r.line_item_id != exclude_line_item and (not code_prefix or r.code.startswith(code_prefix))
    ]
    rows = [r for r in rows if len(r.embedding) == query.nbytes]
    if not rows:
        return []
    matrix = np.stack([np.frombuffer(r.embedding, dtype=np.float32) for r in rows])  # [N, D]
    sims = matrix @ query / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(query) + 1e-12)
    order = np.argsort(-sims)[:k]
    return [
        Precedent(
            rows[i].line_item_id,
            rows[i].description,
            rows[i].code,
            rows[i].kind,
            rows[i].decided_at,
            rows[i].reviewer,
            float(sims[i]),
        )
        for i in order
    ]


IMPORTED = "imported"  # the provenance dataset of imported history rows in the index


@dataclass(frozen=True)
class IndexSync:
    """What one `sync_reviewed_precedents` call did."""

    added: int = 0
    retired: int = 0
    skipped_invalid_code: int = 0
    skipped_empty_text: int = 0
    cursor: int = 0
    enabled: bool = True
    imported_added: int = 0
    imported_retired: int = 0


def sync_reviewed_precedents(session: Session, classifier: Classifier, batch: int = 5_000) -> IndexSync:
    """Add the approved and corrected decisions made since the last call to the classifier's precedent index.

    Incremental: only items whose latest decision is newer than the index's cursor are read; their description
    goes through the text tower once and is appended (no rebuild). An item approved and later corrected, or
    sent back, has its earlier row retired, so only its current code votes. Without a shipped index (zero-shot,
    older checkpoints) nothing happens. Reads only; the caller owns the session.
    """
    from hs_model.precedents import valid_code_set

    index = classifier.precedents
    if index is None:
        return IndexSync(enabled=False)
    added = retired = invalid = empty = 0
    with index.lock:
        while rows := latest_decisions_after(session, index.cursor, batch):
            retired += index.retire(REVIEWED, {str(r.line_item_id) for r in rows})
            keep = [r for r in rows if r.kind in ("approved", "corrected")]
            if keep:
                texts = [" ".join(r.description.split()) for r in keep]
                emb = classifier.text_tower.encode_text([t or " " for t in texts])
                if index.config.space == "joint":  # the index holds the model's adapted text vectors
                    emb = classifier.model.embed_text(emb.to(next(classifier.model.parameters()).device)).detach().cpu()
                report = index.add(
                    texts,
                    emb,
                    [r.code for r in keep],
                    [(REVIEWED, str(r.line_item_id), r.decided_at.date().isoformat()) for r in keep],
                    valid_code_set(),
                )
                added += report.added
                invalid += report.skipped_invalid_code
                empty += report.skipped_empty_text
            index.cursor = rows[-1].decision_id
        imported_added, imported_retired = _sync_imported(session, classifier, batch)
    if added or retired:
        log.info("precedent index: %d reviewed decisions added, %d retired (cursor %d)", added, retired, index.cursor)
    return IndexSync(added, retired, invalid, empty, index.cursor, True, imported_added, imported_retired)


def _sync_imported(session: Session, classifier: Classifier, batch: int) -> tuple[int, int]:
    """Imported history rows join the vote like reviewed decisions (their stored text vectors reused when the
    same text tower made them); the rows of a retracted import stop voting. Called with the index locked."""
    from db.history import live_rows_after, retractions_after
    from hs_model.precedents import valid_code_set
    from services.history_record import TowerEmbedder, row_vectors

    index = classifier.precedents
    assert index is not None
    embedder = TowerEmbedder(classifier)
    added = retired = 0
    while rows := live_rows_after(session, index.history_cursor, batch):
        emb = torch_from(row_vectors(rows, embedder))
        if index.config.space == "joint":
            emb = classifier.model.embed_text(emb.to(next(classifier.model.parameters()).device)).detach().cpu()
        report = index.add(
            [" ".join(r.description.split()) for r in rows],
            emb,
            [r.hs6 for r in rows],
            [(IMPORTED, f"{r.import_id}:{r.line_no}", r.declared_on or r.imported_at.date().isoformat()) for r in rows],
            valid_code_set(),
        )
        added += report.added
        index.history_cursor = rows[-1].id
    for retraction_id, import_id in retractions_after(session, index.retraction_cursor):
        prefix = f"{import_id}:"
        ids = {pid for ds, pid, _ in index.provenance if ds == IMPORTED and pid.startswith(prefix)}
        retired += index.retire(IMPORTED, ids)
        index.retraction_cursor = retraction_id
    if added or retired:
        log.info("precedent index: %d imported history rows added, %d retired", added, retired)
    return added, retired


def torch_from(vectors: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))


# -- the vote's evidence, as the Classify screen lists it ---------------------------------------------------------
SOURCE_LABELS = {
    "cbp_rulings": "US CBP ruling",
    "uk_parcels": "UK parcel declaration",
    "uk_brands": "UK brand declaration",
    "myntra": "catalogue product",
    "myntra_photo": "catalogue photo",
    REVIEWED: "reviewed line item",
    IMPORTED: "imported declaration",
}


@dataclass(frozen=True)
class VoteEvidence:
    """One labelled example that voted for a candidate: where it comes from, its code and its words."""

    source: str  # "US CBP ruling N345977", "reviewed line item #12"
    date: str  # ISO date, or "" when the source has none
    code: str
    text: str
    similarity: float
    weight: float


def vote_evidence(prediction: Prediction, code: str) -> list[VoteEvidence]:
    """The precedents that voted for `code` (a chapter, heading or subheading, or one of its parts), strongest
    vote first; empty when none did (the candidate was ranked by the codes' texts alone)."""
    out = []
    for p in prediction.precedents:
        if p.weight <= 0 or not (p.code.startswith(code) or code.startswith(p.code)):
            continue
        ref, _, part = p.id.partition(":")  # "N345977:short" -> the ruling's number; "3:12" -> import 3, line 12
        label = SOURCE_LABELS.get(p.dataset, p.dataset)
        if p.dataset == REVIEWED:
            source = f"{label} #{ref}"
        elif p.dataset == IMPORTED:
            source = f"{label}, import #{ref} line {part}"
        else:
            source = f"{label} {ref}"
        out.append(VoteEvidence(source, p.date, p.code, p.text, p.similarity, p.weight))
    return sorted(out, key=lambda e: -e.weight)
