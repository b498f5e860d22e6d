"""The record's memory of products already classified: exact lookups (SKU + importer, normalised description) and a
near-duplicate search over unit float16 text vectors, guarded by the words that change a code (materials, numbers).

Plain numpy, no database and no model: `services.history` fills it from the database and the text tower.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Cosine of the text-tower vectors above which two descriptions count as the same product (chosen on the UK
# parcels' validation split against the training split: scripts/history_eval.py, README "Classification history").
NEAR_THRESHOLD = 0.88
EXACT_UP_TO = 5_000  # rows searched exactly; above, an inverted file over k-means lists (faster from here)
N_PROBE = 24

_WORD = re.compile(r"[^\W_]+(?:[.,][0-9]+)?", re.UNICODE)
# Words that change a subheading although the rest of the description is the same. Each maps to its group's
# canonical form (aluminum = aluminium); a near duplicate must carry the same set of them.
_MATERIALS = {
    "cotton": "cotton", "polyester": "polyester", "nylon": "nylon", "polyamide": "nylon", "wool": "wool",
    "woollen": "wool", "woolen": "wool", "cashmere": "cashmere", "silk": "silk", "linen": "linen", "flax": "linen",
    "viscose": "viscose", "rayon": "viscose", "acrylic": "acrylic", "elastane": "elastane", "spandex": "elastane",
    "leather": "leather", "suede": "leather", "fur": "fur", "denim": "denim", "synthetic": "synthetic",
    "steel": "steel", "stainless": "stainless", "iron": "iron", "aluminium": "aluminium", "aluminum": "aluminium",
    "copper": "copper", "brass": "brass", "bronze": "bronze", "zinc": "zinc", "tin": "tin", "lead": "lead",
    "nickel": "nickel", "titanium": "titanium", "gold": "gold", "silver": "silver", "platinum": "platinum",
    "plastic": "plastic", "plastics": "plastic", "pvc": "pvc", "polypropylene": "polypropylene",
    "polyethylene": "polyethylene", "polycarbonate": "polycarbonate", "silicone": "silicone", "rubber": "rubber",
    "latex": "latex", "glass": "glass", "ceramic": "ceramic", "porcelain": "porcelain", "stoneware": "ceramic",
    "wood": "wood", "wooden": "wood", "bamboo": "bamboo", "rattan": "rattan", "paper": "paper",
    "cardboard": "paperboard", "paperboard": "paperboard", "stone": "stone", "marble": "marble",
    "granite": "granite", "concrete": "concrete", "carbon": "carbon", "fibreglass": "fibreglass",
    "knitted": "knitted", "knit": "knitted", "crocheted": "knitted", "woven": "woven",
    "men": "men", "mens": "men", "man": "men", "women": "women", "womens": "women", "ladies": "women",
    "boys": "boys", "girls": "girls", "baby": "baby", "babies": "baby", "infant": "baby",
    "electric": "electric", "manual": "manual", "battery": "battery",
}  # fmt: skip
_NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "single": "1", "double": "2", "pair": "2",
}  # fmt: skip


def normalise(text: str) -> str:
    """The form two descriptions of one product share: NFKC, case-folded, words only, single spaces."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text or "").casefold()))


def guard_words(normalised: str) -> frozenset[str]:
    """The material, make-up and number words of a normalised description (``"500ml"`` keeps its digits)."""
    out = set()
    for word in normalised.split():
        word = word.removesuffix("'s")
        if word in _MATERIALS:
            out.add(_MATERIALS[word])
        elif word in _NUMBER_WORDS:
            out.add("#" + _NUMBER_WORDS[word])
        elif any(ch.isdigit() for ch in word):
            out.add("#" + word.replace(",", "."))
    return frozenset(out)


@dataclass(frozen=True)
class Source:
    """Where a remembered code comes from: an approved or corrected line item, or an imported history row."""

    kind: str  # approved | corrected | imported
    code: str  # HS6
    where: str  # "firm.csv, imported on 2026-12-02" / "approved by rita on 2026-11-30"
    description: str = ""  # kept by the caller's objects only: the index does not hold descriptions
    line_item_id: int | None = None
    history_row_id: int | None = None
    import_id: int | None = None
    line_no: int | None = None  # the imported row's line in its file
    declared_code: str | None = None  # the national code an import gave (8 or 10 digits), if longer than 6

    @property
    def label(self) -> str:
        """ "line 7 of firm.csv, imported on 2026-12-02" / "line item #12, approved by rita on 2026-11-30" """
        if self.line_item_id is not None:
            return f"line item #{self.line_item_id}, {self.where}"
        if self.line_no is not None:
            return f"line {self.line_no} of {self.where}"
        return self.where


