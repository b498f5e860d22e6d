"""Similar past decisions: reviewed items nearest to a new product in the model's joint space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy.orm import Session

from db.precedents import reviewed_with_embeddings
from services.auth import Actor, require_role


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
