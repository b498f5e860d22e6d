"""Texts per HS code for label prototypes: official texts, US tariff lines, UK common names and synonyms."""

from __future__ import annotations

import csv
import html
import json
import logging
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from hs_core.nomenclature import get_nomenclature

logger = logging.getLogger(__name__)

US_HTS_DIR = Path("nomenclature_texts/us_hts_2025")
UK_REFERENCES = Path("nomenclature_texts/uk_search_references.json")
UK_LABELLED_DIR = Path("nomenclature_texts/uk_labelled_commodities")
DEFAULT_MAX_PER_CODE = 24

_TAG = re.compile(r"<[^>]*>")
_TEXTILE_CATEGORY = re.compile(r"\s*\(\d{3}\)$")  # US quota category suffix, e.g. "Men's (338)"
_ONLY_OTHER = re.compile(r"Other(?:: Other)*", re.IGNORECASE)  # a path that carries no words at all
_NEAR_DUPLICATE = 0.8  # token Jaccard above which two texts count as the same for the cap
# UK kinds in the order `uk_texts` lists them; each becomes its own stream when capping.
_UK_KINDS = ("reference", "description", "synonym", "brand")


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def _add_unique(bucket: list[str], seen: set[str], text: str) -> None:
    text = " ".join(text.split())
    if text and _key(text) not in seen:
        seen.add(_key(text))
        bucket.append(text)


def official_texts() -> dict[str, list[str]]:
    """The official HS 2022 text of each of the 5,612 subheadings, as a one-item list (no data folder needed)."""
    return {code.digits: [code.description] for code in get_nomenclature().subheadings}


def heading_texts() -> dict[str, str]:
    """Heading digits -> official HS 2022 heading text."""
    return {code.digits: code.description for code in get_nomenclature().headings}


def chapter_texts() -> dict[str, str]:
    """Chapter digits -> official HS 2022 chapter text."""
    return {code.digits: code.description for code in get_nomenclature().chapters}


def _clean_us(text: str) -> str:
    text = html.unescape(_TAG.sub("", text))
    text = " ".join(text.split())
    return _TEXTILE_CATEGORY.sub("", text).strip().rstrip(":").strip()


def us_lines(rows: Iterable[Mapping[str, str]]) -> list[tuple[str, str]]:
    """Rebuild the full path of each 8/10-digit line of one US HTS chapter table.

    Group rows (empty `HTS Number`, e.g. "Other:") and numbered rows alike sit at their `Indent`;
    a line's path is every open row from indent 1 down to itself (the indent-0 heading text is left
    out: it is the heading's own text, kept as a separate level; a line at indent 0 keeps its own text). Segments lose HTML tags, US
    textile category suffixes such as "(338)" and trailing colons, and are joined with ": ".

    Args:
        rows: the CSV rows in file order, with keys `HTS Number`, `Indent`, `Description`.

    Returns:
        (digits of the national line, path text) for every line of 8 or more digits.
    """
    open_rows: list[str] = []
    lines = []
    for row in rows:
        try:
            indent = int(row["Indent"])
        except (TypeError, ValueError):
            continue
        del open_rows[indent:]
        open_rows.extend([""] * (indent - len(open_rows)))  # a gap in the indents: keep positions
        own = _clean_us(row.get("Description") or "")
        open_rows.append(own)
        digits = re.sub(r"\D", "", row.get("HTS Number") or "")
        if len(digits) >= 8 and own:
            # A line at indent 0 (a heading with no subdivision, e.g. 0409.00.00) is its own path.
            lines.append((digits, ": ".join(part for part in [*open_rows[1:-1], own] if part)))
    return lines


