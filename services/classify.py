"""Classify a product (description and/or photos) and record the model's answer as a line item with its prediction."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session

from db.models import Decision
from db.models import Prediction as PredictionRow
from db.photos import store_photo
from db.queries import add_audit_event, create_line_item, get_or_create_shipment, record_prediction
from hs_core.limits import LIMITS, sniff_image
from hs_core.nomenclature import HsCode, InvalidCode, PathNode, get_nomenclature
from hs_core.settings import get_settings
from hs_model.errors import InputError
from hs_model.images import load_image
from hs_model.trade_names import get_trade_names
from services import decisions
from services.auth import Actor, refresh_actor, require_role
from services.decisions import SUBMITTERS, format_code
from services.errors import InvalidInput

if TYPE_CHECKING:  # hs_model.predict pulls in torch and the towers: imported only where a model is used
    from hs_model.predict import Classifier, Prediction
    from services.history import Embedder
    from services.history_match import Match

log = logging.getLogger(__name__)

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "MAX_PHOTO_MB",
    "MAX_PHOTOS",
    "MAX_REF_CHARS",
    "ClassifyResult",
    "CodeOption",
    "RecordedClassification",
    "UploadedPhoto",
    "classify",
    "classify_and_record",
    "describe_code",
    "format_code",
    "is_subheading",
    "load_classifier",
    "official_path",
    "resolve_model_dir",
    "search_subheadings",
    "submit_decision",
    "thumbnail",
]

MAX_DESCRIPTION_CHARS = LIMITS.max_text_chars
MAX_PHOTOS = LIMITS.max_images
MAX_PHOTO_MB = LIMITS.max_image_bytes // (1024 * 1024)  # 20: what the photo uploader announces
MAX_REF_CHARS = 64  # shipments.reference and line_items.line_ref are String(64)
CARD_FILE = "card.json"


@dataclass(frozen=True)
class UploadedPhoto:
    """A photo as the browser sent it: its file name (for messages) and raw bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class ClassifyResult:
    """The model's answer for one product, with the cleaned description it was given."""

    text: str
    photo_count: int
    prediction: Prediction


@dataclass(frozen=True)
class RecordedClassification:
    """A classification stored as a line item and a prediction."""

    line_item_id: int
    prediction_id: int
    prediction: Prediction
    photos: tuple[UploadedPhoto, ...] = ()  # the stored photos, when a stored line item is reopened
    record: Match | None = None  # the same product in the record (approved, corrected, imported), if any


@dataclass(frozen=True)
class CodeOption:
    """A subheading offered in the code picker."""

    code: str
    formatted: str
    description: str
    source: str = ""  # why it is offered beyond the official text: 'trade name "rucksacks"', 'model 34%'


def resolve_model_dir() -> tuple[Path | None, str | None]:
    """The trained model folder to load: env ``HS_MODEL_DIR`` or ``assets/model``.

    Returns:
        ``(folder, None)`` when the folder holds a model card, else ``(None, reason)``: the app then
        runs the zero-shot model and shows the reason.
    """
    folder = get_settings().model_dir
    if (folder / CARD_FILE).is_file():
        return folder, None
    return None, f"No {CARD_FILE} in {folder}."


def load_classifier(model_dir: Path | None, base: Classifier | None = None) -> Classifier:
    """Build the classifier (slow: loads the towers and embeds the label texts; cached on disk after).

    With `base`, only the model version's small head is loaded on top of base's towers (fast).
    """
    if base is not None:
        return base.with_model(model_dir)
    from hs_model.predict import Classifier

    return Classifier(model_dir)


def classify(
    classifier: Classifier, *, text: str | None, photos: Sequence[UploadedPhoto], top_k: int = 5
) -> ClassifyResult:
    """Rank HS codes for a description and/or photos; nothing is stored.

    Args:
        classifier: The shared, read-only classifier.
        text: The product description (may be empty when photos are given).
        photos: Uploaded photos, in the order the broker gave them.
        top_k: Candidates per level.

    Raises:
        InvalidInput: No input, a description over the limit, too many photos, or a photo that is not a
            usable image (the message names it).
    """
    from hs_model.predict import clean_text, decode_images

    try:
        cleaned = clean_text(text)
        if not cleaned and not photos:
            raise InvalidInput("Give a description, at least one photo, or both.")
        images = decode_images([p.data for p in photos], [p.name for p in photos])
        prediction = classifier.predict(cleaned or None, images, top_k=top_k)
    except InputError as exc:
        raise InvalidInput(str(exc)) from None
    return ClassifyResult(text=cleaned, photo_count=len(images), prediction=prediction)


