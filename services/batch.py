"""Batch classification for brokers: check a CSV (+ photo zip), run it in chunks, store every line under one shipment.

Resuming is safe: a line whose idempotency key (shipment + line reference + content hash) is already stored is not
classified or stored again; its stored answer is shown instead. Each chunk is one transaction, so a run stopped
between chunks (the Stop button, a closed tab) keeps everything finished so far.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import LineItem, Shipment
from db.models import Prediction as PredictionRow
from db.photos import PhotoPathError, resolve_photo, store_photo
from db.queries import add_audit_event, create_line_item, get_or_create_shipment, latest_prediction
from hs_core.limits import sniff_image
from hs_model.batch import (
    BATCH_LIMITS,
    RESULT_COLUMNS,
    BatchFile,
    BatchFileError,
    BatchRow,
    RowOutcome,
    ZipPhotos,
    classify_rows,
    content_key,
    format_duration,
    read_batch_csv,
    result_record,
    results_csv,
    results_xlsx,
    seconds_left,
)
from services.auth import Actor, refresh_actor, require_role
from services.classify import MAX_REF_CHARS, RecordedClassification, UploadedPhoto, store_prediction
from services.decisions import SUBMITTERS
from services.errors import InvalidInput, NotFound, PermissionDenied

if TYPE_CHECKING:
    from hs_model.predict import Classifier, Prediction
    from services.history import Embedder
    from services.history_match import Match

log = logging.getLogger(__name__)

T = TypeVar("T")


class Transact(Protocol):
    """Runs ``fn(session)`` in its own transaction and returns its result (e.g. screens.common.in_transaction)."""

    def __call__(self, fn: Callable[[Session], T], /) -> T: ...


__all__ = [
    "MAX_ROWS",
    "OUTPUT_COLUMNS",
    "BatchCheck",
    "BatchProgress",
    "BatchResult",
    "check_batch",
    "export_results",
    "format_duration",
    "open_line_item",
    "problem_rows",
    "results_csv",
    "results_xlsx",
    "run_batch",
]

MAX_ROWS = BATCH_LIMITS.max_rows
CHUNK_SIZE = 32
TOP_K = 5  # stored per level, as for a single classification; the table shows the top 3
STATUS_NEW, STATUS_RESUMED, STATUS_SKIPPED, STATUS_ERROR = "classified", "already stored", "not run", "error"
# record / record_code: the same product in the classification record (approved, corrected or imported) and its
# code ("conflict: ..." and no code when the record holds several codes for it); empty when the record has nothing.
OUTPUT_COLUMNS: tuple[str, ...] = (
    "line", "line_ref", "line_item_id", "status", "record_code", "record", *RESULT_COLUMNS[2:]
)  # fmt: skip


@dataclass(frozen=True)
class BatchCheck:
    """A checked upload: the CSV's rows with their problems, and the photos."""

    file: BatchFile
    photos: ZipPhotos | None
    csv_name: str
    zip_name: str | None = None

    @property
    def runnable(self) -> int:
        return len(self.file.valid_rows)


@dataclass(frozen=True)
class BatchProgress:
    """Where a run stands after a chunk."""

    done: int  # rows finished (classified, resumed or failed)
    total: int  # rows that will be run or resumed
    stored: int
    resumed: int
    errors: int
    elapsed_s: float
    seconds_left: float | None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def describe(self) -> str:
        return f"{self.done:,} of {self.total:,} lines · about {format_duration(self.seconds_left)} left"


@dataclass(frozen=True)
class BatchResult:
    """The outcome of a run: one record per CSV row (see OUTPUT_COLUMNS)."""

    shipment_ref: str
    records: tuple[dict[str, Any], ...]
    stored: int
    resumed: int
    errors: int
    skipped: int
    stopped: bool
    seconds: float
    review_threshold: float = 0.5  # the model's, for reopening a line in the Classify screen


def check_batch(
    csv_name: str, csv_data: bytes, zip_name: str | None = None, zip_data: bytes | None = None
) -> BatchCheck:
    """Validate an upload before anything runs: the CSV, the zip, and each row's photo names against the zip.

    Raises:
        InvalidInput: the file as a whole cannot be used (the message says why and what to do).
    """
    try:
        photos = ZipPhotos(zip_data, zip_name or "the zip") if zip_data is not None else None
        batch = read_batch_csv(csv_data, photos, name=csv_name)
    except BatchFileError as exc:
        raise InvalidInput(str(exc)) from None
    return BatchCheck(batch, photos, csv_name, zip_name)


