"""Precedents vote: the nearest labelled examples (earlier rulings, training pairs, reviewed decisions) as a signal.

An index holds, per precedent, the text tower's unit vector (float16), its hashed word counts (for a lexical score
that catches what embeddings blur: model and CAS numbers, brand and stone names), its HS code (6 digits, or 4
for heading-only labels) and where it came from. A query's neighbours are ranked by a hybrid similarity
h = (1 - lam) * cosine + lam * lexical; the top k with h above a floor vote, weighted by (h - floor), into
chapters, headings and subheadings; the votes are added to the model's log-probabilities of the subheadings
(log p + b6 v6 + b4 v4[heading] + b2 v2[chapter]) and renormalised at a fitted temperature. With no text, or no
neighbour above the floor, the result is exactly the model's own distribution. Database-free; numpy + scipy + torch.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import scipy.sparse as sp  # type: ignore[import-untyped]  # scipy ships no type information (no py.typed)
import torch
from safetensors.torch import load_file, save_file

from hs_model.checkpoint import PRECEDENTS_CARD, PRECEDENTS_INDEX

log = logging.getLogger(__name__)

INDEX_FILE = PRECEDENTS_INDEX
INDEX_CARD = PRECEDENTS_CARD
N_FEATURES = 1 << 20  # hashed vocabulary (collisions are rare at this size and harmless for ranking)
_TOKEN = re.compile(r"[a-z0-9]+(?:[-./][a-z0-9]+)*")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "their",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "which",
        "other",
        "used",
        "use",
        "your",
        "you",
        "our",
        "per",
        "each",
        "these",
        "those",
        "than",
        "then",
        "also",
        "not",
        "no",
        "can",
        "may",
    ]
)

LexicalScheme = Literal["bm25", "tfidf"]
# per level (6, 4, 2): (query rows, code indices in the label space, weights) of the neighbours that vote
Votes = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


def tokens(text: str) -> list[str]:
    """Lower-cased words and codes ("405-39-0", "8471.30", "m8x20"), stop words and 1-letter words dropped."""
    out = []
    for tok in _TOKEN.findall(text.lower()):
        tok = tok.strip("-./")
        if tok and tok not in _STOP and (len(tok) > 1 or tok.isdigit()):
            out.append(tok)
    return out


def _hash(token: str) -> int:
    return zlib.crc32(token.encode("utf-8")) & (N_FEATURES - 1)


def hashed_counts(texts: Sequence[str]) -> sp.csr_matrix:
    """[N, N_FEATURES] term counts of each text's tokens (float32, CSR)."""
    rows: list[int] = []
    cols: list[int] = []
    vals: list[int] = []
    for i, text in enumerate(texts):
        counts: dict[int, int] = {}
        for tok in tokens(text or ""):
            h = _hash(tok)
            counts[h] = counts.get(h, 0) + 1
        rows.extend([i] * len(counts))
        cols.extend(counts.keys())
        vals.extend(counts.values())
    return sp.csr_matrix(
        (np.asarray(vals, dtype=np.float32), (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
        shape=(len(texts), N_FEATURES),
    )


class LexicalIndex:
    """Hashed term counts of every document, scored at query time by BM25 (rank-bm25's BM25Okapi formula,
    vectorised) or TF-IDF cosine (scikit-learn's smooth idf, sublinear tf, l2 norm); scores are scaled to 0..1.

    Documents are added in chunks (no rebuild): new rows go to a small pending block merged into the main
    column-major matrix once it grows past `merge_every` rows.
    """

    def __init__(self, scheme: LexicalScheme = "bm25", k1: float = 1.5, b: float = 0.75, merge_every: int = 4096):
        if scheme not in ("bm25", "tfidf"):
            raise ValueError(f"scheme must be bm25 or tfidf, not {scheme!r}")
        self.scheme, self.k1, self.b, self.merge_every = scheme, k1, b, merge_every
        self._main = sp.csc_matrix((0, N_FEATURES), dtype=np.float32)
        self._pending: list[sp.csr_matrix] = []
        self.df = np.zeros(N_FEATURES, dtype=np.int32)
        self.doc_len = np.zeros(0, dtype=np.float32)
        self._norms: np.ndarray | None = None  # tf-idf norms, recomputed lazily after adds
        self._mean_idf_cache, self._mean_idf_at = 0.0, -1

    def __len__(self) -> int:
        return len(self.doc_len)

    def add_counts(self, counts: sp.csr_matrix) -> None:
        counts = sp.csr_matrix(counts, dtype=np.float32)
        self.df += np.bincount(counts.indices, minlength=N_FEATURES).astype(np.int32)
        self.doc_len = np.concatenate([self.doc_len, np.asarray(counts.sum(1)).ravel().astype(np.float32)])
        self._pending.append(counts)
        self._norms = None
        if sum(p.shape[0] for p in self._pending) >= self.merge_every:
            self._merge()

    def add(self, texts: Sequence[str]) -> None:
        self.add_counts(hashed_counts(texts))

    def _merge(self) -> None:
        if self._pending:
            self._main = sp.vstack([self._main, *self._pending], format="csc")
            self._pending = []

    def counts(self) -> sp.csc_matrix:
        """All documents' counts (merges the pending block)."""
        self._merge()
        return self._main

    def idf(self, terms: np.ndarray | None = None) -> np.ndarray:
        """idf of every hashed term (or of `terms` only: what a query needs)."""
        n = max(len(self), 1)
        df = self.df if terms is None else self.df[terms]
        if self.scheme == "tfidf":
            return (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)
        idf = np.log((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        if (idf < 0).any():  # rank-bm25: negative idf (terms in over half the documents) -> 0.25 x the mean idf
            idf = np.where(idf < 0, 0.25 * self._mean_idf(), idf)
        return idf

    def _mean_idf(self) -> float:
        if self._mean_idf_at != len(self):
            present = self.df[self.df > 0]
            n = max(len(self), 1)
            self._mean_idf_cache = float(np.log((n - present + 0.5) / (present + 0.5)).mean()) if len(present) else 0.0
            self._mean_idf_at = len(self)
        return self._mean_idf_cache

    def _tfidf_norms(self) -> np.ndarray:
        if self._norms is None or len(self._norms) != len(self):
            idf = self.idf()
            x = self.counts().tocsr(copy=True)
            x.data = (1 + np.log(x.data)) * idf[x.indices]
            self._norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel()).astype(np.float32)
        return self._norms

    def search(self, texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k documents per text: (indices [Q, k], scores [Q, k] in 0..1; -1 / 0 where fewer matched)."""
        q = hashed_counts(texts)
        idx = np.full((len(texts), k), -1, dtype=np.int64)
        val = np.zeros((len(texts), k), dtype=np.float32)
        if len(self) == 0:
            return idx, val
        x = self.counts()
        norms = self._tfidf_norms() if self.scheme == "tfidf" else None
        avgdl = float(self.doc_len.mean()) or 1.0
        for r in range(len(texts)):
            terms, qtf = q.indices[q.indptr[r] : q.indptr[r + 1]], q.data[q.indptr[r] : q.indptr[r + 1]]
            terms, qtf = terms[self.df[terms] > 0], qtf[self.df[terms] > 0]
            if len(terms) == 0:
                continue
            # words in more than 5 % of a large index weigh little and cost the most: leave them out (keep 2 rarest)
            cap = max(5_000, len(self) // 20)
            common = self.df[terms] > cap
            if common.any():
                keep = ~common
                if keep.sum() < 2:
                    keep[np.argsort(self.df[terms], kind="stable")[:2]] = True
                terms, qtf = terms[keep], qtf[keep]
            idf = self.idf(terms)  # [T] the query's terms only
            cols = x[:, terms]  # [N, T] counts of the query's terms
            cols = cols.tocoo()
            tf, d, t = cols.data, cols.row, cols.col
            if self.scheme == "bm25":
                denom = tf + self.k1 * (1 - self.b + self.b * self.doc_len[d] / avgdl)
                contrib = idf[t] * qtf[t] * tf * (self.k1 + 1) / denom
                bound = float((idf * qtf).sum() * (self.k1 + 1))  # score as tf -> infinity in every term
            else:
                qw = (1 + np.log(qtf)) * idf
                qw = qw / (np.linalg.norm(qw) or 1.0)
                assert norms is not None  # computed above for tf-idf
                contrib = qw[t] * (1 + np.log(tf)) * idf[t] / np.maximum(norms[d], 1e-12)
                bound = 1.0
            docs, inverse = np.unique(d, return_inverse=True)  # only the documents sharing a word
            scores = np.bincount(inverse, weights=contrib)
            top = _topk(scores, k)
            top = top[scores[top] > 0]
            idx[r, : len(top)] = docs[top]
            val[r, : len(top)] = np.clip(scores[top] / max(bound, 1e-12), 0, 1)
        return idx, val

    def state(self) -> dict[str, torch.Tensor]:
        x = self.counts().tocsr()
        return {
            "lex.indptr": torch.from_numpy(x.indptr.astype(np.int64)),
            "lex.indices": torch.from_numpy(x.indices.astype(np.int32)),
            "lex.counts": torch.from_numpy(x.data.astype(np.float16)),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], n: int) -> None:
        x = sp.csr_matrix(
            (
                tensors["lex.counts"].float().numpy(),
                tensors["lex.indices"].numpy().astype(np.int64),
                tensors["lex.indptr"].numpy(),
            ),
            shape=(n, N_FEATURES),
        )
        self.add_counts(x)
        self._merge()


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, best first."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


@dataclass(frozen=True)
class VoteConfig:
    """How neighbours are found and how much their vote counts (fitted on a split held out by date)."""

    k: int = 10
    candidates: int = 50  # from each of the embedding and lexical searches, before the hybrid re-rank
    lexical_weight: float = 0.3  # lam in h = (1 - lam) cos + lam lexical
    lexical_scheme: LexicalScheme = "bm25"
    min_similarity: float = 0.5  # neighbours below this hybrid similarity do not vote
    space: Literal["raw", "joint"] = "raw"  # text tower vectors, or the model's adapted text vectors
    exact_up_to: int = 200_000  # above this many rows the embedding search goes through an IVF (approximate)
    nprobe: int = 24  # IVF lists searched per query
    beta6: float = 0.0
    beta4: float = 0.0
    beta2: float = 0.0
    temperature: float = 1.0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> VoteConfig:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True)
class Precedent:
    """One labelled example shown as evidence: its text, code and where it came from."""

    text: str
    code: str
    dataset: str
    id: str
    date: str
    similarity: float  # hybrid similarity to the query (0..1)
    weight: float = 0.0  # its vote (0 when below the floor)

    def to_dict(self) -> dict[str, str | float]:
        d = asdict(self)
        d["similarity"], d["weight"] = round(self.similarity, 4), round(self.weight, 4)
        return d


@dataclass(frozen=True)
class AddReport:
    """What `PrecedentIndex.add` did with the rows it was given."""

    added: int = 0
    skipped_invalid_code: int = 0
    skipped_empty_text: int = 0
    invalid_codes: tuple[str, ...] = ()


@dataclass
class Neighbours:
    """Per query, the hybrid-ranked neighbours: index rows [Q, C] (-1 = none) and their cos / lexical scores."""

    idx: np.ndarray
    cos: np.ndarray
    lex: np.ndarray

    def hybrid(self, lam: float) -> np.ndarray:
        h = (1 - lam) * self.cos + lam * self.lex
        return np.where(self.idx >= 0, h, -np.inf)


@dataclass
class PrecedentIndex:
    """Unit text vectors (float16) + hashed word counts + codes + provenance of every precedent."""

    tower: str
    dim: int
    emb: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float16))
    codes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    provenance: list[tuple[str, str, str]] = field(default_factory=list)  # (dataset, id, date)
    lexical: LexicalIndex = field(default_factory=LexicalIndex)
    config: VoteConfig = field(default_factory=VoteConfig)
    _n: int = 0  # rows of `emb` in use (the rest is spare capacity for cheap appends)
    cursor: int = 0  # the last database decision id added (services.precedents keeps it)

    def __post_init__(self) -> None:
        if self.emb.numel() == 0:
            self.emb = torch.zeros(0, self.dim, dtype=torch.float16)
        self._n = len(self.codes)
        self.retired: set[int] = set()  # rows superseded (a reviewed decision corrected later): never vote
        self._ivf: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self._ivf_rows = 0
        self.lock = threading.RLock()  # adds come from a service while sessions search: one at a time

    def retire(self, dataset: str, ids: set[str]) -> int:
        """Stop rows of `dataset` with these ids from voting (their decision was superseded); returns how many."""
        rows = {i for i, p in enumerate(self.provenance) if p[0] == dataset and p[1] in ids}
        self.retired |= rows
        return len(rows)

    def __len__(self) -> int:
        return self._n

    @property
    def matrix(self) -> torch.Tensor:
        return self.emb[: self._n]

    def add(
        self,
        texts: Sequence[str],
        emb: torch.Tensor,
        codes: Sequence[str],
        provenance: Sequence[tuple[str, str, str]],
        valid_codes: frozenset[str] | set[str],
    ) -> AddReport:
        """Append precedents (no rebuild). Codes must be 4 or 6 digits and in `valid_codes` (HS 2022 headings and
        subheadings); others are skipped and counted, and so are empty texts."""
        with self.lock:
            return self._add(texts, emb, codes, provenance, valid_codes)

    def _add(
        self,
        texts: Sequence[str],
        emb: torch.Tensor,
        codes: Sequence[str],
        provenance: Sequence[tuple[str, str, str]],
        valid_codes: frozenset[str] | set[str],
    ) -> AddReport:
        keep, invalid, empty = [], [], 0
        for i, (t, c) in enumerate(zip(texts, codes, strict=True)):
            c = str(c).replace(".", "").strip()
            if not (t or "").strip():
                empty += 1
            elif not (c.isdigit() and len(c) in (4, 6) and c in valid_codes):
                invalid.append(c)
            else:
                keep.append((i, c))
        if invalid:
            log.warning(
                "precedents: %d skipped, code not in HS 2022: %s", len(invalid), ", ".join(sorted(set(invalid))[:20])
            )
        if empty:
            log.info("precedents: %d skipped, empty text", empty)
        if keep:
            rows = torch.tensor([i for i, _ in keep], dtype=torch.long)
            vecs = torch.nn.functional.normalize(emb[rows].float(), dim=-1).to(torch.float16)
            self._append(vecs)
            self.codes.extend(c for _, c in keep)
            self.texts.extend(texts[i] for i, _ in keep)
            self.provenance.extend(cast(tuple[str, str, str], tuple(str(x) for x in provenance[i])) for i, _ in keep)
            self.lexical.add([texts[i] for i, _ in keep])
        return AddReport(len(keep), len(invalid), empty, tuple(sorted(set(invalid))))

    def _append(self, vecs: torch.Tensor) -> None:
        need = self._n + len(vecs)
        if need > len(self.emb):  # grow geometrically: amortised O(1) per added row
            grown = torch.zeros(max(need, int(len(self.emb) * 1.5) + 64), self.dim, dtype=torch.float16)
            grown[: self._n] = self.emb[: self._n]
            self.emb = grown
        self.emb[self._n : need] = vecs
        self._n = need

    # -- search and vote ---------------------------------------------------------------------------------
    def neighbours(
        self,
        query_emb: torch.Tensor,
        query_texts: Sequence[str],
        cfg: VoteConfig | None = None,
        lexical_hits: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Neighbours:
        """Union of the embedding and lexical top candidates, with both scores for each. [Q, D] -> Neighbours.

        lexical_hits: `self.lexical.search(query_texts, cfg.candidates)` when already computed.
        """
        with self.lock:
            return self._neighbours(query_emb, query_texts, cfg, lexical_hits)

    def _neighbours(
        self,
        query_emb: torch.Tensor,
        query_texts: Sequence[str],
        cfg: VoteConfig | None,
        lexical_hits: tuple[np.ndarray, np.ndarray] | None,
    ) -> Neighbours:
        cfg = cfg or self.config
        q = len(query_texts)
        c = cfg.candidates
        n = self._n  # a snapshot: rows added meanwhile are seen by the next query
        if n == 0 or q == 0:
            empty = np.full((q, 1), -1, dtype=np.int64)
            return Neighbours(empty, np.zeros((q, 1), np.float32), np.zeros((q, 1), np.float32))
        qe = torch.nn.functional.normalize(query_emb.float(), dim=-1)
        has = (query_emb.float().norm(dim=-1) > 0).numpy()
        kc = min(c, n)
        if n > cfg.exact_up_to:
            cos_idx, exact = self._ivf_search(qe, n, kc, cfg.nprobe), False
        else:
            sims = self._cosines(qe, n)  # [Q, N] float32
            if self.retired:
                sims[:, sorted(r for r in self.retired if r < n)] = -2.0
            cos_idx, exact = sims.topk(kc, dim=1).indices, True
        lex_idx: np.ndarray | None
        lex_val: np.ndarray | None
        if lexical_hits is not None:
            lex_idx, lex_val = lexical_hits
        else:
            lex_idx, lex_val = self.lexical.search(query_texts, kc) if cfg.lexical_weight > 0 else (None, None)
        idx = np.full((q, 2 * kc), -1, dtype=np.int64)
        cos = np.zeros((q, 2 * kc), dtype=np.float32)
        lex = np.zeros((q, 2 * kc), dtype=np.float32)
        for r in range(q):
            if not has[r]:
                continue
            cand = dict.fromkeys(cos_idx[r].tolist())
            lexmap = {}
            if lex_idx is not None and lex_val is not None:  # both set, or both None
                for j, v in zip(lex_idx[r].tolist(), lex_val[r].tolist(), strict=True):
                    if 0 <= j < n:
                        lexmap[j] = v
                        cand.setdefault(j)
            rows = np.fromiter((j for j in cand if j not in self.retired), dtype=np.int64)
            idx[r, : len(rows)] = rows
            if exact:
                cos[r, : len(rows)] = sims[r, torch.from_numpy(rows)].numpy()
            else:  # approximate search: cosines of the candidates computed here
                cos[r, : len(rows)] = (self.emb[torch.from_numpy(rows)].float() @ qe[r]).numpy()
            lex[r, : len(rows)] = [lexmap.get(j, 0.0) for j in rows.tolist()]
        # lexical scores of embedding-found rows the lexical top list missed are left 0: a lower bound
        return Neighbours(idx, cos, lex)

    def _ivf_search(self, qe: torch.Tensor, n: int, k: int, nprobe: int) -> torch.Tensor:
        """Inverted-file search: the rows of the `nprobe` lists whose centroids are nearest, ranked exactly."""
        if self._ivf is None or self._ivf_rows < n:
            self._build_ivf(n)
        assert self._ivf is not None  # _build_ivf sets it
        cents, lists = self._ivf
        probe = (qe @ cents.T).topk(min(nprobe, len(cents)), dim=1).indices  # [Q, nprobe]
        out = torch.full((len(qe), k), 0, dtype=torch.long)
        for r in range(len(qe)):
            rows = torch.cat([lists[j] for j in probe[r].tolist()])
            rows = rows[rows < n]
            sims = self.emb[rows].float() @ qe[r]
            if self.retired:
                sims[torch.isin(rows, torch.tensor(sorted(self.retired)))] = -2.0
            top = sims.topk(min(k, len(rows))).indices
            out[r, : len(top)] = rows[top]
        return out

    def _build_ivf(self, n: int, iters: int = 6) -> None:
        """k-means centroids (about 4 sqrt(n) lists) on a sample; rows assigned to their nearest centroid.
        Rows added later are assigned on the next search (only the new ones)."""
        g = torch.Generator().manual_seed(0)
        if self._ivf is None:
            n_lists = max(16, int(4 * n**0.5))
            sample = self.emb[torch.randperm(n, generator=g)[: 32 * n_lists]].float()
            cents = sample[torch.randperm(len(sample), generator=g)[:n_lists]].clone()
            for _ in range(iters):
                assign = (sample @ cents.T).argmax(1)
                sums = torch.zeros_like(cents).index_add_(0, assign, sample)
                cents = torch.where(
                    torch.bincount(assign, minlength=n_lists)[:, None] > 0,
                    torch.nn.functional.normalize(sums, dim=-1),
                    cents,
                )
            start, lists = 0, [torch.zeros(0, dtype=torch.long) for _ in range(n_lists)]
        else:
            (cents, lists), start = self._ivf, self._ivf_rows
        assign = torch.cat(
            [(self.emb[s : min(s + 65536, n)].float() @ cents.T).argmax(1) for s in range(start, n, 65536)]
        )
        order = torch.argsort(assign, stable=True)
        counts = torch.bincount(assign, minlength=len(cents)).tolist()
        for j, part in enumerate(torch.split(order + start, counts)):
            if len(part):
                lists[j] = torch.cat([lists[j], part])
        self._ivf, self._ivf_rows = (cents, lists), n

    def _cosines(self, qe: torch.Tensor, n: int, chunk: int = 262_144) -> torch.Tensor:
        """[Q, D] unit queries -> [Q, n] cosines from the float16 matrix (float16 products: about 1e-3 off)."""
        m = self.emb[:n]
        out = torch.empty(len(qe), n)
        for s in range(0, n, chunk):
            out[:, s : s + chunk] = (qe.to(torch.float16) @ m[s : s + chunk].T).float()  # no float32 copy
        return out

    def vote(
        self, nb: Neighbours, space_codes: dict[int, dict[str, int]], cfg: VoteConfig | None = None
    ) -> tuple[Votes, np.ndarray, np.ndarray, np.ndarray]:
        """Similarity-weighted votes at each level: {level: (rows, code index, weight)} plus the chosen neighbours.

        space_codes: per level, code -> index in the label space's order.
        """
        cfg = cfg or self.config
        h = nb.hybrid(cfg.lexical_weight)
        k = min(cfg.k, h.shape[1])
        order = np.argsort(-h, axis=1, kind="stable")[:, :k]
        chosen = np.take_along_axis(nb.idx, order, 1)
        hs = np.take_along_axis(h, order, 1)
        w = np.where(chosen >= 0, np.maximum(hs - cfg.min_similarity, 0.0), 0.0)
        votes: Votes = {}
        rows_r, cols_r = np.nonzero(w > 0)
        for level in (6, 4, 2):
            rr, cc, ww = [], [], []
            table = space_codes[level]
            for r, j in zip(rows_r.tolist(), cols_r.tolist(), strict=True):
                code = self.codes[chosen[r, j]]
                if len(code) >= level:
                    rr.append(r)
                    cc.append(table[code[:level]])
                    ww.append(w[r, j])
            votes[level] = (np.asarray(rr, np.int64), np.asarray(cc, np.int64), np.asarray(ww, np.float32))
        return votes, chosen, hs, w

    def evidence(self, chosen: np.ndarray, hs: np.ndarray, w: np.ndarray, row: int) -> tuple[Precedent, ...]:
        out = []
        for j in range(chosen.shape[1]):
            i = int(chosen[row, j])
            if i < 0 or not np.isfinite(hs[row, j]):
                continue
            ds, pid, date = self.provenance[i]
            out.append(Precedent(self.texts[i], self.codes[i], ds, pid, date, float(hs[row, j]), float(w[row, j])))
        return tuple(out)

    # -- storage ------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"emb": self.matrix.contiguous(), **self.lexical.state()}
        save_file(tensors, str(folder / INDEX_FILE))
        card = {
            "sha256": _sha256(folder / INDEX_FILE),
            "tower": self.tower,
            "dim": self.dim,
            "rows": len(self),
            "config": asdict(self.config),
            "codes": self.codes,
            "texts": self.texts,
            "provenance": [list(p) for p in self.provenance],
        }
        (folder / INDEX_CARD).write_text(json.dumps(card, ensure_ascii=False, separators=(",", ":")))

    @classmethod
    def load(cls, folder: Path, valid_codes: frozenset[str] | set[str] | None = None) -> PrecedentIndex | None:
        """The index shipped next to a model, or None when there is none. Rows whose code is not valid are dropped
        (counted in the log)."""
        if not (folder / INDEX_FILE).is_file() or not (folder / INDEX_CARD).is_file():
            return None
        card = json.loads((folder / INDEX_CARD).read_text())
        if card.get("sha256") and card["sha256"] != _sha256(folder / INDEX_FILE):
            raise ValueError(f"{folder / INDEX_FILE} does not match the hash in {INDEX_CARD}: the file was changed")
        t = load_file(str(folder / INDEX_FILE))
        n = int(card["rows"])
        if len(card["codes"]) != n or t["emb"].shape[0] != n:
            raise ValueError(f"{folder / INDEX_FILE}: {t['emb'].shape[0]} vectors for {len(card['codes'])} codes")
        cfg = VoteConfig.from_dict(card.get("config", {}))
        index = cls(tower=card["tower"], dim=int(card["dim"]), lexical=LexicalIndex(cfg.lexical_scheme), config=cfg)
        index.emb = t["emb"].to(torch.float16).contiguous()
        index.codes, index.texts = list(card["codes"]), list(card["texts"])
        index.provenance = [tuple(p) for p in card["provenance"]]
        index._n = n
        index.lexical.load_state(t, n)
        if valid_codes is not None:
            bad = [i for i, c in enumerate(index.codes) if c not in valid_codes]
            if bad:
                log.warning("precedents: %d shipped rows skipped, code not in HS 2022", len(bad))
                index = index.subset([i for i in range(n) if i not in set(bad)])
        return index

    def subset(self, rows: Sequence[int]) -> PrecedentIndex:
        """A new index over some rows (used to drop rows and by the date-held-out experiment)."""
        rows = list(rows)
        out = PrecedentIndex(self.tower, self.dim, lexical=LexicalIndex(self.lexical.scheme), config=self.config)
        if rows:
            out.emb = self.matrix[torch.tensor(rows, dtype=torch.long)].clone()
            out._n = len(rows)
            out.lexical.add_counts(self.lexical.counts().tocsr()[rows])
        out.codes = [self.codes[i] for i in rows]
        out.texts = [self.texts[i] for i in rows]
        out.provenance = [self.provenance[i] for i in rows]
        return out


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fuse_log_probs(
    log_p6: torch.Tensor,
    votes: Votes,
    cfg: VoteConfig,
    sub_to_head: torch.Tensor,
    sub_to_chap: torch.Tensor,
    text_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Model log P(subheading) [Q, S] + the votes -> fused log P [Q, S]; rows without votes keep log_p6 exactly.

    text_weight [Q]: the model's gate on the description (1 for text alone, lower when a photo carries the item):
    precedents are found through the description, so they count as much as the model trusts it."""
    q, s = log_p6.shape
    add = torch.zeros(q, s, dtype=torch.float32)
    for level, beta, parent in ((6, cfg.beta6, None), (4, cfg.beta4, sub_to_head), (2, cfg.beta2, sub_to_chap)):
        rows, cols, w = votes[level]
        if beta == 0 or len(rows) == 0:
            continue
        n = s if parent is None else int(parent.max()) + 1
        v = torch.zeros(q, n)
        v.index_put_((torch.from_numpy(rows), torch.from_numpy(cols)), torch.from_numpy(w), accumulate=True)
        add += beta * (v if parent is None else v[:, parent])
    voted = voted_rows(votes, q)
    if text_weight is not None:
        add = add * text_weight.float().cpu()[:, None]
    z = log_p6.float() + add
    fused = torch.where(voted[:, None], torch.log_softmax(z / cfg.temperature, dim=-1), log_p6.float())
    return fused


def voted_rows(votes: Votes, n: int) -> torch.Tensor:
    """[n] bool: rows with at least one neighbour above the floor (at any level: chapters get every vote)."""
    voted = torch.zeros(n, dtype=torch.bool)
    for rows, _, w in votes.values():
        if len(rows):
            voted[torch.from_numpy(rows[w > 0])] = True
    return voted


def summary(code: str, precedents: Sequence[Precedent]) -> str | None:
    """ "4 earlier rulings on similar goods: 6506.10" for the precedents of `code` that voted; None when none."""
    mine = [p for p in precedents if p.weight > 0 and (p.code.startswith(code) or code.startswith(p.code))]
    if not mine:
        return None
    kinds = {p.dataset for p in mine}
    noun = "earlier rulings" if kinds <= {"cbp_rulings"} else "labelled precedents"
    if kinds <= {"reviewed"}:
        noun = "reviewed decisions"
    if len(mine) == 1:
        noun = noun.replace("rulings", "ruling").replace("precedents", "precedent").replace("decisions", "decision")
    shown = f"{code[:4]}.{code[4:]}" if len(code) == 6 else code
    return f"{len(mine)} {noun} on similar goods: {shown}"


def valid_code_set() -> frozenset[str]:
    """HS 2022 subheadings and headings (what a precedent's code may be)."""
    from hs_core.nomenclature import get_nomenclature

    nom = get_nomenclature()
    subs = [c.digits for c in nom.subheadings]
    return frozenset(subs) | frozenset(c[:4] for c in subs)


def code_tables(subheadings: Sequence[str]) -> dict[int, dict[str, int]]:
    """Per level, code -> index, in the order of a LabelSpace built from `subheadings`."""
    subs = sorted(subheadings)
    heads = sorted({c[:4] for c in subs})
    chaps = sorted({c[:2] for c in subs})
    return {
        6: {c: i for i, c in enumerate(subs)},
        4: {c: i for i, c in enumerate(heads)},
        2: {c: i for i, c in enumerate(chaps)},
    }