@dataclass(frozen=True)
class Match:
    """The record's answer for a product: its code, or a conflict when the same product carries several codes."""

    how: str  # sku | description | near
    similarity: float  # 1.0 for exact matches
    sources: tuple[Source, ...]  # every record entry that matched (best first)
    codes: tuple[str, ...]  # distinct HS6 codes among them, most frequent first

    @property
    def conflict(self) -> bool:
        return len(self.codes) > 1

    @property
    def code(self) -> str | None:
        """The record's code, or None when it conflicts (never resolved silently)."""
        return None if self.conflict else self.codes[0]

    def summary(self) -> str:
        """One line for screens, Batch cells and logs."""
        how = {"sku": "same SKU and importer", "description": "same description", "near": "near-identical"}[self.how]
        if self.conflict:
            parts = "; ".join(
                f"{_dotted(c)} ({', '.join(s.label for s in self.sources if s.code == c)})" for c in self.codes
            )
            return f"Conflict in the record ({how}): this product carries {len(self.codes)} codes: {parts}"
        first = self.sources[0]
        more = f" and {len(self.sources) - 1} more" if len(self.sources) > 1 else ""
        near = f", similarity {self.similarity:.2f}" if self.how == "near" else ""
        return f"Same product as {first.label}{more} ({how}{near}): {_dotted(self.codes[0])}"

    def to_json(self) -> dict[str, Any]:
        return {
            "how": self.how,
            "code": self.code,
            "conflict": self.conflict,
            "codes": list(self.codes),
            "similarity": round(self.similarity, 4),
            "summary": self.summary(),
            "sources": [asdict(s) | {"label": s.label} for s in self.sources],
        }


def _dotted(code: str) -> str:
    return f"{code[:4]}.{code[4:]}" if len(code) == 6 else code


def _codes(sources: Sequence[Source]) -> tuple[str, ...]:
    counts: dict[str, int] = {}
    for s in sources:
        counts[s.code] = counts.get(s.code, 0) + 1
    return tuple(sorted(counts, key=lambda c: -counts[c]))


class HashLookup:
    """Key -> rows, compact: sorted int64 hashes and rows in numpy, recent additions in a small dict merged in
    batches (16 bytes a row instead of a Python dict's ~150). Keys are 64-bit hashes of the text: a collision among
    a million keys has a probability of about 3e-8."""

    def __init__(self, merge_every: int = 65_536) -> None:
        self.keys = np.zeros(0, np.int64)
        self.rows = np.zeros(0, np.int64)
        self.pending: dict[int, list[int]] = {}
        self.merge_every = merge_every

    @staticmethod
    def key(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)

    def add(self, text: str, row: int) -> None:
        self.pending.setdefault(self.key(text), []).append(row)
        if len(self.pending) >= self.merge_every:
            self.merge()

    def merge(self) -> None:
        if not self.pending:
            return
        new_keys = np.fromiter((k for k, rows in self.pending.items() for _ in rows), np.int64)
        new_rows = np.fromiter((r for rows in self.pending.values() for r in rows), np.int64)
        keys, rows = np.concatenate([self.keys, new_keys]), np.concatenate([self.rows, new_rows])
        order = np.lexsort((rows, keys))
        self.keys, self.rows, self.pending = keys[order], rows[order], {}

    def get(self, text: str) -> list[int]:
        k = self.key(text)
        lo, hi = np.searchsorted(self.keys, k, "left"), np.searchsorted(self.keys, k, "right")
        found: list[int] = self.rows[lo:hi].tolist()
        return found + self.pending.get(k, [])


KINDS = ("approved", "corrected", "imported")


