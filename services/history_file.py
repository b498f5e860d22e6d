"""Read and check a classification history file (CSV or XLSX of past declarations) row by row, before anything is
written: every problem is reported with its line, and a file with any problem is refused as a whole."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from hs_core.limits import LIMITS, sniff_image
from hs_core.nomenclature import EDITION, get_nomenclature
from hs_core.text import CONTROL_CHARACTERS, LINE_CONTROL_CHARACTERS
from hs_model.batch import BatchFileError, ZipPhotos
from hs_model.errors import InputError
from services.history_match import normalise

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_ROWS = 1_000_000
MAX_SKU_CHARS = 64
MAX_IMPORTER_CHARS = 128
MAX_ERRORS_LISTED = 1_000
# Header names accepted for each field (case, spaces, dashes and underscores ignored).
COLUMNS: dict[str, tuple[str, ...]] = {
    "description": ("description", "goodsdescription", "goods", "productdescription", "title", "product"),
    "code": ("code", "hscode", "hs", "commoditycode", "tariffcode", "hts", "htscode", "cn", "cncode"),
    "sku": ("sku", "articlenumber", "partnumber", "productcode", "itemcode", "reference"),
    "importer": ("importer", "importerid", "eori", "consignee", "customer"),
    "date": ("date", "declarationdate", "declaredon", "entrydate"),
    "photos": ("photos", "photo", "images", "image"),
}
REQUIRED = ("description", "code")


@dataclass(frozen=True)
class RowProblem:
    line: int
    problem: str


@dataclass(frozen=True)
class CheckedRow:
    """A valid row, ready to store."""

    line: int
    description: str
    normalised: str
    code: str  # digits as declared (6, 8 or 10)
    hs6: str
    sku: str | None
    importer: str | None
    declared_on: str | None
    photos: tuple[str, ...]  # names inside the photos zip


@dataclass
class HistoryFile:
    """A checked file: its valid rows and every problem (line numbers as a spreadsheet shows them)."""

    name: str
    sha256: str
    rows: list[CheckedRow] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    ignored_columns: tuple[str, ...] = ()
    total_problems: int = 0

    @property
    def ok(self) -> bool:
        return self.total_problems == 0 and bool(self.rows)

    def problem(self, line: int, text: str) -> None:
        self.total_problems += 1
        if len(self.problems) < MAX_ERRORS_LISTED:
            self.problems.append(RowProblem(line, text))


class HistoryFileError(ValueError):
    """The file as a whole cannot be read (format, size, header); the message says why."""


def _key(header: str) -> str:
    return re.sub(r"[\s_\-./]+", "", (header or "").strip().casefold())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _read_table(name: str, data: bytes) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line, cells)`` rows of a CSV (UTF-8, comma or semicolon) or an XLSX (first sheet)."""
    if data[:4] == b"PK\x03\x04" or name.casefold().endswith(".xlsx"):
        return _read_xlsx(name, data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HistoryFileError(f"{name}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8.") from None
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise HistoryFileError(f"{name}: the file is empty.")
        rows: list[tuple[int, list[str]]] = []
        for cells in reader:
            if len(rows) >= MAX_ROWS:
                raise HistoryFileError(f"{name}: more than {MAX_ROWS:,} rows; split the file.")
            rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise HistoryFileError(f"{name}: unreadable CSV at line {reader.line_num}: {exc}.") from None
    return header, rows


def _read_xlsx(name: str, data: bytes) -> tuple[list[str], list[tuple[int, list[str]]]]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds for a broken file
        raise HistoryFileError(f"{name}: not a readable XLSX workbook ({type(exc).__name__}).") from None
    try:
        sheet = book.worksheets[0]
        it = sheet.iter_rows(values_only=True)
        first = next(it, None)
        if first is None:
            raise HistoryFileError(f"{name}: the first sheet is empty.")
        rows: list[tuple[int, list[str]]] = []
        for number, values in enumerate(it, start=2):
            if len(rows) >= MAX_ROWS:
                raise HistoryFileError(f"{name}: more than {MAX_ROWS:,} rows; split the file.")
            rows.append((number, [_cell(v) for v in values]))
        return [_cell(v) for v in first], rows
    finally:
        book.close()


def _parse_date(raw: str) -> str:
    raw = raw.strip()
    for fmt in ("%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y", "%Y/%m/%d"):
        try:
            return datetime.strptime(raw[:10] if fmt == "%Y-%m-%d" else raw, fmt).date().isoformat()
        except ValueError:
            continue
    raise ValueError(f"date {raw!r} is not a date (use YYYY-MM-DD or DD/MM/YYYY)")


def _check_code(raw: str) -> tuple[str, str]:
    digits = re.sub(r"[\s.]", "", raw)
    if not digits:
        raise ValueError("no HS code")
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"HS code {raw!r} is not digits")
    if len(digits) not in (6, 8, 10):
        raise ValueError(f"HS code {raw!r} has {len(digits)} digits; give 6, 8 or 10 (a subheading or a national line)")
    hs6 = digits[:6]
    if not get_nomenclature().is_valid(hs6):
        raise ValueError(f"{hs6[:4]}.{hs6[4:]} (from {raw!r}) is not a subheading of {EDITION}")
    return digits, hs6