def _clean_ref(value: str | None, what: str) -> str | None:
    value = (value or "").strip()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidInput(f"The {what} contains control characters (tabs, line breaks or binary); type it again.")
    if len(value) > MAX_REF_CHARS:
        raise InvalidInput(f"The {what} has {len(value)} characters; the limit is {MAX_REF_CHARS}.")
    return value or None


def _check_storable(photos: Sequence[UploadedPhoto]) -> None:
    # The model accepted the photo; make sure the photo store will too, before anything is written.
    for photo in photos:
        try:
            sniff_image(photo.data)
        except ValueError:
            raise InvalidInput(f"{photo.name}: this image format cannot be stored; use JPEG, PNG or WebP.") from None


def store_prediction(session: Session, line_item_id: int, prediction: Prediction) -> PredictionRow:
    """Record a prediction of a line item with its candidates (what Classify, Batch and a revision store)."""
    return record_prediction(
        session,
        line_item_id=line_item_id,
        model_version=prediction.model_version,
        nomenclature_edition=prediction.nomenclature_edition,
        latency_ms=prediction.latency_ms,
        needs_review=prediction.needs_review,
        candidates=candidate_rows(prediction),
    )


def candidate_rows(prediction: Prediction) -> list[dict[str, Any]]:
    """A prediction's candidates as the rows the database stores (level, rank, code, description, score, and
    the precedents' vote for it: "4 earlier rulings on similar goods: 6506.10", or None)."""
    return [
        {
            "level": level,
            "rank": rank,
            "code": str(c.code),
            "description": c.description,
            "score": c.score,
            "precedents": prediction.precedent_summary(c.code),
        }
        for level, candidates in sorted(prediction.levels.items())
        for rank, c in enumerate(candidates, start=1)
    ]


def classify_and_record(
    session: Session,
    classifier: Classifier,
    actor: Actor | None,
    *,
    text: str | None,
    photos: Sequence[UploadedPhoto],
    shipment_ref: str | None = None,
    line_ref: str | None = None,
    photo_root: Path | None = None,
    top_k: int = 5,
    sku: str | None = None,
    importer: str | None = None,
    embedder: Embedder | None = None,
) -> RecordedClassification:
    """Classify a product and store it: photos by content hash, the line item, and the prediction.

    The record is asked too (`services.history.find_match`: the same SKU for the same importer, the same or a
    near-identical description among approved, corrected and imported decisions); its answer is stored with the
    line item and returned beside the model's candidates, never instead of them.

    Everything is validated and the model runs before the first write, so a refusal stores nothing.
    The caller owns the transaction (``with factory.begin() as session:``). Photo files are written
    before the rows: if the transaction then fails, the files stay as unreferenced, content-addressed
    copies that a retry reuses.

    Args:
        session: Caller-owned session.
        classifier: The shared classifier.
        actor: The signed-in user (brokers and admins).
        text: Product description.
        photos: Uploaded photos.
        shipment_ref: Optional shipment reference (created on first use).
        line_ref: Optional line reference within the shipment.
        photo_root: Photo store root; ``db.photos.default_photo_root()`` when ``None``.
        top_k: Candidates per level.
        sku: Optional article number, matched against the record with ``importer``.
        importer: Optional importer (name or EORI).
        embedder: Text vectors for the record's near-duplicate search; the classifier's text tower when None
            (no record search when the classifier has no towers).

    Raises:
        PermissionDenied: Not signed in, not a broker or admin, or the account changed since sign-in.
        InvalidInput: Bad input (see `classify`) or a reference over its length limit.
    """
    actor = require_role(actor, *SUBMITTERS, action="classify products")
    shipment_ref = _clean_ref(shipment_ref, "shipment reference")
    line_ref = _clean_ref(line_ref, "line reference")
    if getattr(classifier, "precedents", None) is not None:
        # decisions reviewed since the last classification join the precedents vote first (a read, no write)
        from services.precedents import sync_reviewed_precedents

        sync_reviewed_precedents(session, classifier)
    result = classify(classifier, text=text, photos=photos, top_k=top_k)
    _check_storable(photos)
    prediction = result.prediction
    record = _ask_record(session, classifier, embedder, result.text, sku, importer)

    # First database access only now: the model run above holds no transaction open.
    refresh_actor(session, actor)
    stored = [store_photo(p.data, photo_root) for p in photos]
    shipment = get_or_create_shipment(session, shipment_ref, actor.user_id) if shipment_ref else None
    embedding = np.asarray(prediction.embedding, dtype=np.float32).tobytes() if prediction.embedding else None
    item = create_line_item(
        session,
        description=result.text,
        created_by=actor.user_id,
        shipment_id=shipment.id if shipment else None,
        line_ref=line_ref,
        photos=stored,
        embedding=embedding,
    )
    row = store_prediction(session, item.id, prediction)
    audit: dict[str, Any] = {"line_item_id": item.id, "prediction_id": row.id, "model_version": row.model_version}
    if record is not None:
        from services.history import store_match

        store_match(session, item.id, record)
        audit["record"] = {"how": record.how, "code": record.code, "conflict": record.conflict}
    add_audit_event(session, action="classification", user_id=actor.user_id, username=actor.username, detail=audit)
    log.info("line item %s classified by %s: %s (%s)", item.id, actor.username, prediction.top.code, row.model_version)
    return RecordedClassification(line_item_id=item.id, prediction_id=row.id, prediction=prediction, record=record)


