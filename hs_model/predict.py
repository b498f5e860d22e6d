"""Inference boundary: text and photos in, ranked HS 2022 candidates at 2, 4 and 6 digits out (plain data)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image

from hs_core.limits import LIMITS
from hs_core.nomenclature import HsCode
from hs_core.settings import DEFAULT_MODEL_DIR
from hs_core.text import clean_text as strip_controls
from hs_model.bank import (
    DEFAULT_BRIDGE_PROMPT,
    LEGACY_BRIDGE_PROMPT,
    build_official_bank,
    class_name_embeddings,
    with_extra_prototypes,
)
from hs_model.checkpoint import CheckpointError, ModelCard, load_checkpoint
from hs_model.config import TowerConfig
from hs_model.errors import InputError
from hs_model.images import load_image
from hs_model.model import HeadConfig, HsJointModel, LabelSpace
from hs_model.photo_precedents import PhotoIndex, fuse_photo_vote
from hs_model.precedents import Precedent, PrecedentIndex, code_tables, fuse_log_probs, summary, valid_code_set
from hs_model.questions import HEADINGS_COVERED, POOL, Guidance, guide
from hs_model.towers import TextTower, adapter_identity, adapter_tensors, build_towers, merge_text_adapter

log = logging.getLogger(__name__)

LEVELS = (2, 4, 6)


@dataclass(frozen=True)
class Candidate:
    """One ranked code at one level; score is the calibrated probability of that code (0..1).

    `code` is an `HsCode` (bare digits given are checked against HS 2022 and converted): a candidate that is not
    an HS 2022 code cannot exist.
    """

    code: HsCode
    level: int
    description: str
    score: float

    def __post_init__(self) -> None:
        if type(self.code) is not HsCode:
            object.__setattr__(self, "code", HsCode(self.code))

    def to_dict(self) -> dict[str, str | float]:
        return {"code": self.code, "description": self.description, "score": round(self.score, 6)}


@dataclass(frozen=True)
class Query:
    """One product to classify: a description and/or photos (already decoded)."""

    text: str | None = None
    images: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one product."""

    model_version: str
    nomenclature_edition: str
    levels: dict[int, list[Candidate]]
    needs_review: bool
    review_threshold: float
    latency_ms: float
    modality: str  # "text" | "image" | "both"
    gates: tuple[float, float]  # weight given to text and to the photos
    embedding: tuple[float, ...] = ()  # joint-space vector (for precedent search)
    notes: tuple[str, ...] = field(default=())
    guidance: Guidance | None = None  # questions, evidence and answers (hs_model.questions)
    precedents: tuple[Precedent, ...] = ()  # nearest labelled examples (weight > 0: they voted)

    def precedent_summary(self, code: str) -> str | None:
        """ "4 earlier rulings on similar goods: 6506.10" when precedents voted for `code` (2, 4 or 6 digits)."""
        return summary(code, self.precedents)

    @property
    def top(self) -> Candidate:
        return self.levels[6][0]

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "nomenclature_edition": self.nomenclature_edition,
            "levels": {str(lv): [c.to_dict() for c in cs] for lv, cs in self.levels.items()},
            "needs_review": self.needs_review,
            "review_threshold": self.review_threshold,
            "modality": self.modality,
            "gates": {"text": round(self.gates[0], 4), "image": round(self.gates[1], 4)},
            "latency_ms": round(self.latency_ms, 2),
            "notes": list(self.notes),
            "precedents": {
                "neighbours": [p.to_dict() for p in self.precedents],
                "candidates": {
                    c.code: line
                    for cs in self.levels.values()
                    for c in cs
                    if (line := self.precedent_summary(c.code)) is not None
                },
            },
        } | (self.guidance.to_json() if self.guidance is not None else {})


def clean_text(text: str | None) -> str:
    """Strip control characters (binary noise) and outer whitespace; refuse texts over the limit."""
    if text is None:
        return ""
    if len(text) > LIMITS.max_text_chars:
        raise InputError(
            f"The description has {len(text):,} characters; the limit is {LIMITS.max_text_chars:,}. "
            "Shorten it to the product's essentials (what it is, material, use)."
        )
    return strip_controls(text)