def problem_rows(check: BatchCheck) -> list[dict[str, Any]]:
    """Rows that will not run, one problem per entry: ``{"line", "line_ref", "problem"}``."""
    return [{"line": r.line, "line_ref": r.line_ref, "problem": p} for r in check.file.invalid_rows for p in r.problems]


def _clean_shipment(ref: str | None) -> str:
    ref = (ref or "").strip()
    if not ref:
        raise InvalidInput("Give a shipment reference: every line of the batch is stored under it.")
    if len(ref) > MAX_REF_CHARS:
        raise InvalidInput(f"The shipment reference has {len(ref)} characters; the limit is {MAX_REF_CHARS}.")
    return ref


def _item_key(item: LineItem) -> tuple[str, str]:
    return item.line_ref or "", content_key(item.description or "", [p.sha256 for p in item.photos])


def _stored_items(session: Session, shipment_ref: str, refs: Sequence[str] | None = None) -> list[LineItem]:
    stmt = (
        select(LineItem).join(Shipment, LineItem.shipment_id == Shipment.id).where(Shipment.reference == shipment_ref)
    )
    if refs is not None:
        stmt = stmt.where(LineItem.line_ref.in_(list(refs)))
    return list(session.scalars(stmt.order_by(LineItem.id)))


def _row_keys(rows: Sequence[BatchRow], photos: ZipPhotos | None) -> dict[int, tuple[str, str]]:
    """Idempotency key (line ref, content hash) of each runnable row; photos are hashed, not decoded."""
    digests: dict[str, str] = {}
    keys = {}
    for row in rows:
        shas = []
        for name in row.photos:
            if name not in digests:
                try:
                    digests[name] = hashlib.sha256(photos.read(name)).hexdigest() if photos else ""
                except Exception:  # noqa: BLE001 - the run reports the unreadable photo on its row
                    digests[name] = f"unreadable:{name}"
            shas.append(digests[name])
        keys[row.line] = (row.line_ref, content_key(row.description, shas))
    return keys


