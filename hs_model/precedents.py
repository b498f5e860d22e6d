"""Precedents vote: the nearest labelled examples (earlier rulings, training pairs, reviewed decisions) as a signal.

An index holds, per precedent, the text tower's unit vector (float16), its hashed word counts (for a lexical score
that catches what embeddings blur: model and CAS numbers, brand and stone names), its HS code (6 digits, or 4
for heading-only labels) and where it came from. A query's neighbours are ranked by a hybrid similarity
h = (1 - lam) * cosine + lam * lexical; the top k with h above a floor vote, weighted by (h - floor), into
chapters, headings and subheadings; the votes are added to the model's log-probabilities of the subheadings
(log p + b6 v6 + b4 v4[heading] + b2 v2[chapter]) and renormalised at a fitted temperature. A long description (a
ruling's full text: at least `long_words` words) is read differently: the text tower sees only its first 128 tokens
while the lexical score reads every word, so its neighbours are ranked with more lexical weight and the model's
log-probabilities count less (`long_lexical_weight`, `long_model_weight`). With no text, or no neighbour above the
floor, the result is exactly the model's own distribution. Database-free; numpy + scipy + torch.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hs_model.checkpoint import PRECEDENTS_CARD, PRECEDENTS_INDEX
from hs_model.lexical import LexicalIndex, LexicalScheme

log = logging.getLogger(__name__)

INDEX_FILE = PRECEDENTS_INDEX
INDEX_CARD = PRECEDENTS_CARD
# per level (6, 4, 2): (query rows, code indices in the label space, weights) of the neighbours that vote
Votes = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


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
    long_words: int = 0  # descriptions of at least this many words are "long" (0: one regime for all)
    long_lexical_weight: float = 0.5  # lam for long descriptions
    long_model_weight: float = 1.0  # the model's log P counts this much for long descriptions

    def lexical_weights(self, long_rows: np.ndarray) -> np.ndarray:
        """[Q] the lexical weight of each query (long descriptions take `long_lexical_weight`)."""
        return np.where(long_rows, self.long_lexical_weight, self.lexical_weight).astype(np.float32)

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
    """Per query, the hybrid-ranked neighbours: index rows [Q, C] (-1 = none) and their cos / lexical scores, and the
    query's length in words (what makes a description long)."""

    idx: np.ndarray
    cos: np.ndarray
    lex: np.ndarray
    words: np.ndarray | None = None  # [Q]; None: every query counts as short

    def hybrid(self, lam: float | np.ndarray) -> np.ndarray:
        """[Q, C] hybrid similarities; `lam` one weight or one per query [Q]."""
        lam = np.asarray(lam, dtype=np.float32)
        if lam.ndim == 1:
            lam = lam[:, None]
        h = (1 - lam) * self.cos + lam * self.lex
        return np.where(self.idx >= 0, h, -np.inf)

    def long_rows(self, cfg: VoteConfig) -> np.ndarray:
        """[Q] bool: the queries `cfg` reads as long descriptions."""
        if cfg.long_words <= 0 or self.words is None:
            return np.zeros(len(self.idx), dtype=bool)
        return self.words >= cfg.long_words


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
    history_cursor: int = 0  # the last imported history row id added (services.precedents)
    retraction_cursor: int = 0  # the last history retraction applied (services.precedents)

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
        words = np.array([len(t.split()) for t in query_texts], dtype=np.int64)
        if n == 0 or q == 0:
            empty = np.full((q, 1), -1, dtype=np.int64)
            return Neighbours(empty, np.zeros((q, 1), np.float32), np.zeros((q, 1), np.float32), words)
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
            lexical = cfg.lexical_weight > 0 or (cfg.long_words > 0 and cfg.long_lexical_weight > 0)
            lex_idx, lex_val = self.lexical.search(query_texts, kc) if lexical else (None, None)
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
        return Neighbours(idx, cos, lex, words)

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
        h = nb.hybrid(cfg.lexical_weights(nb.long_rows(cfg)))
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
        save_index_files(folder, INDEX_FILE, INDEX_CARD, tensors, self)

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


def save_index_files(
    folder: Path, index_file: str, card_file: str, tensors: dict[str, torch.Tensor], index: Any
) -> None:
    """Write an index's tensors and its card (hash of the tensor file, tower, dim, rows, vote settings, codes, texts,
    provenance): the text and the photo precedents share this layout."""
    save_file(tensors, str(folder / index_file))
    card = {
        "sha256": _sha256(folder / index_file),
        "tower": index.tower,
        "dim": index.dim,
        "rows": len(index),
        "config": asdict(index.config),
        "codes": index.codes,
        "texts": index.texts,
        "provenance": [list(p) for p in index.provenance],
    }
    (folder / card_file).write_text(json.dumps(card, ensure_ascii=False, separators=(",", ":")))


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
    long_rows: np.ndarray | None = None,
) -> torch.Tensor:
    """Model log P(subheading) [Q, S] + the votes -> fused log P [Q, S]; rows without votes keep log_p6 exactly.

    text_weight [Q]: the model's gate on the description (1 for text alone, lower when a photo carries the item):
    precedents are found through the description, so they count as much as the model trusts it.
    long_rows [Q] bool (`Neighbours.long_rows(cfg)`): long descriptions, whose model term counts `long_model_weight`.
    """
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
    model = log_p6.float()
    if long_rows is not None and cfg.long_model_weight != 1.0:
        model = torch.where(
            torch.from_numpy(np.asarray(long_rows, dtype=bool))[:, None], cfg.long_model_weight * model, model
        )
    z = model + add
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
    """ "4 earlier rulings on similar goods: 6506.10" for the precedents that voted for `code` or a code under it;
    None when none did. Precedents labelled only at a coarser level (a catalogue title known to its heading) voted
    for that level, not for this subheading: "5 labelled precedents on similar goods: heading 6110". Catalogue
    photos (datasets ending in "_photo") are counted apart: "5 similar catalogue photos: heading 6109", or
    "2 earlier rulings on similar goods and 5 similar catalogue photos: heading 6109"."""
    voted = [p for p in precedents if p.weight > 0]
    mine = [p for p in voted if p.code.startswith(code)]
    where = _shown(code)
    if not mine:  # only coarser labels above `code`: say which level they name
        above = [p for p in voted if code.startswith(p.code)]
        if not above:
            return None
        parent = min((p.code for p in above), key=len)
        mine, where = above, f"{'heading' if len(parent) == 4 else 'chapter'} {_shown(parent)}"
    photos = [p for p in mine if p.dataset.endswith("_photo")]
    texts = [p for p in mine if not p.dataset.endswith("_photo")]
    parts = [f"{len(texts)} {_noun(texts)} on similar goods"] if texts else []
    if photos:
        parts.append(f"{len(photos)} similar catalogue photo{'s' if len(photos) > 1 else ''}")
    return f"{' and '.join(parts)}: {where}"


def _noun(precedents: Sequence[Precedent]) -> str:
    kinds = {p.dataset for p in precedents}
    noun = "earlier rulings" if kinds <= {"cbp_rulings"} else "labelled precedents"
    if kinds <= {"reviewed"}:
        noun = "reviewed decisions"
    if len(precedents) == 1:
        noun = noun.replace("rulings", "ruling").replace("precedents", "precedent").replace("decisions", "decision")
    return noun


def _shown(code: str) -> str:
    return f"{code[:4]}.{code[4:]}" if len(code) == 6 else code


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
