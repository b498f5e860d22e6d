"""Dataset loaders and converters: evaluation JSONL, Myntra products, UK parcel texts; plain dataclasses, no torch."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hs_core.nomenclature import get_nomenclature

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]

_ATLAS_PREFIX = "What is the HTS US Code for "
_ATLAS_CODE = re.compile(r"HTS US Code\s*->\s*(\d[\d.]*)")
_BRAND_LEVEL = re.compile(r"only go to (\d+) digits", re.IGNORECASE)
_STYLES_COLUMNS = 10  # id ... productDisplayName; extra fields come from commas inside the name
_WOMEN = frozenset({"Women", "Girls"})


@dataclass(frozen=True)
class Example:
    """One product: text and/or photos with an HS label of 2, 4 or 6 digits (not necessarily in HS 2022)."""

    text: str | None
    images: list[Path]
    hs: str
    source: str
    id: str


def _log_counts(name: str, counts: Counter[str]) -> None:
    dropped = [f"{n} {key.removeprefix('dropped: ')}" for key, n in counts.items() if key.startswith("dropped: ")]
    notes = [f"{n} {key}" for key, n in counts.items() if key not in ("read", "kept") and not key.startswith("dropped")]
    logger.info(
        "%s: %d rows read, %d kept; dropped: %s%s",
        name,
        counts["read"],
        counts["kept"],
        ", ".join(dropped) or "none",
        f"; {', '.join(notes)}" if notes else "",
    )


def _labelled(text: str, code: str, counts: Counter[str]) -> str | None:
    """HS6 of a 6/8/10-digit tariff code when the text is usable and the HS6 is in HS 2022; else count why not.

    Odd lengths are refused: a code read as a number may have lost its leading zero.
    """
    code = code.strip()
    if not text:
        counts["dropped: empty description"] += 1
    elif not (code.isdigit() and len(code) in (6, 8, 10)):
        counts["dropped: malformed code"] += 1
    elif code[:6] not in get_nomenclature().subheading_index:
        counts["dropped: HS6 not in HS 2022"] += 1
    else:
        return code[:6]
    return None


# ---------------------------------------------------------------------------------------------- evaluation files


def _read_jsonl(src: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; ValueError naming the line for anything but an object."""
    with Path(src).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{src}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _eval_example(row: dict, path: Path, number: int) -> Example:
    where = f"{path}:{number}"
    hs = row.get("hs")
    hs = hs.strip().replace(".", "") if isinstance(hs, str) else ""
    if not (hs.isdigit() and len(hs) in (2, 4, 6)):
        raise ValueError(f"{where}: 'hs' must be 2, 4 or 6 digits as a string, e.g. \"610910\", got {row.get('hs')!r}")
    text = row.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}: 'text' must be a string or null, got {type(text).__name__}")
    images = row.get("images") or []
    if not isinstance(images, list) or not all(isinstance(item, str) and item for item in images):
        raise ValueError(f"{where}: 'images' must be a list of file paths")
    text = (text.strip() or None) if text else None
    if text is None and not images:
        raise ValueError(f"{where}: neither text nor images")
    example_id = str(row.get("id") or f"{path.stem}:{number}")
    # An absolute image path stays absolute; a relative one is relative to the JSONL file.
    return Example(text, [path.parent / item for item in images], hs, str(row.get("source") or path.stem), example_id)


def load_eval_jsonl(path: Path) -> list[Example]:
    """Read the project's evaluation format: one `{"text": str|null, "images": [...], "hs": "610910"}` a line.

    Relative image paths are resolved against the JSONL file's folder. Optional `id` and `source`
    keys are kept (defaults: `<file stem>:<line>` and the file stem). Labels are not checked against
    HS 2022: a label that does not exist must count as an error in evaluation, not vanish.

    Args:
        path: the JSONL file.

    Returns:
        The examples in file order (blank lines skipped).

    Raises:
        ValueError: a line that is not a JSON object, has no 2/4/6-digit `hs`, a `text` that is not a
            string or null, `images` that is not a list of strings, or neither text nor images;
            the message names the file and line.
    """
    path = Path(path)
    examples = [_eval_example(row, path, number) for number, row in _read_jsonl(path)]
    missing = sum(1 for example in examples for image in example.images if not image.is_file())
    if missing:
        logger.warning("%s: %d image paths do not exist", path, missing)
    logger.info("%s: %d examples", path, len(examples))
    return examples