def _one_line(value: str, what: str, limit: int) -> str | None:
    value = value.strip()
    if LINE_CONTROL_CHARACTERS.search(value):
        raise ValueError(f"the {what} contains control characters")
    if len(value) > limit:
        raise ValueError(f"the {what} has {len(value)} characters; the limit is {limit}")
    return value or None


def check_history_file(
    name: str, data: bytes, photos: ZipPhotos | None = None, today: date | None = None
) -> HistoryFile:
    """Read and check every row; nothing is written. Formula-like text (``=HYPERLINK(...)``) is kept as text.

    Raises:
        HistoryFileError: The file cannot be read at all (size, format, encoding, header).
    """
    if len(data) > MAX_FILE_BYTES:
        raise HistoryFileError(f"{name}: {len(data) / 1e6:,.0f} MB is over the {MAX_FILE_BYTES / 1e6:,.0f} MB limit.")
    out = HistoryFile(name=name, sha256=hashlib.sha256(data).hexdigest())
    header, rows = _read_table(name, data)
    where: dict[str, int] = {}
    ignored = []
    for i, head in enumerate(header):
        found = next((f for f, names in COLUMNS.items() if _key(head) in names), None)
        if found is None or found in where:
            if head.strip():
                ignored.append(head.strip())
            continue
        where[found] = i
    missing = [f for f in REQUIRED if f not in where]
    if missing:
        raise HistoryFileError(
            f"{name}: no {' and no '.join(missing)} column in the header ({', '.join(h for h in header if h)}); "
            "name them e.g. description, code (optional: sku, importer, date, photos)."
        )
    out.ignored_columns = tuple(ignored)
    today = today or date.today()
    seen: dict[tuple[str, str, str, str], int] = {}
    for line, cells in rows:
        if not any(c.strip() for c in cells):
            continue  # blank lines are not rows

        def get(f: str, cells: list[str] = cells) -> str:
            return cells[where[f]] if f in where and where[f] < len(cells) else ""

        errors = []
        description = CONTROL_CHARACTERS.sub(" ", get("description")).strip()
        if not description:
            errors.append("empty description")
        elif len(description) > LIMITS.max_text_chars:
            errors.append(f"description has {len(description):,} characters; the limit is {LIMITS.max_text_chars:,}")
        code = hs6 = ""
        try:
            code, hs6 = _check_code(get("code"))
        except ValueError as exc:
            errors.append(str(exc))
        sku = importer = declared = None
        try:
            sku = _one_line(get("sku"), "SKU", MAX_SKU_CHARS)
            importer = _one_line(get("importer"), "importer", MAX_IMPORTER_CHARS)
        except ValueError as exc:
            errors.append(str(exc))
        if get("date").strip():
            try:
                declared = _parse_date(get("date"))
                if declared > today.isoformat():
                    errors.append(f"date {declared} is in the future")
            except ValueError as exc:
                errors.append(str(exc))
        names = tuple(n.strip() for n in re.split(r"[;|]", get("photos")) if n.strip())
        if len(names) > LIMITS.max_images:
            errors.append(f"{len(names)} photos; at most {LIMITS.max_images} per row")
        for photo in names:
            problem = _photo_problem(photos, photo)
            if problem:
                errors.append(problem)
        normalised = normalise(description)
        key = (normalised, hs6, (sku or "").casefold(), (importer or "").casefold())
        if not errors and key in seen:
            errors.append(f"duplicate of line {seen[key]} (same description, code, SKU and importer)")
        for e in errors:
            out.problem(line, e)
        if errors:
            continue
        seen[key] = line
        out.rows.append(CheckedRow(line, description, normalised, code, hs6, sku, importer, declared, names))
    if not out.rows and not out.total_problems:
        raise HistoryFileError(f"{name}: no rows under the header.")
    return out


def _photo_problem(photos: ZipPhotos | None, name: str) -> str | None:
    if photos is None:
        return f"photo {name!r} named but no photos zip given"
    problem = photos.problem(name)
    if problem:
        return problem
    try:
        data = photos.read(name)
    except InputError as exc:
        return str(exc)
    if len(data) > LIMITS.max_image_bytes:
        return f"photo {name!r} is over the {LIMITS.max_image_bytes // (1024 * 1024)} MB limit"
    try:
        sniff_image(data)
    except ValueError as exc:
        return f"photo {name!r}: {exc}"
    return None


def open_photos(name: str, data: bytes) -> ZipPhotos:
    """The photos zip, checked as Batch checks its zips (size, entries, zip bombs, paths).

    Raises:
        HistoryFileError: The zip is refused (the message says why).
    """
    try:
        return ZipPhotos(data, name)
    except BatchFileError as exc:
        raise HistoryFileError(str(exc)) from None
