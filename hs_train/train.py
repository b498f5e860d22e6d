"""Train the joint model's small parts on cached frozen-tower features (minutes on a 2-core CPU).

Data (all from ../shared/data, never from eval/): Myntra photo-title pairs with weak heading labels,
UK parcel descriptions with officer-assigned codes, and the codes' own texts as extra text examples.
Each Myntra product is seen as several views (title + photo, title only, photo only, brand + photo) so
the fused model keeps working when a modality is missing or the text is poor (modality dropout).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from hs_model.bank import DEFAULT_BRIDGE_PROMPT, build_official_bank, with_extra_prototypes
from hs_model.checkpoint import ModelCard, save_checkpoint
from hs_model.model import HeadConfig, HsJointModel, LabelSpace
from hs_model.predict import Features, trained_parts
from hs_model.towers import ImageTower, TextTower, adapter_tensors, merge_text_adapter
from hs_train.calibration import choose_threshold, dataset_weights
from hs_train.datasets import Split, split_of
from hs_train.features import cached_text_embeddings, myntra_image_features
from hs_train.losses import ClipLoss, hierarchical_nll, within_heading_kl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; chosen on the validation splits only."""

    epochs: int = 6
    batch_size: int = 1024
    lr: float = 3e-3
    correction_l2: float = 1e-3
    clip_weight: float = 0.5
    use_contrastive: bool = True
    use_images: bool = True
    bank_texts_per_code: int = 6
    train_examples_per_epoch: int = 16_000  # a fresh random subset of the training views each epoch
    label_examples_per_epoch: int = 8_000
    review_target_accuracy: float = 0.9
    within_heading_kl: float = 1.0  # weight of `losses.within_heading_kl` on rows labelled with a heading only
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class FeatureSet(Features):
    """A pool of training views: `Features` (the towers' outputs, the model's inputs: the one container of them)
    with each row's label, so anything that takes Features (the model, `level_top1`) takes a pool as it is."""

    target: torch.Tensor  # [N] index of the gold code within its level
    level: torch.Tensor  # [N] 2 | 4 | 6
    exclude: torch.Tensor  # [N] bank row to hide (label-text examples), else -1
    pair: torch.Tensor  # [N] bool: a real photo-title pair (contrastive loss)
    source: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.target)

    def golds(self, space: LabelSpace) -> list[str]:
        """Each row's gold code (at its own label level) as digits."""
        return [space.codes(lv)[t] for t, lv in zip(self.target.tolist(), self.level.tolist(), strict=True)]

    def subset(self, idx: torch.Tensor) -> FeatureSet:
        src = [self.source[i] for i in idx.tolist()] if self.source else []
        tensors: dict[str, Any] = {f: getattr(self, f)[idx] for f in _TENSORS}
        return FeatureSet(**tensors, source=src)

    @staticmethod
    def concat(parts: Sequence[Features]) -> FeatureSet:
        sets = [p for p in parts if isinstance(p, FeatureSet) and len(p)]
        tensors: dict[str, Any] = {f: torch.cat([getattr(p, f) for p in sets]) for f in _TENSORS}
        return FeatureSet(**tensors, source=sum((p.source for p in sets), []))


_TENSORS = (
    "text", "image_pooled", "image_probs", "has_text", "has_image", "target", "level", "exclude", "pair"
)  # fmt: skip