def _eval_row(row_id: str, text: str, national: str, source: str) -> dict:
    hs = national[:6]
    in_hs2022 = hs in get_nomenclature().subheading_index
    return {
        "id": row_id,
        "text": text,
        "images": [],
        "hs": hs,
        "hs_national": national,
        "in_hs2022": in_hs2022,
        "source": source,
    }


def _report_outside_hs2022(name: str, rows: list[dict]) -> list[dict]:
    outside = sorted({row["hs"] for row in rows if not row["in_hs2022"]})
    logger.info(
        "%s: %d rows converted, %d with a code not in HS 2022 (kept: evaluation counts them as wrong)%s",
        name,
        len(rows),
        sum(not row["in_hs2022"] for row in rows),
        f": {', '.join(outside)}" if outside else "",
    )
    return rows


def hscodecomp_text(record: Mapping[str, object]) -> str:
    """Title + ". Category: " + de-duplicated category path + ". Material: " + material (the best baseline query)."""
    categories: list[str] = []
    for level in range(1, 6):
        name = str(record.get(f"cate_lv{level}_desc") or "").strip()
        if name and name not in categories:
            categories.append(name)
    text = str(record.get("product_name") or "").strip()
    if categories:
        text += ". Category: " + " > ".join(categories)
    attributes = record.get("product_attributes") or {}
    if isinstance(attributes, str):
        try:
            attributes = json.loads(attributes)
        except json.JSONDecodeError:
            attributes = {}
    material = (
        {str(k).strip(): v for k, v in attributes.items()}.get("Material") if isinstance(attributes, dict) else None
    )
    if isinstance(material, str) and material.strip():
        text += ". Material: " + material.strip()
    return text


def convert_hscodecomp(src: Path) -> list[dict]:
    """Convert HSCodeComp (`eval/hscodecomp.jsonl`) to evaluation rows, keeping every row.

    Args:
        src: the HSCodeComp JSONL file.

    Returns:
        Rows `{"id", "text", "images": [], "hs": HS6, "hs_national": 10 digits, "in_hs2022", "source"}`.

    Raises:
        ValueError: a line without a usable `hs_code`.
    """
    rows = []
    for number, record in _read_jsonl(src):
        raw = record.get("hs_code")
        national = str(raw).zfill(10) if isinstance(raw, int) else re.sub(r"\D", "", str(raw or ""))
        if len(national) < 6:
            raise ValueError(f"{src}:{number}: no usable hs_code ({raw!r})")
        row_id = f"hscodecomp-{record.get('task_id', number)}"
        rows.append(_eval_row(row_id, hscodecomp_text(record), national, "hscodecomp"))
    return _report_outside_hs2022("HSCodeComp", rows)


def convert_atlas(src: Path) -> list[dict]:
    """Convert ATLAS chat rows (`eval/atlas_validation.jsonl`) to evaluation rows, keeping every row.

    The text is the user turn without "What is the HTS US Code for " and the final "?"; the code is
    the first one after "HTS US Code ->" in the assistant turn (some rows list two: the first is used).

    Args:
        src: the ATLAS JSONL file.

    Returns:
        Rows `{"id", "text", "images": [], "hs": HS6, "hs_national", "in_hs2022", "source"}`.

    Raises:
        ValueError: a line without a user turn or without a code in the assistant turn.
    """
    rows = []
    for number, record in _read_jsonl(src):
        turns = {turn.get("role"): turn.get("content") or "" for turn in record.get("messages") or []}
        question = turns.get("user", "").strip()
        match = _ATLAS_CODE.search(turns.get("assistant", ""))
        national = re.sub(r"\D", "", match.group(1)) if match else ""
        if not question or len(national) < 6:
            raise ValueError(f"{src}:{number}: expected a user question and 'HTS US Code -> dddd.dd.dddd'")
        text = question.removeprefix(_ATLAS_PREFIX).strip().removesuffix("?").strip()
        rows.append(_eval_row(f"atlas-{number}", text, national, "atlas"))
    return _report_outside_hs2022("ATLAS", rows)


