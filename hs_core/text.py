"""Text safety shared by every layer: control characters, spreadsheet formulas, characters XLSX cannot hold."""

from __future__ import annotations

import re

from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from hs_core.nomenclature import format_digits

# C0 controls and DEL, except tab, newline and carriage return: what a multi-line description may keep.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Every C0 control and DEL: what a one-line field (a user name, a reference) may not hold at all.
LINE_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# OWASP CSV injection: a spreadsheet evaluates cells that start with these.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_CODE_DIGITS = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2})?)?")


def clean_text(text: str | None) -> str:
    """Control characters (other than tab and line breaks) become spaces; surrounding blanks go."""
    return CONTROL_CHARACTERS.sub(" ", text or "").strip()


def neutralise_formula(value: str) -> str:
    """Prefix a single quote to text a spreadsheet would run as a formula."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def xlsx_safe(value: str) -> str:
    """Replace the characters an XLSX file cannot store (openpyxl's own list) with spaces."""
    return ILLEGAL_CHARACTERS_RE.sub(" ", value)


def excel_text_code(code: str) -> str:
    """A code as a CSV cell that Excel and LibreOffice open as text, in the dotted form: ``="0101.21"``.

    A bare ``010121``, or even ``0101.21``, is read as a number by a spreadsheet (the leading zero lost); the
    ``="..."`` form is their documented way to keep a cell text. Only 2, 4 or 6 ASCII digits get it (so the only
    formula cells the app writes are built from digits); anything else is neutralised like every other cell.
    """
    if not _CODE_DIGITS.fullmatch(code):
        return neutralise_formula(code)
    return f'="{format_digits(code)}"'