def validate_query(text: str | None, images: Sequence[object]) -> str:
    """The cleaned description; raises InputError when there is nothing to classify or the text is too long."""
    cleaned = clean_text(text)
    if not cleaned and not images:
        raise InputError("Give a description, at least one photo, or both.")
    return cleaned


def decode_images(sources: Sequence[bytes | Path], names: Sequence[str] | None = None) -> tuple[Image.Image, ...]:
    """Decode uploaded photos; raises ImageError naming the first bad one."""
    if len(sources) > LIMITS.max_images:
        raise InputError(f"{len(sources)} photos given; at most {LIMITS.max_images} per product.")
    names = names or [s.name if isinstance(s, Path) else f"photo {i + 1}" for i, s in enumerate(sources)]
    return tuple(load_image(s, n) for s, n in zip(sources, names, strict=True))


class Classifier:
    """Towers + joint model + nomenclature, loaded once and shared (read-only) by every session."""

    precedents: PrecedentIndex | None = None  # the labelled examples' vote (None: codes only)
    photo_precedents: PhotoIndex | None = None  # the labelled catalogue photos' vote (None: none)

    def __init__(self, model_dir: Path | None = DEFAULT_MODEL_DIR, towers: TowerConfig | None = None) -> None:
        from hs_core.nomenclature import EDITION, get_nomenclature

        t0 = time.perf_counter()
        self.nomenclature = get_nomenclature()
        self.edition = EDITION
        self.tower_config = towers or TowerConfig.from_env()
        self.text_tower, self.image_tower, self.device = build_towers(self.tower_config)
        # The configured tower: it embeds the codes' texts (the bank) for every model version. A checkpoint with a
        # text adapter (hsdesk-v3) reads descriptions with its own tuned copy (`text_tower`, set by `_load_head`).
        self.base_text_tower = self.text_tower
        self._tuned_towers: dict[str, TextTower] = {}  # shared by `with_model` copies: one merge per adapter
        # On CPU small photo batches are fastest (memory-bound convolutions); on a GPU large ones.
        self.image_batch_size = 64 if self.device.type == "cuda" else 4
        self.space = LabelSpace.from_codes([c.digits for c in self.nomenclature.subheadings])
        self.official_bank = build_official_bank(self.base_text_tower, self.space, self.edition)
        self.card, self.model, self.text_tower = self._load_head(model_dir)
        self.precedents = self._load_precedents(model_dir)
        self.photo_precedents = self._load_photo_precedents(model_dir)
        self.lock = threading.Lock()  # explanations hook shared modules; they take this lock
        self.load_seconds = time.perf_counter() - t0
        log.info("classifier %s ready in %.1f s", self.card.version, self.load_seconds)

    def _load_head(self, model_dir: Path | None) -> tuple[ModelCard, HsJointModel, TextTower]:
        """The trained parts of a checkpoint (or the zero-shot parts) on top of the shared towers, and the text
        tower that reads its descriptions (the configured one, or a tuned copy when the checkpoint has an adapter)."""
        card, tensors = load_checkpoint(model_dir) if model_dir is not None else (zero_shot_card(self.tower_config), {})
        base = self.base_text_tower
        expected = adapter_identity(base.name, tensors)
        if card.text_tower != expected or card.image_tower != self.image_tower.name:
            raise CheckpointError(
                f"Model {card.version} was trained on {card.text_tower} + {card.image_tower}, "
                f"not on the configured towers {expected} + {self.image_tower.name}."
            )
        try:
            text_tower = self._text_tower_for(tensors)
        except ValueError as exc:
            raise CheckpointError(f"The text adapter of model {card.version} does not fit {base.name}: {exc}") from None
        bank = self.official_bank  # the codes' side is always the configured tower's (asymmetric tuning)
        prompt = bridge_prompt(card)
        names = None if prompt == DEFAULT_BRIDGE_PROMPT else class_name_embeddings(base, prompt)
        if "bank.emb" in tensors:
            code_pos = {c: i for i, c in enumerate(self.space.subheadings)}
            codes = torch.tensor([code_pos[f"{int(c):06d}"] for c in tensors["bank.code"].tolist()])
            bank = with_extra_prototypes(bank, tensors["bank.emb"], codes, names)
        elif names is not None:
            bank = with_extra_prototypes(bank, torch.zeros(0, names.shape[1]), torch.zeros(0, dtype=torch.long), names)
        model = HsJointModel(self.space, bank, HeadConfig(base.dim, self.image_tower.dim))
        load_trained_parts(model, tensors)
        return card, model.to(self.device).eval(), text_tower

    def _text_tower_for(self, tensors: dict[str, torch.Tensor]) -> TextTower:
        """The configured tower, or (checkpoint with a text adapter) a copy with the adapter merged, made once."""
        if not adapter_tensors(tensors):
            return self.base_text_tower
        name = adapter_identity(self.base_text_tower.name, tensors)
        tower = self._tuned_towers.get(name)
        if tower is None:
            tower = merge_text_adapter(self.base_text_tower, tensors)
            self._tuned_towers[name] = tower
            log.info("text tower %s: adapter merged", name)
        return tower

    def with_model(self, model_dir: Path | None) -> Classifier:
        """Another model version over the same loaded towers (cheap: no tower is loaded again; a tuned text tower
        is merged once and shared)."""
        other = copy.copy(self)
        other.card, other.model, other.text_tower = self._load_head(model_dir)
        other.precedents = other._load_precedents(model_dir)
        other.photo_precedents = other._load_photo_precedents(model_dir)
        return other

    def _load_precedents(self, model_dir: Path | None) -> PrecedentIndex | None:
        """The precedent index shipped next to a model (None: codes only, as zero-shot and older checkpoints)."""
        if model_dir is None:
            return None
        try:
            index = PrecedentIndex.load(Path(model_dir), valid_code_set())
        except (ValueError, KeyError, OSError) as exc:  # a damaged or tampered index: codes only, said in the log
            log.error("precedent index in %s not used: %s", model_dir, exc)
            return None
        if index is not None and (index.tower != self.text_tower.name or index.dim != self.text_tower.dim):
            log.warning(
                "precedents in %s were embedded with %s, not %s: not used", model_dir, index.tower, self.text_tower.name
            )
            return None
        if index is not None:
            log.info("precedent index: %d rows", len(index))
        return index

    def _load_photo_precedents(self, model_dir: Path | None) -> PhotoIndex | None:
        """The catalogue photos' index shipped next to a model, used only when made with this image tower."""
        if model_dir is None:
            return None
        try:
            index = PhotoIndex.load(Path(model_dir), valid_code_set())
        except (ValueError, KeyError, OSError) as exc:  # a damaged or tampered index: no photo vote, said in the log
            log.error("photo precedent index in %s not used: %s", model_dir, exc)
            return None
        if index is not None and (index.tower != self.image_tower.name or index.dim != self.image_tower.dim):
            log.warning(
                "photo precedents in %s come from %s, not %s: not used", model_dir, index.tower, self.image_tower.name
            )
            return None
        return index

    @functools.cached_property
    def _code_tables(self) -> dict[int, dict[str, int]]:
        return code_tables(self.space.subheadings)

    @property
    def version(self) -> str:
        return self.card.version

    def describe(self, level: int, code: str) -> str:
        return self.nomenclature.description(HsCode.parse(code))

    def predict(self, text: str | None = None, images: Sequence[Image.Image] = (), top_k: int = 5) -> Prediction:
        """Rank HS codes for one product. Raises InputError for unusable input."""
        return self.predict_batch([Query(text, tuple(images))], top_k)[0]

    def predict_batch(self, queries: Sequence[Query], top_k: int = 5) -> list[Prediction]:
        """Rank HS codes for many products; texts are encoded in padded batches."""
        t0 = time.perf_counter()
        feats = self.encode(queries)
        preds = self.predict_features(feats, max(top_k, POOL), started=t0)  # a wider pool for the questions
        return [guide(p, q.text, top_k) for p, q in zip(preds, queries, strict=True)]

    @torch.inference_mode()
    def predict_features(self, feats: Features, top_k: int = 5, started: float | None = None) -> list[Prediction]:
        """Rank HS codes from the towers' outputs (lets evaluation run the towers once for many model versions)."""
        t0 = started if started is not None else time.perf_counter()
        out = self.model(*feats.as_inputs(self.device))
        log_p6 = self.model.level_log_probs(out.logits, 6)
        n = len(feats.has_text)
        evidence: list[tuple[Precedent, ...]] = [()] * n
        voted = [False] * n
        use_precedents = self.precedents is not None and len(feats.texts) == n and bool(feats.has_text.any())
        if use_precedents:
            log_p6, evidence, voted = self._vote(log_p6, feats, out.text_joint, out.gates[:, 0])
        if self.photo_precedents is not None and bool(feats.has_image.any()):
            log_p6, evidence, voted = self._photo_vote(log_p6, feats, out.gates[:, 1], evidence, voted)
        # top-k of the whole batch at once, on the model's device; one transfer per level
        tops = {
            lv: self._top_batch(
                log_p6 if lv == 6 else self.model.level_log_probs(log_p6, lv, temperature=False), lv, top_k
            )
            for lv in LEVELS
        }
        if top_k >= POOL:  # the guidance's pool: every subheading of the best headings too
            tops[6] = self._cover_headings(log_p6, tops[6], tops[4])
        joint = out.joint.float().cpu().tolist()
        gates = out.gates.float().cpu().tolist()
        has_text, has_image = feats.has_text.tolist(), feats.has_image.tolist()
        threshold = float(self.model.review_threshold)
        results = []
        for i in range(n):
            levels = {lv: tops[lv][i] for lv in LEVELS}
            modality = {(True, True): "both", (True, False): "text", (False, True): "image"}[
                (bool(has_text[i]), bool(has_image[i]))
            ]
            results.append(
                Prediction(
                    model_version=self.version,
                    nomenclature_edition=self.edition,
                    levels=levels,
                    needs_review=levels[4][0].score < threshold,  # heading confidence
                    review_threshold=threshold,
                    latency_ms=0.0,
                    modality=modality,
                    gates=(gates[i][0], gates[i][1]),
                    embedding=tuple(joint[i]),
                    notes=(feats.notes[i] if feats.notes else ())
                    + _precedent_note(use_precedents, has_text[i], voted[i]),
                    precedents=evidence[i],
                )
            )
        elapsed = (time.perf_counter() - t0) * 1000 / max(n, 1)
        return [dataclasses.replace(r, latency_ms=elapsed) for r in results]

    def _vote(
        self, log_p6: torch.Tensor, feats: Features, text_joint: torch.Tensor, text_gate: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[Precedent, ...]], list[bool]]:
        """The precedents' vote fused into log P(subheading) [B, S]; rows without text are left as they were."""
        index = self.precedents
        assert index is not None
        texts = [t if has else "" for t, has in zip(feats.texts, feats.has_text.tolist(), strict=True)]
        query = feats.text if index.config.space == "raw" else text_joint.float().cpu()
        nb = index.neighbours(query, texts)
        votes, chosen, sims, weights = index.vote(nb, self._code_tables)
        m = self.model
        fused = fuse_log_probs(
            log_p6.float().cpu(),
            votes,
            index.config,
            m.sub_to_head.cpu(),
            m.sub_to_chap.cpu(),
            text_gate,
            nb.long_rows(index.config),
        )
        evidence = [index.evidence(chosen, sims, weights, i) for i in range(len(texts))]
        voted = [bool((weights[i] > 0).any()) for i in range(len(texts))]
        return fused.to(log_p6.device), evidence, voted

    def _photo_vote(
        self,
        log_p6: torch.Tensor,
        feats: Features,
        image_gate: torch.Tensor,
        evidence: list[tuple[Precedent, ...]],
        voted: list[bool],
    ) -> tuple[torch.Tensor, list[tuple[Precedent, ...]], list[bool]]:
        """The catalogue photos' vote fused into log P(subheading) [B, S] after the text vote; rows without a photo
        are left as they were. The photos that voted join each row's evidence."""
        index = self.photo_precedents
        assert index is not None
        nb = index.search(feats.image_pooled, feats.has_image)
        v4 = index.vote(nb, self._code_tables[4])  # [B, H]
        gate = image_gate.float().cpu()
        fused = fuse_photo_vote(log_p6.cpu(), v4, gate, index.config.beta, self.model.sub_to_head.cpu())
        scale = (index.config.beta * gate).tolist()
        evidence = [e + index.evidence(nb, i, scale[i]) for i, e in enumerate(evidence)]
        voted = [v or bool((v4[i] > 0).any()) for i, v in enumerate(voted)]
        return fused.to(log_p6.device), evidence, voted

    def _top_batch(self, log_probs: torch.Tensor, level: int, k: int) -> list[list[Candidate]]:
        """[B, n_level] log-probabilities -> the k best candidates of each row."""
        codes, texts = self.space.codes(level), self._descriptions[level]
        values, idx = log_probs.float().exp().topk(min(k, len(codes)), dim=1)
        return [
            [Candidate(codes[j], level, texts[j], v) for v, j in zip(vs, js, strict=True)]
            for vs, js in zip(values.cpu().tolist(), idx.cpu().tolist(), strict=True)
        ]

    def _cover_headings(
        self, log_p6: torch.Tensor, subs: list[list[Candidate]], heads: list[list[Candidate]]
    ) -> list[list[Candidate]]:
        """Each row's subheading candidates with every subheading of its HEADINGS_COVERED best headings added (the
        ones a heading question can offer), best first."""
        codes, texts = self.space.codes(6), self._descriptions[6]
        out = []
        for i, (pool6, pool4) in enumerate(zip(subs, heads, strict=True)):
            have = {c.code for c in pool6}
            idx = [j for h in pool4[:HEADINGS_COVERED] for j in self._subheadings_of[h.code] if codes[j] not in have]
            values = log_p6[i, idx].float().exp().cpu().tolist() if idx else []  # [len(idx)]
            added = [Candidate(HsCode(codes[j]), 6, texts[j], v) for j, v in zip(idx, values, strict=True)]
            out.append(sorted(pool6 + added, key=lambda c: -c.score))
        return out

    @functools.cached_property
    def _subheadings_of(self) -> dict[str, list[int]]:
        """Heading -> the positions of its subheadings in the label space."""
        out: dict[str, list[int]] = {}
        for j, code in enumerate(self.space.subheadings):
            out.setdefault(code[:4], []).append(j)
        return out

    @functools.cached_property
    def _descriptions(self) -> dict[int, tuple[str, ...]]:
        """Official texts of every code of the label space, per level, in score order (looked up once)."""
        return {lv: tuple(self.describe(lv, c) for c in self.space.codes(lv)) for lv in LEVELS}

    def encode(self, queries: Sequence[Query]) -> Features:
        """Run the frozen towers once per input; several photos of one product are mean-pooled."""
        texts = [validate_query(q.text, q.images) for q in queries]
        n, tt = len(queries), self.text_tower
        text_emb = torch.zeros(n, tt.dim)
        with_text = [i for i, t in enumerate(texts) if t]
        if with_text:
            text_emb[with_text] = tt.encode_text([texts[i] for i in with_text])
        pooled, probs = self._encode_photos(queries)
        notes = []
        for t in texts:
            # every word piece covers at least one character: a short text cannot be truncated (skip re-tokenising)
            used = tt.token_count(t) if len(t) + 2 > tt.max_length else 0
            notes.append(
                (f"Only the first {tt.max_length - 2} word pieces of the description were read by the model.",)
                if used > tt.max_length
                else ()
            )
        has_text = torch.tensor([bool(t) for t in texts])
        has_image = torch.tensor([bool(q.images) for q in queries])
        return Features(text_emb, pooled, probs, has_text, has_image, tuple(notes), tuple(texts))

    def _encode_photos(self, queries: Sequence[Query]) -> tuple[torch.Tensor, torch.Tensor]:
        """All photos of the batch through the image tower together (one shared photo runs once), mean per query."""
        n, it = len(queries), self.image_tower
        pooled, probs = torch.zeros(n, it.dim), torch.zeros(n, 1000)
        slot_of: dict[int, int] = {}  # id(image) -> row in `images`
        images: list[Image.Image]
        images, owner, slot = [], [], []
        for i, q in enumerate(queries):
            for image in q.images:
                if id(image) not in slot_of:
                    slot_of[id(image)] = len(images)
                    images.append(image)
                owner.append(i)
                slot.append(slot_of[id(image)])
        if not images:
            return pooled, probs
        f = it.encode_image(images, batch_size=self.image_batch_size)
        owner_t, slot_t = torch.tensor(owner), torch.tensor(slot)
        count = torch.bincount(owner_t, minlength=n).clamp(min=1).unsqueeze(1)  # [B, 1]
        pooled.index_add_(0, owner_t, f.pooled[slot_t])
        probs.index_add_(0, owner_t, f.probs[slot_t])
        return pooled / count, probs / count


