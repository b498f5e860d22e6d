"""Batch classification: CSV and photo-zip validation, chunked model runs, result files (no streamlit, no database).

A batch is a CSV of line items (line reference, description, optional photo file names separated by ``;``) and,
optionally, the photos: a zip (read in memory, never extracted) or a folder. Everything that can be checked is
checked before the model runs; a row with a problem is reported and skipped, never stops the run.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
import math
import os
import re
import zipfile
from collections.abc import Generator, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from hs_core.files import atomic_write_bytes
from hs_core.limits import LIMITS
from hs_core.nomenclature import format_digits
from hs_core.text import CONTROL_CHARACTERS, excel_text_code, neutralise_formula, xlsx_safe
from hs_model.errors import InputError
from hs_model.images import load_image

if TYPE_CHECKING:  # torch comes in with the classifier, only where a model runs
    from PIL import Image

    from hs_model.predict import Classifier, Prediction, Query

log = logging.getLogger(__name__)

_IGNORED_ZIP_PARTS = ("__MACOSX",)


@dataclass(frozen=True)
class BatchLimits:
    """What one batch run accepts; every refusal names the limit."""

    max_rows: int = 5_000
    max_csv_bytes: int = 20 * 1024 * 1024
    max_ref_chars: int = 64  # line_items.line_ref is String(64)
    max_text_chars: int = LIMITS.max_text_chars
    max_photos_per_row: int = LIMITS.max_images
    max_zip_bytes: int = 512 * 1024 * 1024  # the upload itself
    max_zip_entries: int = 10_000
    max_zip_total_bytes: int = 2 * 1024 * 1024 * 1024  # declared uncompressed size of all entries
    max_photo_bytes: int = LIMITS.max_image_bytes
    max_compression_ratio: float = 100.0  # photos hardly compress; text-like bombs compress 1000x
    ratio_floor_bytes: int = 1024 * 1024  # smaller entries are not ratio-checked (tiny files compress well)


BATCH_LIMITS = BatchLimits()

# Header names accepted for each column, compared lower-case with spaces, dashes and dots as underscores.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "line_ref": ("line_ref", "line_reference", "line", "line_no", "line_number", "ref", "reference", "item_ref"),
    "description": ("description", "desc", "text", "product_description", "goods_description", "product"),
    "photos": ("photos", "photo", "images", "image", "photo_files", "photo_file", "pictures", "files"),
}
REQUIRED_COLUMNS = ("line_ref", "description")

RESULT_COLUMNS: tuple[str, ...] = (
    "line",
    "line_ref",
    "description",
    "photos",
    "code_1",
    "score_1",
    "description_1",
    "code_2",
    "score_2",
    "code_3",
    "score_3",
    "heading",
    "heading_score",
    "heading_description",
    "chapter",
    "chapter_score",
    "chapter_description",
    "needs_review",
    "precedents",  # e.g. "2 earlier rulings on similar goods: 9506.91" when precedents voted for code_1
    "model_version",
    "question",  # the guided question a broker should answer for this line (hs_model.questions), if any
    "evidence",
    "error",
)


class BatchFileError(InputError):
    """The whole file (CSV or zip) is refused; the message says why and what to do."""


# -- photos --------------------------------------------------------------------------------------------------------


class PhotoSource(Protocol):
    """Where a batch's photos come from, looked up by file name (case-insensitive basename)."""

    def problem(self, name: str) -> str | None:
        """Why the photo cannot be used, or None when it can be read."""

    def read(self, name: str) -> bytes:
        """The photo's bytes (raises InputError)."""


def photo_key(name: str) -> str:
    """How photo names are matched: basename (either slash), stripped, case-folded."""
    return name.replace("\\", "/").rsplit("/", 1)[-1].strip().casefold()


def _unsafe_zip_path(name: str) -> bool:
    posix = name.replace("\\", "/")
    return (
        posix.startswith("/")
        or bool(re.match(r"^[A-Za-z]:", posix))
        or ".." in PurePosixPath(posix).parts
        or "\x00" in posix
    )


