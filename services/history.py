"""Classification history as use cases: import a brokerage's past declarations (admins), undo an import (an audited
retraction), and answer a product seen before from the record (approved, corrected and imported decisions).

The record is held per process in a `HistoryIndex` (one per database and text tower), read once and then refreshed
incrementally before each use: new imported rows, retracted imports, and line items whose decision changed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy.orm import Session

from db import history as qh
from db.models import HistoryImport
from db.photos import store_photo
from db.queries import add_audit_event
from hs_core.nomenclature import EDITION
from hs_model.batch import ZipPhotos
from services.auth import Actor, refresh_actor, require_role
from services.errors import InvalidInput, NotFound
from services.history_file import HistoryFile
from services.history_match import HistoryIndex, Match, Source, normalise

if TYPE_CHECKING:
    from hs_model.predict import Classifier

log = logging.getLogger(__name__)
RECORD_KINDS = ("approved", "corrected")  # reviewed decisions that are the record (besides imported rows)
MAX_REASON_CHARS = 2_000


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


# -- importing -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportResult:
    import_id: int
    file_name: str
    rows: int
    photos: int
    embedded: bool


def _operator(
    session: Session, actor: Actor | None, via: str, operator: str | None, what: str
) -> tuple[int | None, str | None]:
    """Who does it: a signed-in admin, or (command line only, with server access) the named operator."""
    if actor is None and via == "cli":
        return None, operator
    actor = refresh_actor(session, require_role(actor, "admin", action=what))
    return actor.user_id, actor.username


def import_history(
    session: Session,
    actor: Actor | None,
    checked: HistoryFile,
    *,
    photos: ZipPhotos | None = None,
    photos_name: str | None = None,
    photos_sha256: str | None = None,
    embedder: Embedder | None = None,
    photo_root: Path | None = None,
    via: str = "app",
    operator: str | None = None,
) -> ImportResult:
    """Store a checked history file as one import: its rows (append-only), their photos, and an audit event.

    All or nothing: a file with any problem is refused (fix it and import again); the same file (by content hash)
    cannot be imported twice unless its earlier import was retracted.

    Raises:
        PermissionDenied: Not an admin (the command line passes ``actor=None, via="cli"``).
        InvalidInput: The file has problems, no rows, or was imported already.
    """
    user_id, username = _operator(session, actor, via, operator, "import a classification history")
    if checked.total_problems:
        raise InvalidInput(
            f"{checked.name}: {checked.total_problems:,} problem(s) in the file; nothing was imported. "
            "Fix the lines listed and import the file again."
        )
    if not checked.rows:
        raise InvalidInput(f"{checked.name}: no rows to import.")
    earlier = qh.find_import_by_sha256(session, checked.sha256)
    if earlier is not None:
        raise InvalidInput(
            f"{checked.name}: this file was already imported as import #{earlier.id} "
            f"({earlier.file_name}, {earlier.created_at:%Y-%m-%d}); retract that import first to import it again."
        )
    vectors = None
    if embedder is not None:
        vectors = np.asarray(embedder.encode([r.description for r in checked.rows]), dtype=np.float16)
    stored_photos = 0
    rows: list[dict[str, Any]] = []
    for i, r in enumerate(checked.rows):
        refs = []
        for name in r.photos:
            assert photos is not None  # the check refused photo names without a zip
            p = store_photo(photos.read(name), photo_root)
            refs.append({"sha256": p.sha256, "path": p.rel_path, "mime": p.mime, "width": p.width,
                         "height": p.height, "size_bytes": p.size_bytes, "name": name})  # fmt: skip
        stored_photos += len(refs)
        rows.append(
            {
                "line_no": r.line,
                "description": r.description,
                "normalised": r.normalised,
                "code": r.code,
                "hs6": r.hs6,
                "sku": r.sku,
                "importer": r.importer,
                "declared_on": r.declared_on,
                "photos": refs,
                "embedding": vectors[i].tobytes() if vectors is not None else None,
            }
        )
    imp = qh.add_import(
        session,
        file_name=checked.name[:255],
        sha256=checked.sha256,
        row_count=len(rows),
        edition=EDITION,
        photos_file=(photos_name or None) and photos_name[:255] if photos is not None else None,
        photos_sha256=photos_sha256 if photos is not None else None,
        embedder=embedder.name if embedder is not None else None,
        user_id=user_id,
        username=username,
        via=via,
    )
    qh.add_rows(session, imp.id, rows)
    detail = {"import_id": imp.id, "file": checked.name, "sha256": checked.sha256, "rows": len(rows),
              "photos": stored_photos, "edition": EDITION, "via": via}  # fmt: skip
    add_audit_event(session, action="history_import", user_id=user_id, username=username, detail=detail)
    log.info(
        "history import #%s of %s by %s: %d rows, %d photos", imp.id, checked.name, username, len(rows), stored_photos
    )
    return ImportResult(imp.id, checked.name, len(rows), stored_photos, vectors is not None)


def retract_import(
    session: Session,
    actor: Actor | None,
    import_id: int,
    reason: str,
    *,
    via: str = "app",
    operator: str | None = None,
) -> None:
    """Undo a whole import: an audited retraction row (its rows stay, for the auditors, but stop being the record).

    Raises:
        PermissionDenied: Not an admin.
        NotFound: No such import.
        InvalidInput: No reason, or the import is already retracted.
    """
    user_id, username = _operator(session, actor, via, operator, "retract a history import")
    reason = " ".join((reason or "").split())
    if not reason:
        raise InvalidInput("Say why the import is retracted.")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidInput(f"The reason has {len(reason):,} characters; the limit is {MAX_REASON_CHARS:,}.")
    imp = session.get(HistoryImport, import_id)
    if imp is None:
        raise NotFound(f"History import #{import_id} does not exist.")
    if qh.retraction_of(session, import_id) is not None:
        raise InvalidInput(f"History import #{import_id} is already retracted.")
    qh.add_retraction(session, import_id, user_id=user_id, username=username, reason=reason)  # unique per import
    detail = {"import_id": import_id, "file": imp.file_name, "rows": imp.row_count, "reason": reason, "via": via}
    add_audit_event(session, action="history_retraction", user_id=user_id, username=username, detail=detail)


def list_imports(session: Session, actor: Actor | None) -> list[qh.ImportSummary]:
    """Every import, newest first (admins)."""
    refresh_actor(session, require_role(actor, "admin", action="see history imports"))
    return qh.list_imports(session)


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
            vecs = _row_vectors(rows, embedder)
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


def _row_vectors(rows: Sequence[qh.RecordRow], embedder: Embedder) -> np.ndarray:
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


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CheckedUpload:
    """An uploaded history file (and photos zip), checked row by row; nothing written yet."""

    file: HistoryFile
    photos: ZipPhotos | None
    photos_name: str | None
    photos_sha256: str | None


def check_upload(
    actor: Actor | None, name: str, data: bytes, zip_name: str | None = None, zip_data: bytes | None = None
) -> CheckedUpload:
    """Check an upload before anything is written (admins).

    Raises:
        PermissionDenied: Not an admin.
        InvalidInput: The file or zip as a whole cannot be used (the message says why).
    """
    from services.history_file import HistoryFileError, check_history_file, open_photos

    require_role(actor, "admin", action="import a classification history")
    try:
        photos = open_photos(zip_name or "photos.zip", zip_data) if zip_data is not None else None
        checked = check_history_file(name, data, photos)
    except HistoryFileError as exc:
        raise InvalidInput(str(exc)) from None
    return CheckedUpload(checked, photos, zip_name, file_sha256(zip_data) if zip_data is not None else None)


def import_upload(
    session: Session, actor: Actor | None, upload: CheckedUpload, classifier: object, photo_root: Path | None = None
) -> ImportResult:
    """`import_history` of a checked upload, with the classifier's text tower for the row vectors."""
    return import_history(session, actor, upload.file, photos=upload.photos, photos_name=upload.photos_name,
                          photos_sha256=upload.photos_sha256, embedder=embedder_for(classifier),
                          photo_root=photo_root)  # fmt: skip
