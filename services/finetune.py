"""Fine-tuning as a use case: collect the reviewed decisions, train (in `hs_train.finetune`), register and audit.

The training itself is database-free and lives in the training package, imported only when a fine-tune runs, so
the app never loads it otherwise. This module owns the transactions: nothing is written until training and the
evaluation gate have finished, and the version folder is removed again if the database refuses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from db import model_versions
from db.broker_facts import facts_in_force
from db.engine import run_transaction
from db.history import live_training_rows
from db.photos import PhotoPathError, resolve_photo
from db.queries import add_audit_event
from db.worklists import reviewed_examples
from hs_model import model_store
from hs_model.criteria import NONE, UNKNOWN
from services import model_registry

if TYPE_CHECKING:
    from hs_model.predict import Classifier
    from hs_train.finetune import FinetuneConfig, LabelledSet, ReviewedItem

log = logging.getLogger(__name__)


def collect_reviewed(session: Session, photo_root: Path | None = None) -> list[ReviewedItem]:
    """Every line item whose current decision is approved or corrected (rejected and pending are left out), then
    every row of the imported classification histories that were not retracted.

    Imported rows have no line item: they carry the negative of their history row id as both ids (so they never
    collide with a line item, and `hs_train.finetune.part_of` splits them deterministically like the others).
    """
    from hs_train.finetune import ReviewedItem

    items = []
    for ex in reviewed_examples(session):
        if ex.kind not in ("approved", "corrected") or not ex.code:
            continue
        photos = []
        for rel in ex.photo_paths:
            try:
                photos.append(resolve_photo(photo_root, rel))
            except PhotoPathError as exc:
                log.warning("line item %s: %s", ex.line_item_id, exc)
        items.append(ReviewedItem(ex.line_item_id, ex.decision_id, ex.code, ex.description or "", tuple(photos)))
    items = with_broker_facts(session, items)
    for row, _ in live_training_rows(session):
        photos = []
        for ref in row.photos or ():
            try:
                photos.append(resolve_photo(photo_root, str(ref.get("path", ""))))
            except PhotoPathError as exc:
                log.warning("history row %s: %s", row.id, exc)
        items.append(ReviewedItem(-row.id, -row.id, row.hs6, row.description, tuple(photos)))
    return items


def with_broker_facts(session: Session, items: list[ReviewedItem]) -> list[ReviewedItem]:
    """The broker's answers to the guided questions become part of what a reviewed item says: "men's T-shirt
    (stated by the broker: of cotton; knitted or crocheted)". What the description left out and the broker
    stated is evidence the model learns from; "none of these" and "don't know" say nothing and are left out."""
    facts = facts_in_force(session, [i.line_item_id for i in items])
    out = []
    for item in items:
        stated = [f.answer_label for f in facts.get(item.line_item_id, []) if f.answer not in (NONE, UNKNOWN)]
        if stated:
            text = f"{item.text} (stated by the broker: {'; '.join(a.lower() for a in stated)})".strip()
            item = dataclasses.replace(item, text=text)
        out.append(item)
    return out


def training_provenance(session: Session, items: list[ReviewedItem]) -> dict[str, Any]:
    """Where the training decisions come from, for the model card: reviewed in the app, or imported (per import)."""
    imported = {-i.line_item_id for i in items if i.line_item_id < 0}
    per_import: dict[str, int] = {}
    if imported:
        for row, imp in live_training_rows(session):
            if row.id in imported:
                key = f"#{imp.id} {imp.file_name} (sha256 {imp.sha256[:12]})"
                per_import[key] = per_import.get(key, 0) + 1
    return {"reviewed": len(items) - len(imported), "imported": len(imported), "imports": per_import}


# -- the whole run against a database -------------------------------------------------------------------------
@dataclass(frozen=True)
class FinetuneResult:
    """What an admin (or the CLI) is told after a fine-tune."""

    version_id: str
    parent_id: str
    compared_with: str
    activated: bool
    reason: str
    decisions: int
    parts: dict[str, int]
    skipped: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """One fine-tune at a time per registry (they would fight over the two CPU cores anyway)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".finetune.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from hs_train.finetune import FinetuneError

            raise FinetuneError("Another fine-tune is running; wait for it to finish.") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run(
    session_factory: sessionmaker[Session],
    classifier: Classifier,
    *,
    started_by: str,
    user_id: int | None = None,
    base_id: str | None = None,
    cfg: FinetuneConfig | None = None,
    data_dir: Path | None = None,
    photo_root: Path | None = None,
    root: Path | None = None,
    benchmark: LabelledSet | None | Literal["load"] = "load",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FinetuneResult:
    """Fine-tune on the database's reviewed decisions, write the new version and let the gate decide.

    Nothing is written until training and evaluation succeeded: an exception before that (an interrupted
    run) leaves the registry folder and the database exactly as they were.

    Raises:
        FinetuneError: Too few decisions, unknown base version, or another fine-tune running.
        CheckpointError: The base or active version's files fail their hash check.
    """
    from hs_train.finetune import (
        FinetuneConfig,
        FinetuneError,
        data_fingerprint,
        encode_items,
        finetune_and_gate,
        load_base,
        load_benchmark,
    )

    cfg = cfg or FinetuneConfig()
    root = root or model_store.store_root()
    t0 = time.perf_counter()

    def prepare(
        session: Session,
    ) -> tuple[model_versions.VersionRecord, model_versions.VersionRecord, list[ReviewedItem], dict[str, Any]]:
        active = model_registry.ensure_default_registered(session, root=root)
        try:
            base = (
                model_versions.get_version(session, base_id)
                if base_id
                else model_registry.lineage_root(session, active)
            )
        except LookupError as exc:
            raise FinetuneError(str(exc)) from None
        items = collect_reviewed(session, photo_root)
        return active, base, items, training_provenance(session, items)

    with exclusive(root):
        active_rec, base_rec, items, provenance = run_transaction(session_factory, prepare)
        if len(items) < cfg.min_decisions:
            raise FinetuneError(
                f"Only {len(items)} reviewed decision(s) so far; at least {cfg.min_decisions} are needed to fine-tune."
            )
        base_folder = model_registry.verify(base_rec)
        base = load_base(classifier, base_folder, base_rec.sha256)
        active = (
            base
            if active_rec.id == base_rec.id
            else load_base(classifier, model_registry.verify(active_rec), active_rec.sha256)
        )
        # The decisions are read by the base version's own towers (a tuned text tower since hsdesk-v3), whatever
        # the caller serves: a head trained on one tower's vectors and fed another's is wrong everywhere.
        encoder = classifier.with_model(base_folder)
        reviewed, skipped = encode_items(encoder, items)
        if not len(reviewed):
            raise FinetuneError("None of the reviewed items could be read (no usable description or photo).")
        t_enc = time.perf_counter()
        bench = load_benchmark(encoder, data_dir) if benchmark == "load" else benchmark
        t_bench = time.perf_counter()
        version = model_store.new_version_id()
        outcome = finetune_and_gate(
            base,
            active,
            reviewed,
            benchmark=bench,
            cfg=cfg,
            version=version,
            started_by=started_by,
            data={**data_fingerprint(items), "skipped_unreadable": skipped, "provenance": provenance},
            on_epoch=on_epoch,
        )
        # the base's precedent indexes vote for the fine-tuned head too (text and photo vectors of the same towers);
        # the reviewed decisions join the text index on the first classification, as they do for any version
        companions = model_store.precedent_files(base_folder, head_independent=True)
        folder, card = model_store.write_version(outcome.tensors, outcome.card, root, companions=companions)
        decision = outcome.decision

        def record(session: Session) -> tuple[bool, str]:
            rec = model_registry.register_folder(session, folder, created_by=user_id)
            current = model_versions.active_version(session)
            if decision.activate and current is not None and current.id == active_rec.id:
                model_registry.activate(session, rec.id, user_id=user_id, username=started_by, reason=decision.reason)
                return True, decision.reason
            reason = decision.reason
            if decision.activate:  # someone switched versions while this one trained: theirs stands
                reason = f"kept, not activated: the active version changed to {current.id if current else None} during the fine-tune"
            add_audit_event(
                session,
                action="model_kept",
                user_id=user_id,
                username=started_by,
                detail={"version_id": rec.id, "reason": reason},
            )
            return False, reason

        try:
            activated, reason = run_transaction(session_factory, record)
        except BaseException:
            model_store.remove_version_folder(folder)
            raise
    seconds = {"encode": t_enc - t0, "benchmark": t_bench - t_enc, **outcome.seconds,
               "total": time.perf_counter() - t0}  # fmt: skip
    return FinetuneResult(
        version_id=card.version,
        parent_id=base.version,
        compared_with=active.version,
        activated=activated,
        reason=reason,
        decisions=len(items),
        parts=card.training["data"]["parts"],
        skipped=skipped,
        metrics=card.metrics,
        history=outcome.history,
        seconds=seconds,
    )