class ZipPhotos:
    """Photos inside an uploaded zip, read in memory one entry at a time (nothing is extracted to disk).

    The archive is checked before any entry is read: entry count, declared total size, compression ratio
    (zip bombs), and entry paths (``../x`` or absolute paths refuse the whole archive).
    """

    def __init__(self, data: bytes, name: str = "photos.zip", limits: BatchLimits = BATCH_LIMITS) -> None:
        self.name, self.limits = name, limits
        if len(data) > limits.max_zip_bytes:
            raise BatchFileError(
                f"{name}: {len(data) / 1e6:,.0f} MB is over the {limits.max_zip_bytes / 1e6:,.0f} MB limit for a zip."
            )
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise BatchFileError(f"{name}: this is not a readable zip file ({exc}).") from None
        if len(infos) > limits.max_zip_entries:
            raise BatchFileError(
                f"{name}: {len(infos):,} entries; a zip may hold at most {limits.max_zip_entries:,}. "
                "Split the photos over several runs."
            )
        for info in infos:
            if _unsafe_zip_path(info.filename):
                raise BatchFileError(
                    f"{name}: the entry {info.filename!r} points outside the archive (absolute path or '..'); "
                    "the zip is refused. Zip the photos themselves, without folders that climb up."
                )
        total = sum(i.file_size for i in infos)
        if total > limits.max_zip_total_bytes:
            raise BatchFileError(
                f"{name}: the entries unpack to {total / 1e6:,.0f} MB, over the "
                f"{limits.max_zip_total_bytes / 1e6:,.0f} MB limit (zip bomb guard)."
            )
        packed = sum(i.compress_size for i in infos)
        for info in infos:
            if info.file_size >= limits.ratio_floor_bytes and info.file_size > limits.max_compression_ratio * max(
                info.compress_size, 1
            ):
                raise BatchFileError(
                    f"{name}: the entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f}"
                    f" times (limit {limits.max_compression_ratio:,.0f}); the zip is refused (zip bomb guard)."
                )
        if total >= limits.ratio_floor_bytes and total > limits.max_compression_ratio * max(packed, 1):
            raise BatchFileError(
                f"{name}: the archive expands {total / max(packed, 1):,.0f} times "
                f"(limit {limits.max_compression_ratio:,.0f}); the zip is refused (zip bomb guard)."
            )
        self._entries: dict[str, list[zipfile.ZipInfo]] = {}
        for info in infos:
            parts = PurePosixPath(info.filename.replace("\\", "/")).parts
            if info.is_dir() or not parts or parts[-1].startswith(".") or set(parts) & set(_IGNORED_ZIP_PARTS):
                continue
            self._entries.setdefault(photo_key(parts[-1]), []).append(info)

    @property
    def photo_count(self) -> int:
        return len(self._entries)

    def problem(self, name: str) -> str | None:
        found = self._entries.get(photo_key(name))
        if not found:
            return f"photo {name!r} is not in {self.name}"
        if len(found) > 1:
            return f"photo {name!r} is in {self.name} {len(found)} times (in different folders): rename one"
        info = found[0]
        if info.flag_bits & 0x1:
            return f"photo {name!r} is encrypted in {self.name}"
        if info.file_size > self.limits.max_photo_bytes:
            return (
                f"photo {name!r} is {info.file_size / 1e6:.1f} MB, over the "
                f"{self.limits.max_photo_bytes / 1e6:.0f} MB limit for one photo"
            )
        return None

    def read(self, name: str) -> bytes:
        reason = self.problem(name)
        if reason is not None:
            raise InputError(reason)
        info = self._entries[photo_key(name)][0]
        cap = min(info.file_size, self.limits.max_photo_bytes)
        try:
            with self._zip.open(info) as entry:
                data = entry.read(cap + 1)  # the declared size may lie: never read past the cap
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
            raise InputError(f"photo {name!r} cannot be read from {self.name} ({exc.__class__.__name__})") from None
        if len(data) > cap:
            raise InputError(f"photo {name!r} in {self.name} is larger than its entry declares; refused")
        return data


