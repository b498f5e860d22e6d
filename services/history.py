"""Classification history as use cases: import a brokerage's past declarations (admins), check an upload first, undo
an import (an audited retraction), list the imports. The record that answers a product seen before lives in
`services.history_record`; its use cases are re-exported here.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from services.history_record import (
    Embedder,
    RecordNote,
    TowerEmbedder,
    embedder_for,
    find_match,
    find_matches,
    forget_indexes,
    record_index,
    record_note,
    refresh,
    store_match,
    stored_match,
)

__all__ = [
    "CheckedUpload",
    "Embedder",
    "ImportResult",
    "RecordNote",
    "TowerEmbedder",
    "check_upload",
    "embedder_for",
    "file_sha256",
    "find_match",
    "find_matches",
    "forget_indexes",
    "import_history",
    "import_upload",
    "list_imports",
    "record_index",
    "record_note",
    "refresh",
    "retract_import",
    "store_match",
    "stored_match",
]

log = logging.getLogger(__name__)
MAX_REASON_CHARS = 2_000


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
