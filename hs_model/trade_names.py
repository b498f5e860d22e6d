"""Trade names and synonyms for the HS tree search ("rucksack", "phone case" -> their subheadings).

Reads ``assets/search_terms.json.gz`` (built by ``python -m hs_train.search_terms`` from HMRC's search references
and the US HTS tariff lines; about 10,700 terms, 160 kB). A query matches a term when every word of the query is a
word of the term, singular or plural; the exact term ranks first, then shorter terms.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hs_core.settings import ASSETS_DIR

SEARCH_TERMS = ASSETS_DIR / "search_terms.json.gz"
_WORD = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    """Crude singular: "cases" -> "case", "watches" -> "watch", "glasses" -> "glass"; short words stay."""
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _stems(text: str) -> tuple[str, ...]:
    return tuple(_stem(w) for w in _WORD.findall(text.lower()))


@dataclass(frozen=True)
class TradeNameHit:
    """A subheading named by a trade term."""

    code: str  # 6 digits
    term: str


class TradeNames:
    """The shipped terms, indexed by word."""

    def __init__(self, terms: list[tuple[str, list[str]]]) -> None:
        self._terms = terms
        self._stems = [set(_stems(t)) for t, _ in terms]
        postings: defaultdict[str, set[int]] = defaultdict(set)
        for i, stems in enumerate(self._stems):
            for s in stems:
                postings[s].add(i)
        self._postings = dict(postings)

    def __len__(self) -> int:
        return len(self._terms)

    def find(self, query: str, limit: int = 20) -> list[TradeNameHit]:
        """Subheadings whose terms hold every word of ``query``, best first, each code once."""
        words = _stems(query)
        if not words:
            return []
        found = set.intersection(*(self._postings.get(w, set()) for w in words))
        wanted = " ".join(words)
        ranked = sorted(found, key=lambda i: (" ".join(_stems(self._terms[i][0])) != wanted, len(self._terms[i][0])))
        hits: dict[str, TradeNameHit] = {}
        for i in ranked:
            term, codes = self._terms[i]
            for code in codes:
                hits.setdefault(code, TradeNameHit(code, term))
            if len(hits) >= limit:
                break
        return list(hits.values())[:limit]


@functools.cache
def get_trade_names(path: Path = SEARCH_TERMS) -> TradeNames:
    """The shipped index (empty when the asset is missing: the official-text search still works)."""
    if not path.is_file():
        return TradeNames([])
    data = json.loads(gzip.decompress(path.read_bytes()))
    return TradeNames([(t, list(codes)) for t, codes in data["terms"]])