def us_hts_texts(data_dir: Path) -> dict[str, list[str]]:
    """US HTS 2025 tariff lines attached to the HS6 of their first 6 digits (chapter 85 is missing there).

    Args:
        data_dir: the shared data folder (`../shared/data`).

    Returns:
        HS6 digits -> de-duplicated line paths such as "Of cotton: Men's or boys': Other T-shirts: Men's";
        paths that say only "Other" (or "Other: Other", ...) are dropped.

    Raises:
        FileNotFoundError: no `chapter-*.csv` under `nomenclature_texts/us_hts_2025`.
    """
    files = sorted((Path(data_dir) / US_HTS_DIR).glob("chapter-*.csv"))
    if not files:
        raise FileNotFoundError(f"no US HTS chapter files in {Path(data_dir) / US_HTS_DIR}")
    subheadings = get_nomenclature().subheading_index
    texts: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    counts = Counter[str]()
    for file in files:
        with file.open(encoding="utf-8-sig", newline="") as handle:
            for digits, path in us_lines(csv.DictReader(handle)):
                counts["lines"] += 1
                hs6 = digits[:6]
                if _ONLY_OTHER.fullmatch(path):
                    counts["dropped: only 'Other'"] += 1
                    continue
                if hs6 not in subheadings:
                    counts["dropped: HS6 not in HS 2022"] += 1
                    continue
                _add_unique(texts.setdefault(hs6, []), seen.setdefault(hs6, set()), path)
    logger.info(
        "US HTS texts: %d files, %d lines read, dropped %d whose HS6 is not in HS 2022 and %d saying only "
        "'Other'; %d distinct texts for %d HS6 codes",
        len(files),
        counts["lines"],
        counts["dropped: HS6 not in HS 2022"],
        counts["dropped: only 'Other'"],
        sum(map(len, texts.values())),
        len(texts),
    )
    return texts


def _uk_texts_by_kind(data_dir: Path) -> dict[str, dict[str, list[str]]]:
    """UK texts per kind (`_UK_KINDS`) and HS6, de-duplicated case-insensitively within each code."""
    subheadings = get_nomenclature().subheading_index
    by_kind: dict[str, dict[str, list[str]]] = {kind: {} for kind in _UK_KINDS}
    seen: dict[str, set[str]] = {}  # per code, across kinds
    counts = Counter[str]()

    def add(kind: str, commodity: object, values: Iterable[object]) -> None:
        digits = str(commodity or "").strip()
        if not (digits.isdigit() and len(digits) >= 6):
            counts["dropped: malformed code"] += 1
            return
        if digits[:6] not in subheadings:
            counts["dropped: HS6 not in HS 2022"] += 1
            return
        bucket = by_kind[kind].setdefault(digits[:6], [])
        for value in values:
            if isinstance(value, str):
                _add_unique(bucket, seen.setdefault(digits[:6], set()), value)

    references = Path(data_dir) / UK_REFERENCES
    labelled = sorted((Path(data_dir) / UK_LABELLED_DIR).glob("*.json"))
    if not references.is_file() and not labelled:
        raise FileNotFoundError(f"no UK texts under {Path(data_dir) / 'nomenclature_texts'}")
    if references.is_file():
        for term, commodity in json.loads(references.read_text(encoding="utf-8")).items():
            counts["references"] += 1
            add("reference", commodity, [term])
    for file in labelled:
        for record in json.loads(file.read_text(encoding="utf-8")):
            counts["labelled records"] += 1
            code = record.get("commodity_code") or record.get("id")
            add("description", code, [record.get("original_description"), record.get("description")])
            add("synonym", code, [*(record.get("synonyms") or []), *(record.get("colloquial_terms") or [])])
            add("brand", code, record.get("known_brands") or [])
    logger.info(
        "UK texts: %d search references, %d labelled records from %d files; dropped %d entries whose HS6 is not "
        "in HS 2022 and %d malformed; %d HS6 codes covered",
        counts["references"],
        counts["labelled records"],
        len(labelled),
        counts["dropped: HS6 not in HS 2022"],
        counts["dropped: malformed code"],
        len(seen),
    )
    return by_kind


def uk_texts(data_dir: Path) -> dict[str, list[str]]:
    """UK common names (search references) and LLM-written descriptions, synonyms, colloquial terms, brands.

    Args:
        data_dir: the shared data folder (`../shared/data`).

    Returns:
        HS6 digits -> texts (references, then descriptions, synonyms and colloquial terms, then brands),
        only for subheadings of HS 2022, de-duplicated case-insensitively.

    Raises:
        FileNotFoundError: neither `uk_search_references.json` nor `uk_labelled_commodities/*.json` exists.
    """
    merged: dict[str, list[str]] = {}
    for kind_texts in _uk_texts_by_kind(data_dir).values():
        for digits, texts in kind_texts.items():
            merged.setdefault(digits, []).extend(texts)
    return merged


def _token_set(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.casefold()))


def _is_near_duplicate(tokens: frozenset[str], chosen: list[frozenset[str]]) -> bool:
    for other in chosen:
        union = len(tokens | other)
        if union and len(tokens & other) / union >= _NEAR_DUPLICATE:
            return True
    return False