class DirPhotos:
    """Photos in a folder (the CLI's ``--images-dir``), matched by basename, case-insensitively, at any depth."""

    def __init__(self, folder: Path, limits: BatchLimits = BATCH_LIMITS) -> None:
        if not folder.is_dir():
            raise BatchFileError(f"{folder} is not a folder.")
        self.folder, self.limits = folder, limits
        self._entries: dict[str, list[Path]] = {}
        for root, dirs, files in os.walk(folder):  # does not follow symlinked folders
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                if not f.startswith("."):
                    self._entries.setdefault(photo_key(f), []).append(Path(root) / f)

    @property
    def photo_count(self) -> int:
        return len(self._entries)

    def problem(self, name: str) -> str | None:
        found = self._entries.get(photo_key(name))
        if not found:
            return f"photo {name!r} is not in {self.folder}"
        if len(found) > 1:
            return f"photo {name!r} is in {self.folder} {len(found)} times (in different folders): rename one"
        size = found[0].stat().st_size
        if size > self.limits.max_photo_bytes:
            return f"photo {name!r} is {size / 1e6:.1f} MB, over the {self.limits.max_photo_bytes / 1e6:.0f} MB limit"
        return None

    def read(self, name: str) -> bytes:
        reason = self.problem(name)
        if reason is not None:
            raise InputError(reason)
        with self._entries[photo_key(name)][0].open("rb") as fh:
            return fh.read(self.limits.max_photo_bytes + 1)


# -- the CSV --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchRow:
    """One line item of the file; `line` is its line number in the file (the header is line 1)."""

    line: int
    line_ref: str
    description: str
    photos: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class BatchFile:
    """A validated CSV: its rows (with per-row problems) and what was noticed about the file as a whole."""

    rows: tuple[BatchRow, ...]
    encoding: str
    delimiter: str
    columns: tuple[str, ...]  # the file's own header
    blank_lines: tuple[int, ...] = ()
    notices: tuple[str, ...] = field(default=())

    @property
    def valid_rows(self) -> list[BatchRow]:
        return [r for r in self.rows if r.ok]

    @property
    def invalid_rows(self) -> list[BatchRow]:
        return [r for r in self.rows if not r.ok]


