"""Lexical search over precedents: hashed word counts and BM25 / TF-IDF cosine scores (numpy + scipy, no torch).

The word score catches what embeddings blur: model and part numbers, CAS numbers, brand and stone names. Words are
lower-cased tokens that keep codes whole ("405-39-0", "8471.30", "m8x20"), hashed into 2**20 columns so an index
needs no vocabulary file and grows without a rebuild.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp  # type: ignore[import-untyped]  # scipy ships no type information (no py.typed)
import torch

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