def _capped(official: str, streams: list[list[str]], fillers: list[str], max_per_code: int | None) -> list[str]:
    """Official text first, then the streams round-robin, then (if room is left) near-duplicates and fillers."""
    chosen = [official]
    keys = {_key(official)}
    chosen_tokens = [_token_set(official)]
    held_back: list[str] = []
    for i in range(max((len(stream) for stream in streams), default=0)):
        for stream in streams:
            if i >= len(stream) or _key(stream[i]) in keys:
                continue
            tokens = _token_set(stream[i])
            if max_per_code is not None and _is_near_duplicate(tokens, chosen_tokens):
                held_back.append(stream[i])
                continue
            chosen.append(stream[i])
            keys.add(_key(stream[i]))
            chosen_tokens.append(tokens)
    for text in [*held_back, *fillers]:
        if _key(text) not in keys:
            chosen.append(text)
            keys.add(_key(text))
    return chosen if max_per_code is None else chosen[:max_per_code]


def _sources(data_dir: Path | None) -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
    """US texts and UK texts by kind; a missing source is logged and left empty."""
    us: dict[str, list[str]] = {}
    uk: dict[str, dict[str, list[str]]] = {kind: {} for kind in _UK_KINDS}
    if data_dir is None:
        return us, uk
    try:
        us = us_hts_texts(data_dir)
    except FileNotFoundError as error:
        logger.warning("label texts without US tariff lines: %s", error)
    try:
        uk = _uk_texts_by_kind(data_dir)
    except FileNotFoundError as error:
        logger.warning("label texts without UK texts: %s", error)
    return us, uk


def _merge(
    us: dict[str, list[str]], uk: dict[str, dict[str, list[str]]], max_per_code: int | None
) -> dict[str, list[str]]:
    merged = {}
    for digits, (official,) in official_texts().items():
        streams = [us.get(digits, []), *(uk[kind].get(digits, []) for kind in _UK_KINDS if kind != "brand")]
        merged[digits] = _capped(official, streams, uk["brand"].get(digits, []), max_per_code)
    return merged


def code_texts(data_dir: Path | None = None, max_per_code: int | None = DEFAULT_MAX_PER_CODE) -> dict[str, list[str]]:
    """All texts per subheading: the official text first, then US tariff lines and UK texts.

    With a cap, the US lines and the UK references, descriptions and synonyms are taken round-robin,
    and a text whose words nearly repeat one already chosen (token Jaccard >= 0.8) is only used if
    room is left, as are brand names (one brand often sells under many codes: the weakest evidence).

    Args:
        data_dir: the shared data folder; None (or a folder without the texts: logged) gives the
            official texts only, which is what an installed app without `../shared/data` has.
        max_per_code: at most this many texts per code (official included); None keeps all.

    Returns:
        HS6 digits -> texts, for all 5,612 subheadings.
    """
    return _merge(*_sources(data_dir), max_per_code)


def code_documents(data_dir: Path | None = None, max_per_code: int | None = None) -> dict[str, str]:
    """One lexical document per subheading (its texts joined with " ; "), ready for BM25 tokenisation.

    Args:
        data_dir: as for `code_texts`.
        max_per_code: as for `code_texts`; None (the default) keeps every text, which suits BM25.

    Returns:
        HS6 digits -> document.
    """
    return {digits: " ; ".join(texts) for digits, texts in code_texts(data_dir, max_per_code).items()}


def stats(data_dir: Path | None = None, max_per_code: int | None = DEFAULT_MAX_PER_CODE) -> dict[str, object]:
    """Coverage and size of the label texts, for logs and the model card.

    Args:
        data_dir: as for `code_texts`.
        max_per_code: as for `code_texts`.

    Returns:
        Plain numbers: codes, total texts, texts per code (min / median / mean / max), codes covered by
        US and by UK texts, and codes left with their official text only.
    """
    us, uk = _sources(data_dir)
    sizes = [len(texts) for texts in _merge(us, uk, max_per_code).values()]
    return {
        "codes": len(sizes),
        "texts": sum(sizes),
        "per_code": {
            "min": min(sizes),
            "median": statistics.median(sizes),
            "mean": round(statistics.fmean(sizes), 2),
            "max": max(sizes),
        },
        "max_per_code": max_per_code,
        "codes_with_us_texts": len(us),
        "codes_with_uk_texts": len({digits for kind in uk.values() for digits in kind}),
        "codes_with_official_text_only": sum(1 for size in sizes if size == 1),
    }
