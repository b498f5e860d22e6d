"""Text safety shared by every layer: control characters, spreadsheet formulas, characters XLSX cannot hold."""

from __future__ import annotations

import re

from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

# C0 controls and DEL, except tab, newline and carriage return: what a multi-line description may keep.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Every C0 control and DEL: what a one-line field (a user name, a reference) may not hold at all.
LINE_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# OWASP CSV injection: a spreadsheet evaluates cells that start with these.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def clean_text(text: str | None) -> str:
    """Control characters (other than tab and line breaks) become spaces; surrounding blanks go."""
    return CONTROL_CHARACTERS.sub(" ", text or "").strip()


def neutralise_formula(value: str) -> str:
    """Prefix a single quote to text a spreadsheet would run as a formula."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def xlsx_safe(value: str) -> str:
    """Replace the characters an XLSX file cannot store (openpyxl's own list) with spaces."""
    return ILLEGAL_CHARACTERS_RE.sub(" ", value)
