"""Photo precedents: the labelled catalogue photos nearest to a product's photo vote for their heading.

The text precedents (hs_model.precedents) are found through the description, so a product with only a photo gets no
vote from them. This index holds, per labelled photo, the image tower's pooled vector (unit, float16), its HS code
(a heading or a subheading), the product's title (shown as evidence) and where it came from. A query photo's k
nearest photos (cosine) share a vote softmax(sim / tau) that goes to their headings, and the model's subheading
log-probabilities become log_softmax(log p + beta * image_gate * v4[heading]), image_gate being the model's own
weight on the photo (the vote counts as much as the model trusts the photo). Rows without a photo keep the model's
distribution bit for bit. The settings are fitted on Myntra val with an index of Myntra train photos
(`python -m hs_train.photo_precedents`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file

from hs_model.checkpoint import PHOTO_PRECEDENTS_CARD, PHOTO_PRECEDENTS_INDEX
from hs_model.precedents import Precedent, _sha256, save_index_files

log = logging.getLogger(__name__)

INDEX_FILE = PHOTO_PRECEDENTS_INDEX
INDEX_CARD = PHOTO_PRECEDENTS_CARD
PHOTO_DATASET = "myntra_photo"  # catalogue photos (Myntra), labelled with the heading of their article type
LISTED_SHARE = 0.05  # a photo with less of the vote is not listed as evidence (it moved its heading by < 0.05 beta g)


@dataclass(frozen=True)
class PhotoVoteConfig:
    """How many photos vote and how much (fitted on Myntra val, docs/results/photo_precedents.json)."""

    k: int = 5
    tau: float = 0.05  # softmax temperature over the k cosines: lower gives the nearest photo more of the vote
    beta: float = 3.0  # weight of the vote (a share of 1 adds beta * image_gate to the heading's log-probability)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PhotoVoteConfig:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True)
class PhotoAddReport:
    """What `PhotoIndex.add` did with the rows it was given."""

    added: int = 0
    skipped_invalid_code: int = 0
    skipped_no_vector: int = 0  # an all-zero vector: the photo could not be read
    invalid_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PhotoNeighbours:
    """Per query, the nearest photos: index rows [Q, k] (-1: none), their cosines and vote shares (0 for none)."""

    idx: torch.Tensor
    sims: torch.Tensor
    share: torch.Tensor


@dataclass
class PhotoIndex:
    """Unit pooled photo vectors (float16 [N, C]) + codes + titles + provenance (dataset, id, date)."""

    tower: str
    dim: int
    emb: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float16))
    codes: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    provenance: list[tuple[str, str, str]] = field(default_factory=list)
    config: PhotoVoteConfig = field(default_factory=PhotoVoteConfig)

    def __post_init__(self) -> None:
        if self.emb.numel() == 0:
            self.emb = torch.zeros(0, self.dim, dtype=torch.float16)
        self._heads: tuple[Mapping[str, int], torch.Tensor] | None = None  # (the heading table, heading per row)

    def __len__(self) -> int:
        return len(self.codes)

    def add(
        self,
        emb: torch.Tensor,
        codes: Sequence[str],
        texts: Sequence[str],
        provenance: Sequence[tuple[str, str, str]],
        valid_codes: frozenset[str] | set[str],
    ) -> PhotoAddReport:
        """Append labelled photos. Codes must be 4 or 6 digits and in `valid_codes` (HS 2022 headings and
        subheadings); other rows are skipped and counted, and so are all-zero vectors (unreadable photos)."""
        keep, invalid, empty = [], [], 0
        norms = emb.float().norm(dim=-1)
        for i, c in enumerate(codes):
            c = str(c).replace(".", "").strip()
            if not (c.isdigit() and len(c) in (4, 6) and c in valid_codes):
                invalid.append(c)
            elif norms[i] == 0:
                empty += 1
            else:
                keep.append((i, c))
        if invalid:
            log.warning(
                "photo precedents: %d skipped, code not in HS 2022: %s",
                len(invalid),
                ", ".join(sorted(set(invalid))[:20]),
            )
        if empty:
            log.info("photo precedents: %d skipped, no photo vector", empty)
        if keep:
            rows = torch.tensor([i for i, _ in keep], dtype=torch.long)
            vecs = torch.nn.functional.normalize(emb[rows].float(), dim=-1).to(torch.float16)
            self.emb = torch.cat([self.emb, vecs])
            self.codes.extend(c for _, c in keep)
            self.texts.extend(str(texts[i] or "") for i, _ in keep)
            self.provenance.extend(cast(tuple[str, str, str], tuple(str(x) for x in provenance[i])) for i, _ in keep)
            self._heads = None
        return PhotoAddReport(len(keep), len(invalid), empty, tuple(sorted(set(invalid))))

    # -- search and vote ---------------------------------------------------------------------------------
    def search(self, pooled: torch.Tensor, has_photo: torch.Tensor | None = None) -> PhotoNeighbours:
        """The k nearest photos of each query [Q, C] (rows without a photo, or all-zero, get none)."""
        cfg, q = self.config, len(pooled)
        k = min(cfg.k, len(self))
        has = pooled.float().norm(dim=-1) > 0
        if has_photo is not None:
            has &= has_photo.cpu().bool()
        if k == 0:
            return PhotoNeighbours(torch.full((q, 1), -1), torch.zeros(q, 1), torch.zeros(q, 1))
        qe = torch.nn.functional.normalize(pooled.float().cpu(), dim=-1).to(torch.float16)
        top = (qe @ self.emb.T).float().topk(k, dim=1)  # float16 products (memory-bound): about 1e-3 off
        share = torch.softmax(top.values / cfg.tau, dim=1)
        idx = torch.where(has[:, None], top.indices, -1)
        return PhotoNeighbours(idx, torch.where(has[:, None], top.values, 0.0), torch.where(has[:, None], share, 0.0))

    def vote(self, nb: PhotoNeighbours, headings: Mapping[str, int]) -> torch.Tensor:
        """Heading votes [Q, H]: each neighbour's share added to its code's heading (`headings`: code -> column)."""
        if self._heads is None or self._heads[0] is not headings:  # built once per table (the classifier keeps one)
            self._heads = (headings, torch.tensor([headings[c[:4]] for c in self.codes], dtype=torch.long))
        heads = self._heads[1]
        v = torch.zeros(len(nb.idx), len(headings))
        if len(heads):
            v.scatter_add_(1, heads[nb.idx.clamp(min=0)], nb.share)  # share is 0 where idx is -1
        return v

    def evidence(self, nb: PhotoNeighbours, row: int, scale: float) -> tuple[Precedent, ...]:
        """The photos that voted for query `row` with at least `LISTED_SHARE` of the vote, as precedents: similarity =
        cosine, weight = share * `scale` (beta * the row's image gate: what the vote added to the heading's
        log-probability). With a sharp vote (small tau) the nearest photos hold nearly all of it; the rest, listed,
        would read as "10 similar photos" where two decided."""
        out = []
        for i, sim, share in zip(nb.idx[row].tolist(), nb.sims[row].tolist(), nb.share[row].tolist(), strict=True):
            if i < 0 or share < LISTED_SHARE or share * scale <= 0:
                continue
            ds, pid, date = self.provenance[i]
            out.append(Precedent(self.texts[i], self.codes[i], ds, pid, date, float(sim), float(share * scale)))
        return tuple(out)

    # -- storage ------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_index_files(folder, INDEX_FILE, INDEX_CARD, {"emb": self.emb.contiguous()}, self)

    @classmethod
    def load(cls, folder: Path, valid_codes: frozenset[str] | set[str] | None = None) -> PhotoIndex | None:
        """The photo index shipped next to a model, or None when there is none. Raises ValueError for a file that
        does not match its card. Rows whose code is not valid are dropped (counted in the log)."""
        if not (folder / INDEX_FILE).is_file() or not (folder / INDEX_CARD).is_file():
            return None
        card = json.loads((folder / INDEX_CARD).read_text())
        if card.get("sha256") != _sha256(folder / INDEX_FILE):
            raise ValueError(f"{folder / INDEX_FILE} does not match the hash in {INDEX_CARD}: the file was changed")
        emb = load_file(str(folder / INDEX_FILE))["emb"].to(torch.float16)
        n, dim = int(card["rows"]), int(card["dim"])
        if emb.shape != (n, dim) or len(card["codes"]) != n or len(card["texts"]) != n or len(card["provenance"]) != n:
            raise ValueError(f"{folder / INDEX_FILE}: {tuple(emb.shape)} vectors for {len(card['codes'])} codes")
        keep = list(range(n))
        if valid_codes is not None:
            keep = [i for i, c in enumerate(card["codes"]) if c in valid_codes]
            if len(keep) < n:
                log.warning("photo precedents: %d shipped rows skipped, code not in HS 2022", n - len(keep))
        return cls(
            tower=card["tower"],
            dim=dim,
            emb=emb[torch.tensor(keep, dtype=torch.long)].contiguous() if len(keep) < n else emb.contiguous(),
            codes=[card["codes"][i] for i in keep],
            texts=[card["texts"][i] for i in keep],
            provenance=[cast(tuple[str, str, str], tuple(card["provenance"][i])) for i in keep],
            config=PhotoVoteConfig.from_dict(card.get("config", {})),
        )


def fuse_photo_vote(
    log_p6: torch.Tensor, v4: torch.Tensor, image_gate: torch.Tensor, beta: float, sub_to_head: torch.Tensor
) -> torch.Tensor:
    """log P(subheading) [Q, S] + beta * image_gate [Q] * heading votes v4 [Q, H] -> renormalised [Q, S]; rows with
    no vote (no photo, empty index) keep `log_p6` exactly."""
    voted = (v4 > 0).any(dim=1)  # [Q]
    z = log_p6.float() + beta * image_gate.float()[:, None] * v4[:, sub_to_head]
    return torch.where(voted[:, None], torch.log_softmax(z, dim=-1).to(log_p6.dtype), log_p6)