def decode_csv(data: bytes) -> tuple[str, str, list[str]]:
    """Bytes -> text, the encoding used, and notices. UTF-8 (with or without BOM), UTF-16 with BOM, else Latin-1.

    Raises:
        BatchFileError: an Excel workbook or another binary file.
    """
    if data.startswith(b"PK\x03\x04"):
        raise BatchFileError(
            "This is an Excel workbook or a zip, not a CSV file. In Excel use File > Save As > 'CSV UTF-8'."
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16", ["The file is UTF-16 (Excel 'Unicode text'); it was read as such."]
        except UnicodeDecodeError:
            raise BatchFileError("The file starts like UTF-16 but does not decode as UTF-16.") from None
    if b"\x00" in data[:65536]:
        raise BatchFileError(
            "The file contains NUL bytes: it is binary or UTF-16 without a byte-order mark. Save it as 'CSV UTF-8'."
        )
    bom = data.startswith(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8-sig"), "utf-8-sig" if bom else "utf-8", []
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
    for encoding, label in (("cp1252", "Windows-1252 (Latin-1)"), ("latin-1", "Latin-1 (ISO-8859-1)")):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if bom:
            text = text.removeprefix("\u00ef\u00bb\u00bf")
        notice = (
            f"The file is not valid UTF-8 (first bad byte on line {line}); it was read as {label}. "
            "Check accented letters in the results, or save the file as 'CSV UTF-8'."
        )
        return text, encoding, [notice]
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def _normalise_header(name: str) -> str:
    return re.sub(r"[\s\-.]+", "_", name.strip().casefold()).strip("_")


def _sniff_delimiter(text: str) -> str:
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    counts = {d: len(next(csv.reader([first], delimiter=d), [])) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: (counts[d], d == ","))


def clean_description(text: str) -> str:
    """The description as the model and the database see it (control characters out, outer spaces off)."""
    return CONTROL_CHARACTERS.sub(" ", text).strip()


def split_photo_names(cell: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in cell.split(";") if n.strip())


def read_batch_csv(
    data: bytes, photos: PhotoSource | None = None, limits: BatchLimits = BATCH_LIMITS, name: str = "the CSV"
) -> BatchFile:
    """Validate a batch CSV (and its photo names against `photos`); file-level problems raise.

    Row problems (no line reference, a reference over 64 characters, a duplicate reference, a description over
    the limit, nothing to classify, too many photos, photo names not in the zip or folder) are attached to the
    row, which is then skipped by the run. Blank lines are skipped and listed.

    Raises:
        BatchFileError: too large, not a CSV, no header, missing columns, or more rows than one run takes.
    """
    if len(data) > limits.max_csv_bytes:
        raise BatchFileError(
            f"{name} is {len(data) / 1e6:,.1f} MB; the limit is {limits.max_csv_bytes / 1e6:,.0f} MB "
            f"(about {limits.max_rows:,} rows). Split it into smaller files."
        )
    if not data.strip():
        raise BatchFileError(f"{name} is empty.")
    text, encoding, notices = decode_csv(data)
    delimiter = _sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    blank: list[int] = []
    raw_rows: list[tuple[int, list[str]]] = []
    total = 0
    previous_end = 0
    try:
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                if header is not None:
                    blank.append(start)
                continue
            if header is None:
                header = record
                continue
            total += 1
            if total <= limits.max_rows:
                raw_rows.append((start, record))
    except csv.Error as exc:
        raise BatchFileError(f"{name} is not a readable CSV file (line {reader.line_num}: {exc}).") from None
    if header is None:
        raise BatchFileError(f"{name} has no header line.")
    if total > limits.max_rows:
        files = math.ceil(total / limits.max_rows)
        raise BatchFileError(
            f"{name} has {total:,} line items; one run takes at most {limits.max_rows:,}. "
            f"Split it into {files:,} files of up to {limits.max_rows:,} rows and run them one after another."
        )
    if total == 0:
        raise BatchFileError(f"{name} has a header but no line items.")

    index = _column_index(header)

    def cells(record: list[str]) -> tuple[str, str, str]:
        found = [index.get(c) for c in ("line_ref", "description", "photos")]
        return tuple(record[i] if i is not None and i < len(record) else "" for i in found)  # type: ignore[return-value]

    rows = check_rows(((line, *cells(record)) for line, record in raw_rows), photos, limits)
    if blank:
        shown = ", ".join(str(n) for n in blank[:10]) + (" …" if len(blank) > 10 else "")
        notices.append(f"{len(blank)} blank line{'s' if len(blank) != 1 else ''} skipped (line {shown}).")
    return BatchFile(tuple(rows), encoding, delimiter, tuple(header), tuple(blank), tuple(notices))


def check_rows(
    records: Iterable[tuple[int, str, str, str]], photos: PhotoSource | None = None, limits: BatchLimits = BATCH_LIMITS
) -> list[BatchRow]:
    """Validate (line, line_ref, description, photos cell) records: each row's own checks, then duplicate references.

    The one row check of every batch path (the CSV here, Parquet and catalogue runs in `hs_model.ray_batch`).
    """
    first_line_of_ref: dict[str, int] = {}
    rows = []
    for line, ref, description, photo_cell in records:
        row = _check_row(line, ref, description, photo_cell, photos, limits)
        if row.line_ref:
            if row.line_ref in first_line_of_ref:
                dup = f"line reference {row.line_ref!r} is also on line {first_line_of_ref[row.line_ref]}"
                row = BatchRow(line, row.line_ref, row.description, row.photos, (*row.problems, dup))
            else:
                first_line_of_ref[row.line_ref] = line
        rows.append(row)
    return rows


def column_index(header: Sequence[str]) -> dict[str, int]:
    """Where each known column is in a header (aliases accepted); raises BatchFileError when one is missing."""
    return _column_index(list(header))


def _column_index(header: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, raw in enumerate(header):
        norm = _normalise_header(raw)
        for column, aliases in COLUMN_ALIASES.items():
            if norm in aliases:
                if column in index:
                    raise BatchFileError(
                        f"Two columns mean the same thing: {header[index[column]]!r} and {raw!r}. Keep one."
                    )
                index[column] = i
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if missing:
        found = ", ".join(repr(h) for h in header) or "none"
        wanted = "; ".join(f"{c} (or {', '.join(repr(a) for a in COLUMN_ALIASES[c][1:4])})" for c in missing)
        raise BatchFileError(
            f"Missing column{'s' if len(missing) > 1 else ''}: {wanted}. The header has: {found}. "
            "Expected columns: line_ref, description, and optionally photos (file names separated by ';')."
        )
    return index


def _check_row(
    line: int, ref: str, description: str, photo_cell: str, photos: PhotoSource | None, limits: BatchLimits
) -> BatchRow:
    problems = []
    ref = clean_description(ref)
    if not ref:
        problems.append("no line reference")
    elif len(ref) > limits.max_ref_chars:
        problems.append(f"line reference has {len(ref)} characters; the limit is {limits.max_ref_chars}")
    text = clean_description(description)
    if len(text) > limits.max_text_chars:
        problems.append(f"description has {len(text):,} characters; the limit is {limits.max_text_chars:,}")
    names = split_photo_names(photo_cell)
    if len(names) > limits.max_photos_per_row:
        problems.append(f"{len(names)} photos; at most {limits.max_photos_per_row} per line")
    elif names and photos is None:
        problems.append("photos are listed but no zip (or folder) of photos was given")
    elif names and photos is not None:
        problems += [p for p in (photos.problem(n) for n in names) if p]
    if not text and not names:
        problems.append("nothing to classify: no description and no photo")
    return BatchRow(line, ref, text, names, tuple(problems))


def content_key(description: str, photo_sha256: Sequence[str]) -> str:
    """Hash of what a line item is made of: its cleaned description and its photos' SHA-256, in order."""
    h = hashlib.sha256(description.encode("utf-8"))
    for digest in photo_sha256:
        h.update(b"\x00" + digest.encode("ascii"))
    return h.hexdigest()


# -- running the model --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowOutcome:
    """The model's answer for one row, or why there is none. `photos` are the (name, bytes) that were used."""

    row: BatchRow
    prediction: Prediction | None = None
    error: str | None = None
    photos: tuple[tuple[str, bytes], ...] = ()


def default_workers() -> int:
    """Photo-decoding threads: one per core the process may use, at least 2, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 2
    return max(2, min(8, cores))


def _decode_row(row: BatchRow, photos: PhotoSource | None) -> tuple[tuple[tuple[str, bytes], ...], list[Image.Image]]:
    raw = tuple((n, photos.read(n)) for n in row.photos) if row.photos and photos is not None else ()
    return raw, [load_image(data, name) for name, data in raw]


def classify_rows(
    classifier: Classifier,
    rows: Sequence[BatchRow],
    photos: PhotoSource | None = None,
    *,
    top_k: int = 5,
    chunk_size: int = 32,
    workers: int | None = None,
) -> Generator[list[RowOutcome], None, None]:
    """Run the model over the valid rows, a chunk at a time; yields each chunk's outcomes, in row order.

    Photos are read and decoded in worker threads, one chunk ahead of the model. A row whose photo cannot be
    decoded gets an error; the others run. The caller may stop between chunks (stop iterating): nothing of the
    next chunk has reached the model then.
    """
    from hs_model.predict import Query, validate_query

    todo = [r for r in rows if r.ok]
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="hs-decode") as pool:

        def submit(chunk: list[BatchRow]) -> list[Future[tuple[tuple[tuple[str, bytes], ...], list[Image.Image]]]]:
            return [pool.submit(_decode_row, r, photos) for r in chunk]

        pending = submit(chunks[0])
        for k, chunk in enumerate(chunks):
            decoded, pending = pending, (submit(chunks[k + 1]) if k + 1 < len(chunks) else [])
            outcomes: list[RowOutcome | None] = [None] * len(chunk)
            ready: list[tuple[int, Query, tuple[tuple[str, bytes], ...]]] = []
            for i, (row, future) in enumerate(zip(chunk, decoded, strict=True)):
                try:
                    raw, images = future.result()
                    text = validate_query(row.description, images) or None
                except InputError as exc:
                    outcomes[i] = RowOutcome(row, error=str(exc))
                    continue
                ready.append((i, Query(text, tuple(images)), raw))
            for (i, _, raw), result in zip(ready, _predict(classifier, [q for _, q, _ in ready], top_k), strict=True):
                prediction, error = result
                outcomes[i] = RowOutcome(chunk[i], prediction, error, raw if prediction is not None else ())
            yield [o for o in outcomes if o is not None]


def _predict(classifier: Classifier, queries: list[Query], top_k: int) -> list[tuple[Prediction | None, str | None]]:
    """One batched call; if it refuses, one call per query so that only the bad one fails."""
    if not queries:
        return []
    try:
        return [(p, None) for p in classifier.predict_batch(queries, top_k=top_k)]
    except Exception:  # noqa: BLE001 - find the row that broke the batch; the others still run
        log.warning("batched prediction failed; retrying the %d rows one by one", len(queries), exc_info=True)
    out: list[tuple[Prediction | None, str | None]] = []
    for q in queries:
        try:
            out.append((classifier.predict_batch([q], top_k=top_k)[0], None))
        except InputError as exc:
            out.append((None, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bad row never stops the run
            log.exception("prediction failed for one row")
            out.append((None, f"the model failed on this line ({exc.__class__.__name__})"))
    return out


# -- results --------------------------------------------------------------------------------------------------------


def result_record(
    row: BatchRow, prediction: Prediction | None, error: str | None = None, *, digits: int | None = 4, **extra: Any
) -> dict[str, Any]:
    """One output row: the top-3 subheadings with scores, the best heading and chapter, the review flag.

    Scores are rounded to `digits` decimals (None: full precision, as catalogue runs write them).
    """
    rec: dict[str, Any] = {c: None for c in RESULT_COLUMNS}
    rec.update(line=row.line, line_ref=row.line_ref, description=row.description, photos=";".join(row.photos))

    def score(value: float) -> float:
        return value if digits is None else round(value, digits)

    if prediction is not None:
        for rank, cand in enumerate(prediction.levels[6][:3], start=1):
            rec[f"code_{rank}"], rec[f"score_{rank}"] = cand.code, score(cand.score)
        rec["description_1"] = prediction.levels[6][0].description
        for level, key in ((4, "heading"), (2, "chapter")):
            best = prediction.levels[level][0]
            rec[key], rec[f"{key}_score"], rec[f"{key}_description"] = best.code, score(best.score), best.description
        rec["needs_review"] = bool(prediction.needs_review)
        summary = getattr(prediction, "precedent_summary", None)  # resumed rows carry a stored prediction
        rec["precedents"] = summary(prediction.levels[6][0].code) if summary else None
        rec["model_version"] = prediction.model_version
        guidance = getattr(prediction, "guidance", None)
        if guidance is not None:
            asked = [q for q in guidance.questions if q.evidence is None and q.key not in guidance.answers]
            if asked:
                rec["question"] = f"{asked[0].text} [{' | '.join(label for _, label in asked[0].options)}]"
            rec["evidence"] = "; ".join(f"{e.words} -> {e.label}" for e in guidance.evidence) or None
    rec["error"] = error if error else ("; ".join(row.problems) or None)
    rec.update(extra)
    return rec


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return value
    return neutralise_formula(str(value))


CODE_COLUMNS = frozenset(
    {"code_1", "code_2", "code_3", "heading", "chapter", "submitted_code", "final_code", "record_code"}
)


def _code_cell(value: Any) -> Any:
    """A code column's CSV cell: digits as text a spreadsheet keeps (`hs_core.text.excel_text_code`)."""
    return excel_text_code(str(value)) if isinstance(value, str) and value else _cell(value)


def results_csv(records: Iterable[Mapping[str, Any]], columns: Sequence[str] = RESULT_COLUMNS) -> bytes:
    """Result rows as CSV bytes, UTF-8 with a BOM (Excel reads accents right); formula-like cells neutralised.

    Codes are written in the dotted form as text a spreadsheet keeps (``="0101.21"``, see `hs_core.text.excel_text_code`).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    for rec in records:
        writer.writerow([_code_cell(rec.get(c)) if c in CODE_COLUMNS else _cell(rec.get(c)) for c in columns])
    return buf.getvalue().encode("utf-8-sig")


def results_xlsx(records: Iterable[Mapping[str, Any]], columns: Sequence[str] = RESULT_COLUMNS) -> bytes:
    """Result rows as an XLSX workbook, ready to read in Excel.

    Every text cell is stored as text (codes in the dotted form "0101.21", leading zeros kept, never a formula);
    each column is as wide as its content (within limits), the header row is bold, frozen and has a filter.
    """
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.worksheet import Worksheet

    book = Workbook(write_only=False)
    sheet = book.active
    assert isinstance(sheet, Worksheet)  # a new workbook that is not write-only has one worksheet
    sheet.title = "results"
    sheet.append(list(columns))
    for c in sheet[1]:
        c.font = Font(bold=True)
    for r, rec in enumerate(records, start=2):
        for col, key in enumerate(columns, start=1):
            value = rec.get(key)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "yes" if value else "no"
            if key in CODE_COLUMNS and isinstance(value, str):
                value = format_digits(value)
            cell = sheet.cell(row=r, column=col, value=value if isinstance(value, int | float) else None)
            if not isinstance(value, int | float):
                cell.value = xlsx_safe(str(value))
                cell.data_type = "s"  # never a formula, even when it starts with '='
    sheet.freeze_panes = "A2"
    sheet.auto_filter.ref = sheet.dimensions
    for col, key in enumerate(columns, start=1):
        longest = max(len(str(c.value)) for (c,) in sheet.iter_rows(min_col=col, max_col=col) if c.value is not None)
        width = max(len(key), longest) + 2
        sheet.column_dimensions[get_column_letter(col)].width = min(XLSX_MAX_WIDTH, max(XLSX_MIN_WIDTH, width))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


XLSX_MIN_WIDTH, XLSX_MAX_WIDTH = 8, 60  # characters; longer texts wrap at the cell's edge in Excel


def write_results(records: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str] = RESULT_COLUMNS) -> None:
    """Write results to `.csv` or `.xlsx` (by the suffix), through a temporary file."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        raise InputError(f"{path}: the output must end in .csv or .xlsx.")
    data = results_csv(records, columns) if suffix == ".csv" else results_xlsx(records, columns)
    atomic_write_bytes(path, data)


def seconds_left(done: int, total: int, elapsed_s: float) -> float | None:
    """Estimate of the time left from the rate so far (None before the first rows are done)."""
    if done <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, (total - done) * elapsed_s / done)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