@dataclass(frozen=True)
class Features:
    """The towers' outputs for a batch: everything the joint model needs. Cacheable."""

    text: torch.Tensor  # [B, E]
    image_pooled: torch.Tensor  # [B, C]
    image_probs: torch.Tensor  # [B, 1000]
    has_text: torch.Tensor  # [B] bool
    has_image: torch.Tensor  # [B] bool
    notes: tuple[tuple[str, ...], ...] = ()
    texts: tuple[str, ...] = ()  # the cleaned descriptions (the precedents' lexical search); may be absent

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        fields = ("text", "image_pooled", "image_probs", "has_text", "has_image")
        text, pooled, probs, has_text, has_image = (torch.cat([getattr(p, f) for p in parts]) for f in fields)
        texts = tuple(t for p in parts for t in p.texts) if all(len(p.texts) == len(p.has_text) for p in parts) else ()
        notes = tuple(n for p in parts for n in p.notes)
        return Features(text, pooled, probs, has_text, has_image, notes=notes, texts=texts)

    def as_inputs(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        return tuple(
            t.to(device) for t in (self.text, self.image_pooled, self.image_probs, self.has_text, self.has_image)
        )


def _precedent_note(used: bool, has_text: bool, voted: bool) -> tuple[str, ...]:
    """Say so when the description found no precedent close enough to vote."""
    if used and has_text and not voted:
        return ("No earlier precedent is close enough to this description to count; codes ranked by their texts only.",)
    return ()


def bridge_prompt(card: ModelCard) -> str:
    """The class-name prompt a model was trained with (cards from before the setting existed used the legacy one)."""
    if card.kind == "zero-shot":
        return cast(str, card.training.get("bridge_prompt", DEFAULT_BRIDGE_PROMPT))
    return cast(str, card.training.get("bridge_prompt", LEGACY_BRIDGE_PROMPT))


def zero_shot_card(towers: TowerConfig) -> ModelCard:
    """Card of the untrained model: official HS texts as prototypes, ImageNet names as the photo bridge."""
    from hs_core.nomenclature import EDITION

    return ModelCard(
        version="zero-shot-v1",
        nomenclature_edition=EDITION,
        text_tower=towers.text_model,
        image_tower=towers.image_model,
        created="2026-11-25",
        kind="zero-shot",
        review_threshold=0.5,
        training={"bridge_prompt": DEFAULT_BRIDGE_PROMPT},
    )


TRAINED_PREFIX = "head."


def trained_parts(model: HsJointModel) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint stores: small parameters plus only the non-zero per-code corrections."""
    out = {TRAINED_PREFIX + k: v for k, v in model.state_dict().items() if not k.startswith("correction")}
    rows = (model.correction.abs().sum(1) > 0) | (model.correction_bias != 0)
    idx = rows.nonzero().flatten()
    out["correction.codes"] = torch.tensor([int(model.space.subheadings[i]) for i in idx.tolist()], dtype=torch.int32)
    out["correction.weight"] = model.correction.detach()[idx]
    out["correction.bias"] = model.correction_bias.detach()[idx]
    return out


def load_trained_parts(model: HsJointModel, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `trained_parts`; an empty dict leaves the zero-shot initialisation."""
    if not tensors:
        return
    state = {k.removeprefix(TRAINED_PREFIX): v for k, v in tensors.items() if k.startswith(TRAINED_PREFIX)}
    missing = model.load_state_dict(state, strict=False)
    optional = ("correction", "heading_correction")  # sparse (below), or absent from older checkpoints: zero
    if missing.unexpected_keys or [k for k in missing.missing_keys if not k.startswith(optional)]:
        raise ValueError(f"checkpoint does not fit the model: {missing}")
    pos = {c: i for i, c in enumerate(model.space.subheadings)}
    idx = torch.tensor([pos[f"{int(c):06d}"] for c in tensors["correction.codes"].tolist()], dtype=torch.long)
    with torch.no_grad():
        model.correction.zero_()
        model.correction_bias.zero_()
        if len(idx):
            model.correction[idx] = tensors["correction.weight"].float()
            model.correction_bias[idx] = tensors["correction.bias"].float()