def run_batch(
    transact: Transact,
    classifier: Classifier,
    actor: Actor | None,
    check: BatchCheck,
    *,
    shipment_ref: str,
    photo_root: Path | None = None,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[BatchProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    embedder: Embedder | None = None,
) -> BatchResult:
    """Classify every runnable row and store it under the shipment, one transaction per chunk.

    Args:
        transact: Runs ``fn(session)`` in its own transaction (``screens.common.in_transaction``).
        classifier: The shared classifier.
        actor: The signed-in broker or admin.
        check: From `check_batch`.
        shipment_ref: Every line is stored under this shipment (created on first use).
        photo_root: Photo store root (``db.photos.default_photo_root()`` when None).
        chunk_size: Rows per model call and per transaction.
        on_progress: Called after each chunk.
        should_stop: Checked after each chunk; True ends the run there (what is stored stays stored).
        embedder: Text vectors for the record's near-duplicate search; the classifier's text tower when None.

    Raises:
        PermissionDenied: not a broker or admin, or the account changed since sign-in.
        InvalidInput: no or an over-long shipment reference.
    """
    actor = require_role(actor, *SUBMITTERS, action="classify products")
    shipment_ref = _clean_shipment(shipment_ref)
    rows = check.file.valid_rows
    keys = _row_keys(rows, check.photos)
    from services.history import embedder_for

    run = _Run(total=len(rows), on_progress=on_progress, embedder=embedder or embedder_for(classifier))
    stored = transact(lambda session: _load_stored(session, actor, shipment_ref, keys))
    todo = run.resume(rows, keys, stored)
    last_chunk = _classify_and_store(transact, classifier, actor, check, todo, keys, run, shipment_ref, photo_root,
                                     chunk_size, should_stop)  # fmt: skip
    for row in check.file.invalid_rows:
        run.records[row.line] = _record(row, None, None, None, STATUS_SKIPPED)
    thresholds = [o.prediction.review_threshold for o in last_chunk if o.prediction is not None]
    result = BatchResult(
        shipment_ref=shipment_ref,
        records=tuple(run.records[r.line] for r in check.file.rows if r.line in run.records),
        stored=run.stored,
        resumed=run.resumed,
        errors=run.errors,
        skipped=len(check.file.invalid_rows),
        stopped=run.stopped,
        seconds=time.perf_counter() - run.t0,
        review_threshold=thresholds[0] if thresholds else _threshold(classifier),
    )
    log.info(
        "batch %s for shipment %s by %s: %d stored, %d resumed, %d errors, %d skipped%s in %.1f s",
        check.csv_name,
        shipment_ref,
        actor.username,
        result.stored,
        result.resumed,
        result.errors,
        result.skipped,
        " (stopped)" if result.stopped else "",
        result.seconds,
    )
    return result


@dataclass
class _Run:
    """One batch run while it goes: what each line became, the counts, and the progress reports."""

    total: int
    on_progress: Callable[[BatchProgress], None] | None
    embedder: Embedder | None = None  # asks the record about each line (None: no record column)
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    stored: int = 0
    resumed: int = 0
    errors: int = 0
    todo: int = 0  # lines this run classifies (not stored by an earlier run)
    done: int = 0  # ... of which done so far
    stopped: bool = False
    t0: float = field(default_factory=time.perf_counter)
    run_t0: float = field(default_factory=time.perf_counter)

    def resume(
        self,
        rows: Sequence[BatchRow],
        keys: dict[int, tuple[str, str]],
        stored: dict[tuple[str, str], tuple[int, dict[str, Any]]],
    ) -> list[BatchRow]:
        """Take the lines an earlier run of the same file stored; return the ones still to classify."""
        for row in rows:
            hit = stored.get(keys[row.line])
            if hit is not None:
                item_id, view = hit
                self.records[row.line] = _record(row, view.get("prediction"), None, item_id, STATUS_RESUMED)
                self.records[row.line].update(view.get("record") or {})
                self.resumed += 1
        todo = [r for r in rows if r.line not in self.records]
        self.todo, self.run_t0 = len(todo), time.perf_counter()
        return todo

    def take(
        self, outcomes: Sequence[RowOutcome], saved: dict[int, tuple[int, bool]], matches: dict[int, Match]
    ) -> None:
        """Record one stored chunk."""
        for outcome in outcomes:
            row = outcome.row
            if outcome.prediction is None:
                self.records[row.line] = _record(row, None, outcome.error, None, STATUS_ERROR)
                self.errors += 1
                continue
            item_id, fresh = saved[row.line]
            self.records[row.line] = _record(
                row, outcome.prediction, None, item_id, STATUS_NEW if fresh else STATUS_RESUMED
            )
            if row.line in matches:
                self.records[row.line].update(_record_cells(matches[row.line]))
            if fresh:
                self.stored += 1
            else:  # stored meanwhile by another run of the same file
                self.resumed += 1
        self.done += len(outcomes)

    def report(self) -> None:
        if self.on_progress is None:
            return
        self.on_progress(
            BatchProgress(
                done=self.resumed + self.done,
                total=self.total,
                stored=self.stored,
                resumed=self.resumed,
                errors=self.errors,
                elapsed_s=time.perf_counter() - self.t0,
                seconds_left=seconds_left(self.done, self.todo, time.perf_counter() - self.run_t0),
            )
        )


def _load_stored(
    session: Session, actor: Actor, shipment_ref: str, keys: dict[int, tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, dict[str, Any]]]:
    """The shipment's line items already stored, by (line reference, content hash): what a rerun resumes."""
    refresh_actor(session, actor)
    stored = {}
    items = _stored_items(session, shipment_ref, sorted({k[0] for k in keys.values()}))
    from db.history import latest_matches

    matches = latest_matches(session, [i.id for i in items])
    for item in items:
        pred = latest_prediction(session, item.id)
        view = _prediction_view(pred, item)
        if item.id in matches:
            m = matches[item.id]
            view["record"] = {"record_code": m.code, "record": m.summary}
        stored[_item_key(item)] = (item.id, view)
    return stored


def _record_cells(match: Match) -> dict[str, Any]:
    return {"record_code": match.code, "record": match.summary()}


def _classify_and_store(
    transact: Transact,
    classifier: Classifier,
    actor: Actor,
    check: BatchCheck,
    todo: Sequence[BatchRow],
    keys: dict[int, tuple[str, str]],
    run: _Run,
    shipment_ref: str,
    photo_root: Path | None,
    chunk_size: int,
    should_stop: Callable[[], bool] | None,
) -> list[RowOutcome]:
    """Classify the lines chunk by chunk, one transaction per chunk; returns the last chunk's outcomes."""
    run.report()
    last_chunk: list[RowOutcome] = []
    chunks = classify_rows(classifier, todo, check.photos, top_k=TOP_K, chunk_size=chunk_size)
    try:
        for outcomes in chunks:
            outcomes = last_chunk = [_storable(o) for o in outcomes]

            def store(
                s: Session, outcomes: list[RowOutcome] = outcomes
            ) -> tuple[dict[int, tuple[int, bool]], dict[int, Match]]:
                matches = _ask_record(s, run.embedder, outcomes)
                return _store_chunk(s, actor, shipment_ref, outcomes, keys, photo_root, matches), matches

            saved, matches = transact(store)
            run.take(outcomes, saved, matches)
            run.report()
            if should_stop is not None and should_stop():
                run.stopped = run.done < len(todo)
                break
    finally:
        chunks.close()
    return last_chunk


EXPORT_FORMATS = ("csv", "xlsx")


def export_results(session: Session, actor: Actor | None, result: BatchResult, fmt: str) -> bytes:
    """A run's results as CSV or XLSX bytes, with a ``batch_export`` audit event (exports are audited).

    Raises:
        PermissionDenied: not a broker or admin, or the account changed since sign-in.
        InvalidInput: unknown format.
    """
    actor = refresh_actor(session, require_role(actor, *SUBMITTERS, action="download batch results"))
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(f"Unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    data = results_csv(result.records, OUTPUT_COLUMNS) if fmt == "csv" else results_xlsx(result.records, OUTPUT_COLUMNS)
    detail = {"format": fmt, "shipment": result.shipment_ref, "rows": len(result.records), "via": "app"}
    add_audit_event(session, action="batch_export", user_id=actor.user_id, username=actor.username, detail=detail)
    return data


def _threshold(classifier: Classifier) -> float:
    model = getattr(classifier, "model", None)
    return float(model.review_threshold) if model is not None else 0.5


def _record(
    row: BatchRow, prediction: Prediction | None, error: str | None, item_id: int | None, status: str
) -> dict[str, Any]:
    return result_record(row, prediction, error, line_item_id=item_id, status=status, record_code=None, record=None)


def _storable(outcome: RowOutcome) -> RowOutcome:
    """The photo store takes fewer formats than the model reads: check before the transaction."""
    if outcome.prediction is None:
        return outcome
    for name, data in outcome.photos:
        try:
            sniff_image(data)
        except ValueError:
            return RowOutcome(outcome.row, None, f"{name}: this image format cannot be stored; use JPEG, PNG or WebP.")
    return outcome


def _ask_record(session: Session, embedder: Embedder | None, outcomes: Sequence[RowOutcome]) -> dict[int, Match]:
    """The record's answer for each classified line of a chunk (one text-tower call for the chunk)."""
    good = [o for o in outcomes if o.prediction is not None]
    if embedder is None or not good:
        return {}
    from services.history import find_matches

    found = find_matches(session, embedder, [o.row.description for o in good])
    return {o.row.line: m for o, m in zip(good, found, strict=True) if m is not None}


def _store_chunk(
    session: Session,
    actor: Actor,
    shipment_ref: str,
    outcomes: Sequence[RowOutcome],
    keys: dict[int, tuple[str, str]],
    photo_root: Path | None,
    matches: dict[int, Match] | None = None,
) -> dict[int, tuple[int, bool]]:
    """Store a chunk's predictions; returns ``{line: (line_item_id, newly stored)}``.

    The keys are checked again inside the transaction, so two runs of the same file at once store each line once.
    """
    refresh_actor(session, actor)
    shipment = get_or_create_shipment(session, shipment_ref, actor.user_id)
    good = [o for o in outcomes if o.prediction is not None]
    present = {_item_key(i): i.id for i in _stored_items(session, shipment_ref, sorted({o.row.line_ref for o in good}))}
    saved: dict[int, tuple[int, bool]] = {}
    for outcome in good:
        row, prediction = outcome.row, outcome.prediction
        assert prediction is not None  # `good` holds only outcomes with a prediction
        key = keys[row.line]
        if key in present:
            saved[row.line] = (present[key], False)
            continue
        photos = [store_photo(data, photo_root) for _, data in outcome.photos]
        embedding = np.asarray(prediction.embedding, dtype=np.float32).tobytes() if prediction.embedding else None
        item = create_line_item(
            session,
            description=row.description,
            created_by=actor.user_id,
            shipment_id=shipment.id,
            line_ref=row.line_ref,
            photos=photos,
            embedding=embedding,
        )
        store_prediction(session, item.id, prediction)
        if matches and row.line in matches:
            from services.history import store_match

            store_match(session, item.id, matches[row.line])
        present[key] = item.id
        saved[row.line] = (item.id, True)
    new_ids = [item_id for item_id, fresh in saved.values() if fresh]
    if new_ids:
        first = good[0].prediction
        assert first is not None  # `good` holds only outcomes with a prediction
        detail = {
            "shipment": shipment_ref,
            "line_items": len(new_ids),
            "first_line_item_id": min(new_ids),
            "last_line_item_id": max(new_ids),
            "model_version": first.model_version,
        }
        add_audit_event(
            session, action="batch_classification", user_id=actor.user_id, username=actor.username, detail=detail
        )
    return saved


def _prediction_view(row: PredictionRow | None, item: LineItem) -> dict[str, Any]:
    """A stored prediction as the `Prediction` the model returned (for resumed rows and the Classify hand-off)."""
    if row is None:
        return {}
    return {"prediction": stored_prediction(row, item), "prediction_id": row.id}


def stored_prediction(row: PredictionRow, item: LineItem, review_threshold: float = 0.5) -> Prediction:
    """Rebuild the model's answer from its stored candidates (gates and the joint vector are not stored)."""
    from hs_model.predict import Candidate
    from hs_model.predict import Prediction as ModelPrediction

    levels: dict[int, list[Candidate]] = {2: [], 4: [], 6: []}
    for c in sorted(row.candidates, key=lambda c: (c["level"], c["rank"])):
        levels.setdefault(int(c["level"]), []).append(
            Candidate(c["code"], int(c["level"]), c.get("description", ""), float(c["score"]))
        )
    has_text, has_photo = bool(item.description), bool(item.photos)
    return ModelPrediction(
        model_version=row.model_version,
        nomenclature_edition=row.nomenclature_edition,
        levels=levels,
        needs_review=row.needs_review,
        review_threshold=review_threshold,
        latency_ms=row.latency_ms,
        modality="both" if has_text and has_photo else "image" if has_photo else "text",
        gates=(float(has_text), float(has_photo)),
    )


def open_line_item(
    session: Session,
    actor: Actor | None,
    line_item_id: int,
    review_threshold: float = 0.5,
    photo_root: Path | None = None,
) -> RecordedClassification:
    """A stored line item and its latest prediction, as the Classify screen shows a fresh classification, with
    its stored photos (a photo missing from the store, or outside it, is left out and logged).

    Brokers open their own items; admins any.

    Raises:
        PermissionDenied: not a broker or admin, or another broker's item.
        NotFound: no such line item, or it has no prediction.
    """
    actor = refresh_actor(session, require_role(actor, *SUBMITTERS, action="open line items"))
    item = session.get(LineItem, line_item_id)
    if item is None:
        raise NotFound(f"There is no line item #{line_item_id}.")
    if actor.role != "admin" and item.created_by != actor.user_id:
        raise PermissionDenied(f"Line item #{line_item_id} belongs to another broker.")
    pred = latest_prediction(session, item.id)
    if pred is None:
        raise NotFound(f"Line item #{line_item_id} has no prediction yet.")
    prediction = stored_prediction(pred, item, review_threshold)
    photos = []
    for photo in item.photos:
        try:
            photos.append(
                UploadedPhoto(f"photo {photo.position + 1}", resolve_photo(photo_root, photo.path).read_bytes())
            )
        except (PhotoPathError, OSError) as exc:
            log.warning("line item %s: stored photo %s not readable: %s", item.id, photo.id, exc)
    from services.history import stored_match

    return RecordedClassification(
        line_item_id=item.id,
        prediction_id=pred.id,
        prediction=prediction,
        photos=tuple(photos),
        record=stored_match(session, item.id),
    )