def _ask_record(
    session: Session,
    classifier: Classifier,
    embedder: Embedder | None,
    text: str,
    sku: str | None,
    importer: str | None,
) -> Match | None:
    from services.history import embedder_for, find_match

    embedder = embedder or embedder_for(classifier)
    if embedder is None:
        return None
    sku, importer = _clean_ref(sku, "SKU"), _clean_ref(importer, "importer")
    return find_match(session, embedder, text, sku=sku, importer=importer)


def is_subheading(digits: str) -> bool:
    """Whether ``digits`` is a 6-digit subheading of HS 2022."""
    return len(digits) == 6 and get_nomenclature().is_valid(digits)


def submit_decision(
    session: Session,
    actor: Actor | None,
    *,
    line_item_id: int,
    code: str,
    justification: str = "",
    prediction_id: int | None = None,
) -> Decision:
    """Submit the broker's chosen subheading for a classified line item (checked against HS 2022).

    Raises:
        PermissionDenied, NotFound, InvalidInput: see `services.decisions.submit`.
    """
    return decisions.submit(session, actor, line_item_id, code, justification, prediction_id, valid_code=is_subheading)


def thumbnail(photo: UploadedPhoto, size: int = 220) -> bytes:
    """A small JPEG preview of an uploaded photo, decoded with the model's safe loader.

    Raises:
        InvalidInput: Not a usable image (the message names the file and the reason).
    """
    try:
        image = load_image(photo.data, photo.name)
    except InputError as exc:
        raise InvalidInput(str(exc)) from None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def describe_code(code: str) -> str:
    """The official HS 2022 text of a code, or ``""`` when it is not one."""
    try:
        return get_nomenclature().description(code)
    except InvalidCode:
        return ""


def official_path(code: str) -> list[PathNode]:
    """Section > chapter > heading > subheading of an HS 2022 code."""
    return get_nomenclature().path(code)


def _subheadings_under(code: HsCode) -> Iterator[HsCode]:
    nomenclature = get_nomenclature()
    if code.level == 6:
        yield code
        return
    for child in nomenclature.children(code):
        yield from _subheadings_under(child)


def search_subheadings(query: str, limit: int = 20, classifier: Classifier | None = None) -> list[CodeOption]:
    """Subheadings matching a code, code prefix or words; a chapter or heading hit brings its subheadings.

    Then the trade names and synonyms shipped in ``assets/search_terms.json.gz`` ("rucksack", "phone case"),
    then, with a ``classifier``, the model's own best subheadings for the words typed (so "sneakers" finds
    footwear though no official text says it). Each code is offered once, official hits first.
    """
    nomenclature = get_nomenclature()
    options: dict[str, CodeOption] = {}
    for hit in nomenclature.search(query, limit=limit):
        for code in _subheadings_under(hit):
            if len(options) >= limit:
                return list(options.values())
            options.setdefault(code.digits, CodeOption(code.digits, code.formatted, code.description))
    words = query.strip()
    if not words or words.replace(".", "").replace(" ", "").isdigit():
        return list(options.values())
    for found in get_trade_names().find(words, limit=limit):
        if len(options) >= limit:
            return list(options.values())
        if found.code not in options and nomenclature.is_valid(found.code):
            code = HsCode.parse(found.code)
            options[found.code] = CodeOption(found.code, code.formatted, code.description, f"trade name “{found.term}”")
    if classifier is not None and len(options) < limit:
        try:
            ranked = classifier.predict(words, [], top_k=5).levels[6]
        except InputError:
            ranked = []
        for c in ranked:
            if c.code not in options and len(options) < limit:
                code = HsCode.parse(c.code)
                options[c.code] = CodeOption(c.code, code.formatted, code.description, f"model {c.score:.0%}")
    return list(options.values())