# -- training on feature pools (no towers needed: tests use tiny models) ---------------------------------------
def fit(
    model: HsJointModel,
    train: FeatureSet,
    val: FeatureSet,
    cfg: TrainConfig,
    label_pool: FeatureSet | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train the model's small parts; keeps the epoch with the best validation top-1. Returns the history."""
    torch.manual_seed(cfg.seed)
    clip = ClipLoss()
    offsets = [model.correction, model.correction_bias, model.heading_correction, model.heading_correction_bias]
    params = [p for p in model.parameters() if all(p is not o for o in offsets)]
    opt = torch.optim.AdamW(
        [
            {"params": params + list(clip.parameters()), "weight_decay": 1e-4},
            {"params": offsets, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    # Offsets only at the level the data speaks to: a subheading's own offset only when rows are labelled with
    # it (6 digits); rows labelled with a heading only move that heading's shared offset. Every other code keeps
    # exactly its prototypes. (The adapter and the photo path can still reorder a heading's subheadings; the
    # within-heading KL below holds that for rows labelled with a heading only.)
    seen_sub, seen_head = codes_with_data(model, train)
    hooks = [
        model.correction.register_hook(lambda g: g * seen_sub[:, None]),
        model.correction_bias.register_hook(lambda g: g * seen_sub),
        model.heading_correction.register_hook(lambda g: g * seen_head[:, None]),
        model.heading_correction_bias.register_hook(lambda g: g * seen_head),
    ]
    # The model as it starts: the teacher of the split inside a heading for rows labelled with a heading only.
    teacher = copy.deepcopy(model).eval() if cfg.within_heading_kl > 0 else None
    history, best, best_state = [], (-1.0, 0.0), None
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        pool = train.subset(torch.randperm(len(train))[: cfg.train_examples_per_epoch])
        if label_pool is not None and len(label_pool):
            take = torch.randperm(len(label_pool))[: cfg.label_examples_per_epoch]
            pool = FeatureSet.concat([pool, label_pool.subset(take)])
        order = torch.randperm(len(pool))
        steps = math.ceil(len(pool) / cfg.batch_size)
        total = 0.0
        for s in range(steps):
            b = pool.subset(order[s * cfg.batch_size : (s + 1) * cfg.batch_size])
            out = model(b.text, b.image_pooled, b.image_probs, b.has_text, b.has_image, b.exclude)
            loss = hierarchical_nll(
                lambda z, lv: model.level_log_probs(z, lv, temperature=False), out.logits, b.target, b.level
            )
            weak = b.level == 4
            if teacher is not None and bool(weak.any()):
                with torch.no_grad():
                    inputs = (b.text, b.image_pooled, b.image_probs, b.has_text, b.has_image, b.exclude)
                    t_logits = teacher(*(x[weak] for x in inputs)).logits
                loss = loss + cfg.within_heading_kl * within_heading_kl(
                    out.logits[weak], t_logits, b.target[weak], model.sub_to_head
                )
            if cfg.use_contrastive and int(b.pair.sum()) > 1:
                loss = loss + cfg.clip_weight * clip(out.text_joint[b.pair], out.image_joint[b.pair])
            l2 = model.correction.pow(2).sum(1).mean() + model.heading_correction.pow(2).sum(1).mean()
            loss = loss + cfg.correction_l2 * l2 * 100
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        acc, nll = accuracy(model, val), validation_nll(model, val)
        row = {
            "epoch": epoch + 1, "loss": total / steps, "val_top1": acc, "val_nll": nll,
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        history.append(row)
        log.info("epoch %(epoch)d loss %(loss).3f val top-1 %(val_top1).3f (%(seconds).0f s)", row)
        if on_epoch:
            on_epoch(row)
        if (acc, -nll) > best:  # equal top-1 (common on a small fine-tune set): the lower validation loss wins
            best, best_state = (acc, -nll), {k: v.detach().clone() for k, v in model.state_dict().items()}
    for hook in hooks:
        hook.remove()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def codes_with_data(model: HsJointModel, fs: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Float masks of the offsets the rows can train: ([S] subheadings labelled to 6 digits, [H] headings
    labelled to 4 digits). Rows labelled only to a chapter train neither."""
    seen_sub = torch.zeros(len(model.space.subheadings))
    seen_sub[fs.target[fs.level == 6].unique()] = 1.0
    seen_head = torch.zeros(len(model.space.headings))
    seen_head[fs.target[fs.level == 4].unique()] = 1.0
    return seen_sub, seen_head


@torch.no_grad()
def batch_logits(model: HsJointModel, fs: FeatureSet, chunk: int = 1024) -> torch.Tensor:
    """Uncalibrated subheading logits for a feature pool. [N, S]."""
    model.eval()
    out = []
    for i in range(0, len(fs), chunk):
        part = fs.subset(torch.arange(i, min(i + chunk, len(fs))))
        out.append(model(part.text, part.image_pooled, part.image_probs, part.has_text, part.has_image).logits)
    return torch.cat(out) if out else torch.zeros(0, len(model.space.subheadings))


@torch.no_grad()
def predicted_codes(
    model: HsJointModel, feats: Features, levels: Sequence[int] = (4, 6), chunk: int = 512
) -> dict[int, list[str]]:
    """Top-1 code at each level for every row, from one forward pass per chunk."""
    model.eval()
    device = next(model.parameters()).device
    out: dict[int, list[str]] = {lv: [] for lv in levels}
    columns = (feats.text, feats.image_pooled, feats.image_probs, feats.has_text, feats.has_image)
    for i in range(0, len(feats.has_text), chunk):
        text, pooled, probs, has_text, has_image = (t[i : i + chunk] for t in columns)
        logits = model(*Features(text, pooled, probs, has_text, has_image).as_inputs(device)).logits
        for lv in levels:
            codes = model.space.codes(lv)
            out[lv] += [codes[j] for j in model.level_log_probs(logits, lv).argmax(-1).tolist()]
    return out


def level_top1(
    model: HsJointModel,
    inputs: Features,
    golds: Sequence[str],
    levels: Sequence[int] = (2, 4, 6),
    exact: bool = False,
) -> dict[int, tuple[float | None, int]]:
    """The one accuracy function of training, fine-tuning, their gates and the learning curve.

    Top-1 at each level over the rows whose gold code has at least that many digits (exactly that many when
    `exact`): ``{level: (accuracy, rows)}``, ``(None, 0)`` where no row qualifies. A gold code the label space
    does not hold counts as wrong. (`hs_train.evaluate` scores served predictions, not a model: top-k, macro
    P/R/F1, calibration.)
    """
    pred = predicted_codes(model, inputs, levels) if len(golds) else {lv: [] for lv in levels}
    out: dict[int, tuple[float | None, int]] = {}
    for lv in levels:
        rows = [i for i, g in enumerate(golds) if (len(g) == lv if exact else len(g) >= lv)]
        hits = sum(pred[lv][i] == golds[i][:lv] for i in rows)
        out[lv] = (hits / len(rows), len(rows)) if rows else (None, 0)
    return out


@torch.no_grad()
def validation_nll(model: HsJointModel, fs: FeatureSet) -> float:
    """Mean hierarchical NLL of the gold codes (uncalibrated): what breaks a tie between epochs of equal top-1."""
    if not len(fs):
        return 0.0
    logits = batch_logits(model, fs)
    return float(hierarchical_nll(lambda z, lv: model.level_log_probs(z, lv, temperature=False), logits,
                                  fs.target, fs.level))  # fmt: skip


def accuracy(model: HsJointModel, fs: FeatureSet) -> float:
    """Top-1 at each row's own label level, the mean over rows (what `fit` picks its best epoch by)."""
    per_level = level_top1(model, fs, fs.golds(model.space), exact=True)
    rows = sum(n for _, n in per_level.values())
    return sum(acc * n for acc, n in per_level.values() if acc is not None) / rows if rows else 0.0


@torch.no_grad()
def calibrate(model: HsJointModel, val: FeatureSet, target_accuracy: float) -> dict:
    """Temperature on validation NLL; then the review threshold on heading confidence for a target accuracy."""
    logits = batch_logits(model, val)
    grid = np.exp(np.linspace(np.log(0.1), np.log(10.0), 93))
    nll = []
    for t in grid:
        model.temperature.fill_(float(t))
        nll.append(float(hierarchical_nll(model.level_log_probs, logits, val.target, val.level)))
    model.temperature.fill_(float(grid[int(np.argmin(nll))]))
    rows = val.level >= 4
    logp4 = model.level_log_probs(logits[rows], 4)
    gold4 = [
        model.space.codes(lv)[t][:4] for t, lv in zip(val.target[rows].tolist(), val.level[rows].tolist(), strict=True)
    ]
    pred4 = [model.space.headings[i] for i in logp4.argmax(-1).tolist()]
    conf = logp4.exp().max(-1).values.numpy()
    correct = np.array([g == p for g, p in zip(gold4, pred4, strict=True)], dtype=float)
    # Each validation dataset weighs the same: the apparel views outnumber the general-goods parcels 15 to 1, and
    # by rows alone the threshold was 0.05, flagging nothing outside apparel (answered at 33-44 % there).
    sources = [src for src, keep in zip(val.source, rows.tolist(), strict=True) if keep] if val.source else []
    weights = dataset_weights(sources) if sources else None
    threshold = choose_threshold(conf, correct, target_accuracy, weights) if len(conf) else 1.0
    model.review_threshold.fill_(threshold)
    return {"temperature": float(model.temperature), "review_threshold": threshold, "val_nll": min(nll)}


_FRAGMENT_START = {"of", "in", "with", "for", "other", "having", "valued", "containing", "weighing", "not", "over"}


def prototype_text(text: str) -> str | None:
    """A tariff line or common name made fit to be a prototype, or None when it says nothing on its own.

    US tariff paths are cut to their last two segments ("...: Other: Toy jewelry valued not over 8 cents"
    keeps the specific end, which truncation at the tower's token limit would otherwise lose), "Other"
    segments are dropped, and fragments such as "Of cotton" (meaningless without their parent) are skipped.
    """
    segments = [s.strip() for s in text.split(": ") if s.strip().lower().rstrip(":") not in {"other", "others", ""}]
    if not segments:
        return None
    short = ": ".join(segments[-2:])
    words = short.split()
    if words[0].lower() in _FRAGMENT_START and len(words) < 4:
        return None
    return short


class Trainer:
    """Builds the feature pools once, then trains, calibrates and saves."""

    def __init__(self, data_dir: Path, cfg: TrainConfig = TrainConfig(), text_adapter: Path | None = None) -> None:
        from hs_core.nomenclature import EDITION, get_nomenclature

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.cfg, self.data_dir, self.edition = cfg, data_dir, EDITION
        # The bank (the codes' texts) is always embedded by the base tower; descriptions are read by the tuned tower
        # when a text adapter is given (`hs_train.text_tune`: asymmetric tuning), else by the same base tower.
        self.bank_tower, self.image_tower = TextTower(), ImageTower()
        self.adapter: dict[str, torch.Tensor] = adapter_tensors(load_file(str(text_adapter))) if text_adapter else {}
        self.text_tower = merge_text_adapter(self.bank_tower, self.adapter)
        self.space = LabelSpace.from_codes([c.digits for c in get_nomenclature().subheadings])
        self.pos = {lv: {c: i for i, c in enumerate(self.space.codes(lv))} for lv in (2, 4, 6)}
        self.official = build_official_bank(self.bank_tower, self.space, EDITION)
        self.extra_emb, self.extra_code, self.extra_texts = self._extra_bank()
        self.bank = with_extra_prototypes(self.official, self.extra_emb, self.extra_code)

    # -- label bank -------------------------------------------------------------------------------------------
    def _extra_bank(self) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Tariff lines and common names (beyond the official text) as further prototypes, capped per code."""
        from hs_train.label_texts import code_texts

        texts, codes = [], []
        for code, items in code_texts(self.data_dir, max_per_code=3 * self.cfg.bank_texts_per_code).items():
            if code not in self.pos[6]:
                continue
            kept = [p for p in (prototype_text(t) for t in items[1:]) if p]  # items[0] is the official text
            for t in list(dict.fromkeys(kept))[: self.cfg.bank_texts_per_code]:
                texts.append(t)
                codes.append(self.pos[6][code])
        emb = cached_text_embeddings(self.bank_tower, texts, "bank")
        return emb, torch.tensor(codes, dtype=torch.long), texts

    # -- feature pools -------------------------------------------------------------------------------------------
    def _text_pool(
        self, texts: list[str], codes: list[str], source: str, exclude: list[int] | None = None
    ) -> FeatureSet:
        keep = [i for i, c in enumerate(codes) if len(c) in (2, 4, 6) and c in self.pos[len(c)]]
        texts, codes = [texts[i] for i in keep], [codes[i] for i in keep]
        n = len(texts)
        emb = cached_text_embeddings(self.text_tower, texts, source)
        return FeatureSet(
            text=emb,
            image_pooled=torch.zeros(n, self.image_tower.dim),
            image_probs=torch.zeros(n, 1000),
            has_text=torch.ones(n, dtype=torch.bool),
            has_image=torch.zeros(n, dtype=torch.bool),
            target=torch.tensor([self.pos[len(c)][c] for c in codes], dtype=torch.long),
            level=torch.tensor([len(c) for c in codes], dtype=torch.long),
            exclude=torch.tensor([exclude[i] for i in keep] if exclude else [-1] * n, dtype=torch.long),
            pair=torch.zeros(n, dtype=torch.bool),
            source=[source] * n,
        )

    def myntra_views(self, split: Split) -> dict[str, FeatureSet]:
        """Myntra products of one split as views: full (title + photo), text, image, brand (first word + photo)."""
        from hs_train.datasets import load_myntra

        img, row_of = myntra_image_features(self.image_tower, self.data_dir)
        rows = [e for e in load_myntra(self.data_dir, split) if e.images and e.id in row_of]
        rows = [e for e in rows if bool(img["ok"][row_of[e.id]])]
        idx = torch.tensor([row_of[e.id] for e in rows], dtype=torch.long)
        pooled, probs = img["pooled"][idx], img["probs"][idx]
        titles = [e.text or "" for e in rows]
        brands = [t.split()[0] if t.split() else "" for t in titles]
        full_t = cached_text_embeddings(self.text_tower, titles, f"myntra-{split}-title")
        brand_t = cached_text_embeddings(self.text_tower, brands, f"myntra-{split}-brand")
        n = len(rows)
        target = torch.tensor([self.pos[len(e.hs)][e.hs] for e in rows], dtype=torch.long)
        level = torch.tensor([len(e.hs) for e in rows], dtype=torch.long)
        yes, no = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        zeros_img, zeros_p = torch.zeros_like(pooled), torch.zeros_like(probs)

        def view(text, p, q, has_t, has_i, pair, name) -> FeatureSet:
            return FeatureSet(
                text, p, q, has_t, has_i, target=target, level=level, exclude=torch.full((n,), -1), pair=pair,
                source=[name] * n,
            )  # fmt: skip

        return {
            "full": view(full_t, pooled, probs, yes, yes, yes, "myntra-full"),
            "text": view(full_t, zeros_img, zeros_p, yes, no, no, "myntra-text"),
            "image": view(torch.zeros_like(full_t), pooled, probs, no, yes, no, "myntra-image"),
            "brand": view(brand_t, pooled, probs, yes, yes, no, "myntra-brand"),
        }

    def uk_parcels(self, split: str) -> FeatureSet:
        from hs_train.datasets import load_uk_parcels

        rows = [e for e in load_uk_parcels(self.data_dir) if split_of(e.text or e.id) == split]
        return self._text_pool([e.text or "" for e in rows], [e.hs for e in rows], f"uk-{split}")

    def label_text_pool(self) -> FeatureSet:
        """Every bank text as an example of its own code, with itself hidden from the bank while scoring it."""
        n_off = len(self.official.text_code)
        codes = [self.space.subheadings[i] for i in self.extra_code.tolist()]
        pool = self._text_pool(self.extra_texts, codes, "bank", exclude=list(range(n_off, n_off + len(codes))))
        return pool

    def new_model(self) -> HsJointModel:
        return HsJointModel(self.space, self.bank, HeadConfig(self.text_tower.dim, self.image_tower.dim))

    def save(self, model: HsJointModel, out: Path, card_extra: dict) -> ModelCard:
        tensors = trained_parts(model) | self.adapter
        tensors["bank.emb"] = self.extra_emb.half()
        tensors["bank.code"] = torch.tensor(
            [int(self.space.subheadings[i]) for i in self.extra_code.tolist()], dtype=torch.int32
        )
        card = ModelCard(
            version=card_extra.pop("version"),
            nomenclature_edition=self.edition,
            text_tower=self.text_tower.name,
            image_tower=self.image_tower.name,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            kind="trained",
            parent=card_extra.pop("parent", None),
            review_threshold=float(model.review_threshold),
            training={
                "config": asdict(self.cfg),
                "bridge_prompt": DEFAULT_BRIDGE_PROMPT,
                "text_adapter": (
                    {"base_tower": self.bank_tower.name, "parameters": sum(v.numel() for v in self.adapter.values())}
                    if self.adapter
                    else None
                ),
                **card_extra.pop("training", {}),
            },
            metrics=card_extra.pop("metrics", {}),
        )
        return save_checkpoint(out, tensors, card)


DATA_FILES = (
    "products/styles.csv",
    "products/articletype_to_hs4.csv",
    "train/uk_parcel_descriptions.csv",
    "nomenclature_texts/uk_search_references.json",
)


def data_fingerprint(data_dir: Path, train: FeatureSet, val: FeatureSet) -> dict:
    """SHA-256 of the input files and of the split membership, so a card says exactly what the model saw."""
    import hashlib

    def file_hash(rel: str) -> str | None:
        path = data_dir / rel
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None

    def split_hash(fs: FeatureSet) -> str:
        h = hashlib.sha256(fs.target.numpy().tobytes() + fs.level.numpy().tobytes())
        h.update("\n".join(fs.source).encode())
        return h.hexdigest()

    return {"files": {rel: file_hash(rel) for rel in DATA_FILES}, "train": split_hash(train), "val": split_hash(val)}


def train_default(
    data_dir: Path,
    out: Path,
    cfg: TrainConfig = TrainConfig(),
    version: str | None = None,
    text_adapter: Path | None = None,
    parent: str | None = None,
) -> ModelCard:
    """The full recipe behind the shipped model: build pools, fit, calibrate, save (on a tuned text tower when
    `text_adapter` names an adapter file from `hs_train.text_tune`)."""
    t0 = time.perf_counter()
    tr = Trainer(data_dir, cfg, text_adapter)
    m_train, m_val = tr.myntra_views("train"), tr.myntra_views("val")
    views = ["full", "text", "image", "brand"] if cfg.use_images else ["text"]
    train = FeatureSet.concat([m_train[v] for v in views] + [tr.uk_parcels("train")])
    val_parts = {f"myntra-{v}": m_val[v] for v in views} | {"uk-val": tr.uk_parcels("val")}
    val = FeatureSet.concat(list(val_parts.values()))
    model = tr.new_model()
    history = fit(model, train, val, cfg, tr.label_text_pool())
    calib = calibrate(model, val, cfg.review_target_accuracy)
    val_metrics = {name: accuracy(model, fs) for name, fs in val_parts.items()}
    card = tr.save(
        model,
        out,
        {
            "version": version or f"hsdesk-{datetime.now(UTC):%Y%m%d-%H%M}",
            "parent": parent,
            "training": {
                "rows": {"train_views": len(train), "val_views": len(val), "bank_extra_texts": len(tr.extra_texts)},
                "history": history,
                "calibration": calib,
                "seconds": time.perf_counter() - t0,
                "split": "md5(id) % 5 == 0 -> test, % 10 == 1 -> val, else train (Myntra by product id, UK by text)",
                "data_sha256": data_fingerprint(data_dir, train, val),
            },
            "metrics": {"validation_top1": val_metrics},
        },
    )
    log.info("saved %s to %s in %.0f s", card.version, out, time.perf_counter() - t0)
    return card