class HistoryIndex:
    """Entries of the record, appended as they come and retired when superseded (a retraction, a re-review).

    Per row only numbers are kept (about 850 bytes a row at 384 dimensions, 768 of them the vector): a unit float16
    vector in one matrix ([capacity, dim], doubled when full), the HS6 code, ids, and interned "where" labels and
    guard-word sets; exact matches go through compact hash lookups. Above `exact_up_to` rows the vector search
    probes `n_probe` of about 2·sqrt(n) k-means lists (built on first use; new rows join their nearest list), then
    ranks the candidates exactly. Thread-safe: one lock.
    """

    def __init__(
        self, dim: int, threshold: float = NEAR_THRESHOLD, exact_up_to: int = EXACT_UP_TO, n_probe: int = N_PROBE
    ) -> None:
        self.dim, self.threshold, self.exact_up_to, self.n_probe = dim, threshold, exact_up_to, n_probe
        self.cursors: dict[str, int] = {}  # what services.history has read so far
        self._n = 0
        cap = 1024
        self.emb = np.zeros((cap, dim), dtype=np.float16)
        self.active = np.zeros(cap, dtype=bool)
        self.codes = np.zeros(cap, dtype="S6")
        self.declared = np.zeros(cap, dtype="S10")
        self.kinds = np.zeros(cap, dtype=np.int8)
        self.ref_ids = np.zeros(cap, dtype=np.int64)  # line item id, or history row id for imported rows
        self.import_ids = np.zeros(cap, dtype=np.int64)  # 0: not imported
        self.line_nos = np.zeros(cap, dtype=np.int32)
        self.where_ids = np.zeros(cap, dtype=np.int32)
        self.guard_ids = np.zeros(cap, dtype=np.int32)
        self.wheres: list[str] = []
        self._where_index: dict[str, int] = {}
        self.guards: list[frozenset[str]] = []
        self._guard_index: dict[frozenset[str], int] = {}
        self.by_text = HashLookup()
        self.by_sku = HashLookup()
        self.by_item: dict[int, int] = {}  # line item id -> its row
        self._ivf: tuple[np.ndarray, list[np.ndarray]] | None = None
        self._ivf_rows = 0
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return self._n

    @property
    def active_count(self) -> int:
        return int(self.active[: self._n].sum())

    def _grow(self, need: int) -> None:
        cap = len(self.emb)
        if need <= cap:
            return
        new = max(2 * cap, need)
        for name in ("emb", "active", "codes", "declared", "kinds", "ref_ids", "import_ids", "line_nos", "where_ids",
                     "guard_ids"):  # fmt: skip
            old = getattr(self, name)
            grown = np.zeros((new, *old.shape[1:]), dtype=old.dtype)
            grown[: self._n] = old[: self._n]
            setattr(self, name, grown)

    @staticmethod
    def _intern(value: Hashable, table: list[Any], index: dict[Any, int]) -> int:
        found = index.get(value)
        if found is None:
            found = index[value] = len(table)
            table.append(value)
        return found

    def add(
        self,
        sources: Sequence[Source],
        normalised: Sequence[str],
        vectors: np.ndarray,
        skus: Sequence[tuple[str, str] | None] | None = None,
    ) -> None:
        """Append entries. vectors: [N, dim] (normalised here; a zero row is never a near duplicate)."""
        with self.lock:
            n0, n = self._n, len(sources)
            if n == 0:
                return
            vecs = np.asarray(vectors, dtype=np.float32).reshape(n, self.dim)
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            vecs = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)
            self._grow(n0 + n)
            self.emb[n0 : n0 + n] = vecs.astype(np.float16)
            self.active[n0 : n0 + n] = True
            rows = slice(n0, n0 + n)
            self.codes[rows] = [src.code.encode() for src in sources]
            self.declared[rows] = [(src.declared_code or "").encode() for src in sources]
            self.kinds[rows] = [KINDS.index(src.kind) for src in sources]
            self.ref_ids[rows] = [
                src.line_item_id if src.line_item_id is not None else src.history_row_id or 0 for src in sources
            ]
            self.import_ids[rows] = [src.import_id or 0 for src in sources]
            self.line_nos[rows] = [src.line_no or 0 for src in sources]
            self.where_ids[rows] = [self._intern(src.where, self.wheres, self._where_index) for src in sources]
            self.guard_ids[rows] = [self._intern(guard_words(t), self.guards, self._guard_index) for t in normalised]
            for i, (source, text) in enumerate(zip(sources, normalised, strict=True)):
                row = n0 + i
                if text:
                    self.by_text.add(text, row)
                sku = skus[i] if skus is not None else None
                if sku is not None:
                    self.by_sku.add("\x1f".join(sku), row)
                if source.line_item_id is not None:
                    self.by_item[source.line_item_id] = row
            self._n = n0 + n

    def source(self, row: int) -> Source:
        """The entry of a row, rebuilt from the arrays (descriptions are not kept)."""
        kind = KINDS[int(self.kinds[row])]
        imported = kind == "imported"
        ref = int(self.ref_ids[row])
        return Source(
            kind,
            self.codes[row].decode(),
            self.wheres[int(self.where_ids[row])],
            line_item_id=None if imported else ref,
            history_row_id=ref if imported else None,
            import_id=int(self.import_ids[row]) or None,
            line_no=int(self.line_nos[row]) or None,
            declared_code=self.declared[row].decode() or None,
        )

    def retire_items(self, line_item_ids: Sequence[int]) -> int:
        """Stop line items' entries from matching (their decision changed); returns how many were active."""
        return self._retire([self.by_item.get(i) for i in line_item_ids])

    def retire_import(self, import_id: int) -> int:
        """Stop every row of a retracted import from matching; returns how many were active."""
        return self._retire(np.nonzero(self.import_ids[: self._n] == import_id)[0].tolist())

    def _retire(self, rows: Sequence[int | None]) -> int:
        with self.lock:
            idx = np.array([r for r in rows if r is not None], dtype=np.int64)
            if not len(idx):
                return 0
            was = int(self.active[idx].sum())
            self.active[idx] = False
            return was

    def match(self, normalised: str, vector: np.ndarray | None, sku: tuple[str, str] | None = None) -> Match | None:
        """Same SKU for the same importer, else the same normalised description, else the nearest active entries
        above the threshold whose material / number words are the same as the query's; None when nothing is."""
        with self.lock:
            if sku is not None and (rows := self._alive(self.by_sku.get("\x1f".join(sku)))):
                return self._match("sku", rows, 1.0)
            if normalised and (rows := self._alive(self.by_text.get(normalised))):
                return self._match("description", rows, 1.0)
            if vector is None or not self._n:
                return None
            rows, sims = self.near(np.asarray(vector, dtype=np.float32))
            guard = guard_words(normalised)
            keep = [(r, s) for r, s in zip(rows, sims, strict=True) if self.guards[int(self.guard_ids[r])] == guard]
            if not keep:
                return None
            return self._match("near", [r for r, _ in keep], keep[0][1])

    def _alive(self, rows: Sequence[int]) -> list[int]:
        return [r for r in rows if self.active[r]]

    def _match(self, how: str, rows: Sequence[int], similarity: float) -> Match:
        order = sorted(rows, key=lambda r: -r) if how != "near" else list(rows)  # newest first; near: best first
        sources = tuple(self.source(r) for r in order[:20])
        return Match(how, float(similarity), sources, _codes(sources))

    def near(self, query: np.ndarray, k: int = 10) -> tuple[list[int], list[float]]:
        """Active rows with cosine >= threshold to the query, best first (at most k). [dim] -> rows, cosines."""
        n = self._n
        norm = float(np.linalg.norm(query))
        if n == 0 or norm == 0 or not np.isfinite(norm):
            return [], []
        q = (query / norm).astype(np.float32)
        if n > self.exact_up_to:
            cand = self._probe(q, n)
            sims = self.emb[cand].astype(np.float32) @ q
        else:
            cand = np.arange(n)
            sims = np.empty(n, np.float32)
            for s in range(0, n, 8192):  # float32 blocks: numpy has no fast float16 product
                sims[s : s + 8192] = self.emb[s : min(s + 8192, n)].astype(np.float32) @ q
        ok = (sims >= self.threshold) & self.active[cand]
        hits, vals = cand[ok], sims[ok]
        order = np.argsort(-vals)[:k]
        return hits[order].tolist(), vals[order].tolist()

    def _probe(self, q: np.ndarray, n: int) -> np.ndarray:
        if self._ivf is None or self._ivf_rows < n:
            self._build_ivf(n)
        assert self._ivf is not None  # _build_ivf sets it
        cents, lists = self._ivf
        probe = np.argpartition(-(cents @ q), min(self.n_probe, len(cents) - 1))[: self.n_probe]
        return np.concatenate([lists[j] for j in probe])

    def _build_ivf(self, n: int, iters: int = 5) -> None:
        """k-means centroids on a sample (first call), then assign the rows not yet in a list."""
        rng = np.random.default_rng(0)
        if self._ivf is None:
            n_lists = max(16, int(2 * n**0.5))
            sample = self.emb[rng.choice(n, size=min(n, 24 * n_lists), replace=False)].astype(np.float32)
            cents = sample[rng.choice(len(sample), size=n_lists, replace=False)].copy()
            for _ in range(iters):
                assign = (sample @ cents.T).argmax(1)
                sums = np.zeros_like(cents)
                np.add.at(sums, assign, sample)
                norms = np.linalg.norm(sums, axis=1, keepdims=True)
                cents = np.where(norms > 0, sums / np.maximum(norms, 1e-12), cents)
            start, lists = 0, [np.zeros(0, np.int64) for _ in range(n_lists)]
        else:
            (cents, lists), start = self._ivf, self._ivf_rows
        assign = np.concatenate(
            [(self.emb[s : min(s + 32768, n)].astype(np.float32) @ cents.T).argmax(1) for s in range(start, n, 32768)]
        )
        order = np.argsort(assign, kind="stable")
        bounds = np.searchsorted(assign[order], np.arange(len(cents) + 1))
        for j in range(len(cents)):
            part = order[bounds[j] : bounds[j + 1]] + start
            if len(part):
                lists[j] = np.concatenate([lists[j], part])
        self._ivf, self._ivf_rows = (cents, lists), n