def write_eval_jsonl(rows: Iterable[Mapping[str, Any]], out: Path) -> int:
    """Write rows in the evaluation format (one JSON object a line, UTF-8), creating the folder.

    Args:
        rows: dicts with at least `text`, `images` and `hs`; paths are written as strings.
        out: the file to write.

    Returns:
        The number of rows written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            row = {**row, "images": [str(image) for image in row.get("images") or []]}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    logger.info("wrote %d rows to %s", count, out)
    return count


# ---------------------------------------------------------------------------------------------- training data


def split_of(example_id: str | int) -> Split:
    """Deterministic split by the md5 of the id: test when md5 % 5 == 0 (as the shared baselines), val when
    md5 % 10 == 1 (never a test id), train otherwise (about 20 / 10 / 70 %)."""
    value = int(hashlib.md5(str(example_id).encode("utf-8")).hexdigest(), 16)
    if value % 5 == 0:
        return "test"
    return "val" if value % 10 == 1 else "train"


def _read_hs4_map(path: Path) -> dict[str, tuple[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return {
            row["articleType"].strip(): (row["hs4_men_or_unisex"].strip(), row["hs4_women"].strip())
            for row in csv.DictReader(handle)
        }


def load_myntra(data_dir: Path, split: Split | None = None) -> list[Example]:
    """Myntra catalogue products that have a photo, labelled with a weak HS heading from their article type.

    The label comes from `products/articletype_to_hs4.csv` by `articleType` and gender (Women and
    Girls take `hs4_women`, everyone else `hs4_men_or_unisex`); unmapped article types are skipped.
    `styles.csv` is read with the csv module: a row with extra fields (commas inside the product
    name) gets them joined back into the name, a row with too few fields is skipped; both counted.

    Args:
        data_dir: the shared data folder.
        split: keep only this split (`split_of(id)`); None keeps all.

    Returns:
        Examples with text = productDisplayName, one image, hs = 4 digits, source "myntra".
    """
    products = Path(data_dir) / "products"
    mapping = _read_hs4_map(products / "articletype_to_hs4.csv")
    images_dir = products / "images"
    photos = {name for name in os.listdir(images_dir) if name.endswith(".jpg")} if images_dir.is_dir() else set()
    counts: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    examples = []
    with (products / "styles.csv").open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        for fields in reader:
            if not fields:
                continue
            counts["read"] += 1
            if len(fields) < _STYLES_COLUMNS:
                counts["dropped: too few fields"] += 1
                continue
            if len(fields) > _STYLES_COLUMNS:
                counts["names with commas re-joined"] += 1
                fields = [*fields[: _STYLES_COLUMNS - 1], ",".join(fields[_STYLES_COLUMNS - 1 :])]
            row = dict(zip(header, fields, strict=True))
            style_id = row["id"].strip()
            if f"{style_id}.jpg" not in photos:
                counts["dropped: no photo"] += 1
                continue
            men, women = mapping.get(row["articleType"].strip(), ("", ""))
            hs4 = women if row["gender"].strip() in _WOMEN else men
            if not (hs4.isdigit() and len(hs4) == 4):
                counts["dropped: unmapped article type"] += 1
                unmapped[row["articleType"].strip()] += 1
                continue
            if split is not None and split_of(style_id) != split:
                counts["other splits"] += 1
                continue
            counts["kept"] += 1
            text = row["productDisplayName"].strip() or None
            examples.append(Example(text, [images_dir / f"{style_id}.jpg"], hs4, "myntra", style_id))
    _log_counts(f"Myntra ({split or 'all splits'})", counts)
    if unmapped:
        logger.info("Myntra unmapped article types: %s", dict(unmapped.most_common()))
    return examples


def load_uk_parcels(data_dir: Path) -> list[Example]:
    """Real UK parcel descriptions with the code an HMRC officer gave (`train/uk_parcel_descriptions.csv`).

    Codes of 6, 8 or 10 digits map to their HS6; other codes (text, odd lengths) and HS6 codes not in
    HS 2022 are dropped, and so are exact repeats of a (description, code) pair; all counted.

    Args:
        data_dir: the shared data folder.

    Returns:
        Examples with hs = 6 digits, no images, source "uk_parcels".
    """
    counts: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    examples = []
    with (Path(data_dir) / "train" / "uk_parcel_descriptions.csv").open(encoding="utf-8-sig", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            counts["read"] += 1
            text = " ".join((row.get("Goods Description") or "").split())
            hs = _labelled(text, row.get("Commodity Code") or "", counts)
            if hs is not None and (text.casefold(), hs) in seen:
                counts["dropped: repeated pair"] += 1
            elif hs is not None:
                seen.add((text.casefold(), hs))
                counts["kept"] += 1
                examples.append(Example(text, [], hs, "uk_parcels", f"uk-parcel-{number}"))
    _log_counts("UK parcels", counts)
    return examples


def load_uk_brands(data_dir: Path) -> list[Example]:
    """Brand / product names with the code HMRC gave (`train/uk_brands.csv`).

    Where the comment says a code "can only go to N digits", the label is cut to N digits (4 or 6).

    Args:
        data_dir: the shared data folder.

    Returns:
        Examples with hs = 4 or 6 digits, no images, source "uk_brands".
    """
    counts: Counter[str] = Counter()
    examples = []
    with (Path(data_dir) / "train" / "uk_brands.csv").open(encoding="utf-8-sig", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            counts["read"] += 1
            text = " ".join((row.get("GDSDESC") or "").split())
            hs = _labelled(text, row.get("CMDTYCODE") or "", counts)
            if hs is None:
                continue
            level = _BRAND_LEVEL.search(row.get("Comments") or "")
            if level and int(level.group(1)) < 6:
                hs = hs[: int(level.group(1))]
                counts["labels cut to 4 digits (comment: more information needed)"] += 1
            counts["kept"] += 1
            examples.append(Example(text, [], hs, "uk_brands", f"uk-brand-{number}"))
    _log_counts("UK brands", counts)
    return examples


def load_uk_weak(data_dir: Path, min_score: float = 500.0) -> list[Example]:
    """Parcel descriptions labelled by HMRC's own classifier (`train/uk_parcel_predictions_weak.json`).

    Weak labels, some wrong: only predictions scored at least `min_score` (scores run 50-1000; 500
    keeps about the top 15 %, 1,251 of 8,481 rows) are kept.

    Args:
        data_dir: the shared data folder.
        min_score: the lowest classifier score kept.

    Returns:
        Examples with hs = 6 digits, no images, source "uk_weak".
    """
    counts: Counter[str] = Counter()
    examples = []
    records = json.loads((Path(data_dir) / "train" / "uk_parcel_predictions_weak.json").read_text(encoding="utf-8"))
    for number, record in enumerate(records):
        counts["read"] += 1
        try:
            score = float(record.get("score"))
        except (TypeError, ValueError):
            score = float("-inf")
        if score < min_score:
            counts[f"dropped: score below {min_score:g}"] += 1
            continue
        text = " ".join(str(record.get("request_description") or "").split())
        hs = _labelled(text, str(record.get("code") or ""), counts)
        if hs is not None:
            counts["kept"] += 1
            examples.append(Example(text, [], hs, "uk_weak", f"uk-weak-{number}"))
    _log_counts("UK weak labels", counts)
    return examples
