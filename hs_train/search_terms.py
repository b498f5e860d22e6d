"""Build the trade-name index the HS tree search ships with (``assets/search_terms.json.gz``).

    python -m hs_train.search_terms --data-dir ../shared/data --out assets/search_terms.json.gz

Each term (a common name or a national tariff line's own words) maps to the HS 2022 subheadings it names:
HMRC's curated search references ("rucksacks" -> 4202.92), and the specific end of each US HTS 2025 tariff
line ("Backpacks" under 4202.92). Only sources whose licence allows shipping the text are used (HMRC search
references: MIT; US HTS: US-government public domain); the LLM-written HMRC labelled commodities carry no
licence and stay out. Codes not in the HS 2022 nomenclature are dropped.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import re
from collections import defaultdict
from pathlib import Path

from hs_core.nomenclature import get_nomenclature

log = logging.getLogger(__name__)

_VAGUE = re.compile(r"^(other|others|parts|of [a-z ,]+|nesoi|not elsewhere specified.*)$", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
MAX_TERM_CHARS = 120


def _clean(term: str) -> str:
    return _SPACE.sub(" ", term.replace(":", " ")).strip().strip(",;.").lower()


def uk_search_references(data_dir: Path) -> dict[str, set[str]]:
    raw = json.loads((data_dir / "nomenclature_texts" / "uk_search_references.json").read_text(encoding="utf-8"))
    out: dict[str, set[str]] = defaultdict(set)
    for term, code in raw.items():
        out[_clean(term)].add(str(code)[:6])
    return out


def us_hts_lines(data_dir: Path) -> dict[str, set[str]]:
    """The specific text of each 8/10-digit US line (no "Other", no bare material fragments)."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in sorted((data_dir / "nomenclature_texts" / "us_hts_2025").glob("chapter-*.csv")):
        with path.open(encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f):
                digits = re.sub(r"\D", "", row.get("HTS Number") or "")
                text = _clean(re.sub(r"\(con\.\)|\(\d+\)", "", row.get("Description") or ""))
                if len(digits) < 8 or not text or _VAGUE.match(text) or len(text) > MAX_TERM_CHARS:
                    continue
                out[text].add(digits[:6])
    return out


def build(data_dir: Path) -> dict:
    valid = {c.digits for c in get_nomenclature().subheadings}
    merged: dict[str, set[str]] = defaultdict(set)
    counts = {}
    for name, part in (
        ("uk_search_references", uk_search_references(data_dir)),
        ("us_hts_2025", us_hts_lines(data_dir)),
    ):
        kept = 0
        for term, codes in part.items():
            good = codes & valid
            if term and good:
                merged[term] |= good
                kept += 1
        counts[name] = kept
    terms = [[term, sorted(codes)] for term, codes in sorted(merged.items())]
    return {"edition": "HS2022", "sources": counts, "terms": terms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("assets/search_terms.json.gz"))
    args = parser.parse_args(argv)
    index = build(args.data_dir)
    payload = json.dumps(index, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    args.out.write_bytes(gzip.compress(payload, compresslevel=9, mtime=0))
    print(f"{len(index['terms']):,} terms from {index['sources']} -> {args.out} ({args.out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
