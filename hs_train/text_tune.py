"""Fine-tune the text tower (MiniLM) so that it reads customs descriptions better: LoRA, asymmetric, full softmax.

Design (measured on held-out splits, see README "Text tower fine-tune"):
- **LoRA** (rank 8 by default) on the attention (query, key, value, output) and feed-forward linear layers of
  every transformer layer, a few lines of torch (no `peft`). The adapter (about 0.3 M parameters) ships inside the
  model checkpoint (`text_lora.*` keys) and is merged into the tower's weights when the model loads
  (`hs_model.towers.merge_text_adapter`), so inference costs exactly what the base tower costs.
- **Asymmetric**: only the description side is tuned. The codes' side stays the frozen base tower's embeddings
  of the codes' texts (official subheading, heading and chapter texts plus the extra prototypes the head uses),
  so the full softmax over all 5,612 subheadings costs one matrix product per batch, every code stays reachable,
  and the bank of code texts is exactly what the model ships today (a first start pays nothing new).
- **Loss**: the zero-shot model's own score (max over a code's texts + heading + chapter terms, `HsJointModel`
  at its identity initialisation, learnable scale) under the hierarchical NLL at each label's own level (6-digit
  labels and weak 4-digit Myntra headings); the full softmax over every code gives hard negatives for free
  (siblings and the confusable headings compete in every step). A label text used as a query has its own bank
  row hidden.
- **Data** (training splits only, never `eval/`): UK parcels (train split), HMRC weak predictions at score >= 500
  (the threshold `hs_train.datasets.load_uk_weak` documents: about the top 15 %), UK brand names, CBP rulings of
  January-April 2026 (long description and one-line form), the codes' extra texts (US HTS lines, HMRC
  references / synonyms) as queries of their own code, and a subsample of Myntra training titles (heading labels).
  Held out: UK parcels validation and test splits, rulings dated May 2026, Myntra validation and test.

    python -m hs_model tune-text --data-dir ../shared/data --out runs/textune --steps 1500
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from hs_model.bank import build_official_bank, with_extra_prototypes
from hs_model.model import HeadConfig, HsJointModel, LabelSpace
from hs_model.towers import ADAPTER_PREFIX, TextTower, mean_pool
from hs_train.losses import hierarchical_nll

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
# every linear layer of a BERT block: attention projections, attention output, feed-forward in and out
DEFAULT_TARGETS = r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"


@dataclass(frozen=True)
class TuneConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: str = DEFAULT_TARGETS
    steps: int = 1500
    batch_size: int = 32
    lr: float = 5e-4
    max_length: int = 64  # training only; inference keeps the tower's 128 (long rulings are cut while training)
    myntra_max: int = 3000  # Myntra titles are many and easy: a subsample keeps them from dominating
    mix: tuple[tuple[str, float], ...] = (("descriptions", 0.5), ("label_texts", 0.3), ("myntra", 0.2))
    weak_min_score: float = 500.0
    eval_every: int = 0
    max_minutes: float = 0.0  # > 0: the learning rate decays over this wall-clock budget too; training stops at it
    micro_batches: int = 4  # a batch runs as length-sorted slices: one long ruling pads only its own slice
    seed: int = 0


# -- LoRA ---------------------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """y = W x + b + scale * B A x, with W, b frozen; B starts at zero so the tuned layer starts as the base."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale


def add_lora(model: nn.Module, targets: str, rank: int, alpha: float) -> dict[str, LoRALinear]:
    """Wrap every linear layer whose name matches `targets` (a full-match regex); everything else is frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped: dict[str, LoRALinear] = {}
    pattern = re.compile(targets)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and pattern.fullmatch(name):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            lora = LoRALinear(module, rank, alpha)
            setattr(parent, child, lora)
            wrapped[name] = lora
    if not wrapped:
        raise ValueError(f"no linear layer matches {targets!r}")
    return wrapped


def adapter_state(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """The adapter as checkpoint tensors (`hs_model.towers.merge_text_adapter` reads them)."""
    out = {}
    for name, lora in wrapped.items():
        out[f"{ADAPTER_PREFIX}{name}.A"] = lora.A.detach().clone().contiguous()
        out[f"{ADAPTER_PREFIX}{name}.B"] = lora.B.detach().clone().contiguous()
    scale = next(iter(wrapped.values())).scale
    out[ADAPTER_PREFIX + "scale"] = torch.tensor(scale)
    return out


# -- data ---------------------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """Query texts with their gold code (2, 4 or 6 digits) and the bank row to hide (-1: none)."""

    texts: list[str]
    codes: list[str]
    exclude: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def _pool(texts: Sequence[str], codes: Sequence[str], exclude: Sequence[int] | None = None) -> Pool:
    return Pool(list(texts), list(codes), list(exclude) if exclude is not None else [-1] * len(texts))


def heldout_texts(data_dir: Path) -> set[str]:
    """UK parcel descriptions of the validation and test splits (casefolded): never trained on, from any source."""
    from hs_train.datasets import load_uk_parcels, split_of

    return {(e.text or "").casefold() for e in load_uk_parcels(data_dir) if split_of(e.text or e.id) != "train"}


def training_pools(data_dir: Path, cfg: TuneConfig, extra_texts: list[str], extra_codes: list[str], n_official: int):
    """The three training pools: real descriptions, label texts, Myntra titles (training splits only)."""
    from hs_train.datasets import load_myntra, load_uk_brands, load_uk_parcels, load_uk_weak, split_of
    from hs_train.label_texts import code_texts
    from hs_train.precedents_eval import load_rulings, split_rulings
    from hs_train.train import prototype_text

    held = heldout_texts(data_dir)
    texts, codes = [], []
    for e in load_uk_parcels(data_dir):
        if split_of(e.text or e.id) == "train" and e.text:
            texts.append(e.text)
            codes.append(e.hs)
    for e in [*load_uk_weak(data_dir, cfg.weak_min_score), *load_uk_brands(data_dir)]:
        if e.text and e.text.casefold() not in held:
            texts.append(e.text)
            codes.append(e.hs)
    n_rulings = 0
    for r in split_rulings(load_rulings(data_dir))[0]:  # May 2026 is held out
        for form in ("description", "short"):
            text = " ".join(str(r.get(form) or "").split())
            if text:
                texts.append(text)
                codes.append(r["hs6"])
                n_rulings += 1
    descriptions = _pool(texts, codes)
    # the codes' extra texts as queries: those in the head's bank hide their own row
    bank_row = {(t, c): n_official + i for i, (t, c) in enumerate(zip(extra_texts, extra_codes, strict=True))}
    lt, lc, lx = [], [], []
    for code, items in code_texts(data_dir, max_per_code=24).items():
        for text in dict.fromkeys(p for p in (prototype_text(t) for t in items[1:]) if p):
            lt.append(text)
            lc.append(code)
            lx.append(bank_row.get((text, code), -1))
    labels = _pool(lt, lc, lx)
    rows = [e for e in load_myntra(data_dir, "train") if e.text]
    random.Random(cfg.seed).shuffle(rows)
    myntra = _pool([e.text or "" for e in rows[: cfg.myntra_max]], [e.hs for e in rows[: cfg.myntra_max]])
    log.info(
        "text tune pools: %d descriptions (%d from rulings), %d label texts, %d Myntra titles",
        len(descriptions),
        n_rulings,
        len(labels),
        len(myntra),
    )
    return {"descriptions": descriptions, "label_texts": labels, "myntra": myntra}


def heldout_conditions(data_dir: Path) -> dict[str, Pool]:
    """What the tuning is measured on (never trained on): UK parcels val/test, May 2026 rulings, Myntra val/test."""
    from hs_train.datasets import load_myntra, load_uk_parcels, split_of
    from hs_train.precedents_eval import load_rulings, split_rulings

    uk = load_uk_parcels(data_dir)
    may = split_rulings(load_rulings(data_dir))[1]
    out = {}
    for split in ("val", "test"):
        rows = [e for e in uk if split_of(e.text or e.id) == split and e.text]
        out[f"UK parcels, {split}"] = _pool([e.text or "" for e in rows], [e.hs for e in rows])
    out["May 2026 rulings, full description"] = _pool(
        [" ".join(r["description"].split()) for r in may], [r["hs6"] for r in may]
    )
    out["May 2026 rulings, short"] = _pool([r["short"] for r in may], [r["hs6"] for r in may])
    for split in ("val", "test"):
        rows = [e for e in load_myntra(data_dir, split) if e.text]  # type: ignore[arg-type]
        out[f"Myntra {split}, title only"] = _pool([e.text or "" for e in rows], [e.hs for e in rows])
    return out


# -- training -------------------------------------------------------------------------------------------------------
class Tuner:
    """The tower with its LoRA layers, the frozen scorer over the base bank, and the pools."""

    def __init__(self, data_dir: Path, cfg: TuneConfig = TuneConfig()) -> None:
        from hs_core.nomenclature import EDITION, get_nomenclature
        from hs_train.train import TrainConfig, Trainer

        torch.manual_seed(cfg.seed)
        self.cfg, self.data_dir = cfg, data_dir
        self.tower = TextTower()  # base: the bank's side, and the copy that gets tuned
        self.base_name = self.tower.name
        self.space = LabelSpace.from_codes([c.digits for c in get_nomenclature().subheadings])
        self.pos = {lv: {c: i for i, c in enumerate(self.space.codes(lv))} for lv in (2, 4, 6)}
        official = build_official_bank(self.tower, self.space, EDITION)
        # the head's extra prototypes, exactly as `hs_model train` builds them (same texts, same cache)
        helper = Trainer.__new__(Trainer)
        helper.cfg, helper.data_dir, helper.bank_tower, helper.pos = TrainConfig(), data_dir, self.tower, self.pos
        extra_emb, extra_code, extra_texts = helper._extra_bank()
        self.bank = with_extra_prototypes(official, extra_emb, extra_code)
        self.scorer = HsJointModel(self.space, self.bank, HeadConfig(self.tower.dim)).eval()
        for p in self.scorer.parameters():
            p.requires_grad_(False)
        self.scorer.logit_scale.requires_grad_(True)
        self.extra_texts = extra_texts
        self.extra_codes = [self.space.subheadings[i] for i in extra_code.tolist()]
        self.n_official = len(official.text_code)
        self.wrapped: dict[str, LoRALinear] = {}

    # encoding ----------------------------------------------------------------------------------------------
    def _encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        batch = self.tower.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out = self.tower.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return F.normalize(mean_pool(out.last_hidden_state, batch["attention_mask"]).float(), dim=-1)

    def _encode_grouped(self, texts: list[str], max_length: int, groups: int) -> torch.Tensor:
        """As `_encode`, in `groups` slices of similar length (padding costs 4x on mixed batches otherwise)."""
        lengths = [len(ids) for ids in self.tower.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        size = math.ceil(len(texts) / max(groups, 1))
        parts, rows = [], []
        for s in range(0, len(order), size):
            idx = order[s : s + size]
            parts.append(self._encode([texts[i] for i in idx], max_length))
            rows += idx
        out = torch.cat(parts)
        inverse = torch.empty(len(rows), dtype=torch.long)
        inverse[torch.tensor(rows)] = torch.arange(len(rows))
        return out[inverse]

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """Texts -> unit vectors with the tower as it is now (max_length 128, as at inference)."""
        self.tower.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.tower.dim)
        for s in range(0, len(texts), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = self._encode([texts[i] for i in idx], self.tower.max_length)
        return out

    def _targets(self, codes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.tensor([self.pos[len(c)][c] for c in codes], dtype=torch.long)
        return target, torch.tensor([len(c) for c in codes], dtype=torch.long)

    def _valid(self, pool: Pool) -> Pool:
        keep = [i for i, c in enumerate(pool.codes) if len(c) in (2, 4, 6) and c in self.pos[len(c)]]
        return Pool([pool.texts[i] for i in keep], [pool.codes[i] for i in keep], [pool.exclude[i] for i in keep])

    # measuring ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, pools: dict[str, Pool]) -> dict[str, dict[str, float]]:
        """Top-1 (%) at 2, 4 and 6 digits of the zero-shot scorer with the tower as it is now, per condition."""
        out = {}
        for name, pool in pools.items():
            pool = self._valid(pool)
            if not len(pool):
                continue
            logits = self.scorer.score(self.encode(pool.texts))
            res: dict[str, float] = {"rows": float(len(pool))}
            for lv in (2, 4, 6):
                golds = [c[:lv] if len(c) >= lv else None for c in pool.codes]
                rows = [i for i, g in enumerate(golds) if g is not None]
                if not rows:
                    continue
                pred = self.scorer.level_log_probs(logits[rows], lv, temperature=False).argmax(-1).tolist()
                codes = self.space.codes(lv)
                res[f"hs{lv}"] = 100.0 * sum(codes[p] == golds[i] for p, i in zip(pred, rows, strict=True)) / len(rows)
            out[name] = res
        return out

    # training ----------------------------------------------------------------------------------------------
    def train(self, pools: dict[str, Pool], heldout: dict[str, Pool] | None = None) -> list[dict]:
        cfg = self.cfg
        self.wrapped = add_lora(self.tower.model, cfg.targets, cfg.rank, cfg.alpha)
        params = [p for lora in self.wrapped.values() for p in (lora.A, lora.B)]
        opt = torch.optim.AdamW(
            [{"params": params, "weight_decay": 0.0}, {"params": [self.scorer.logit_scale], "lr": 1e-2}], lr=cfg.lr
        )
        t0, running = time.perf_counter(), 0.0

        def progress(step: int) -> float:
            """Share of the budget used: steps, or wall-clock minutes when that comes first."""
            by_time = (time.perf_counter() - t0) / (60 * cfg.max_minutes) if cfg.max_minutes > 0 else 0.0
            return max(step / max(cfg.steps, 1), by_time)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - progress(s)))
        pools = {k: self._valid(v) for k, v in pools.items() if len(v)}
        names = [n for n, _ in cfg.mix if n in pools]
        weights = [w for n, w in cfg.mix if n in pools]
        rng = random.Random(cfg.seed)
        history: list[dict] = []
        for step in range(cfg.steps):
            if progress(step) >= 1.0:
                log.info("time budget of %.0f min reached after %d steps", cfg.max_minutes, step)
                break
            self.tower.model.train()
            counts = {n: 0 for n in names}
            for n in rng.choices(names, weights, k=cfg.batch_size):
                counts[n] += 1
            texts, codes, exclude = [], [], []
            for n, k in counts.items():
                for i in rng.sample(range(len(pools[n])), min(k, len(pools[n]))):
                    texts.append(pools[n].texts[i])
                    codes.append(pools[n].codes[i])
                    exclude.append(pools[n].exclude[i])
            target, level = self._targets(codes)
            q = self._encode_grouped(texts, cfg.max_length, cfg.micro_batches)
            logits = self.scorer.score(q, torch.tensor(exclude, dtype=torch.long))
            loss = hierarchical_nll(
                lambda z, lv: self.scorer.level_log_probs(z, lv, temperature=False), logits, target, level
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach())
            if (step + 1) % 50 == 0:
                log.info(
                    "step %d loss %.3f scale %.1f (%.2f s/step)",
                    step + 1,
                    running / 50,
                    float(self.scorer.logit_scale.detach().exp()),
                    (time.perf_counter() - t0) / (step + 1),
                )
                history.append(
                    {
                        "step": step + 1,
                        "loss": running / 50,
                        "seconds": time.perf_counter() - t0,
                        "lr": sched.get_last_lr()[0],
                    }
                )
                running = 0.0
            if heldout and cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                history.append({"step": step + 1, "heldout": self.evaluate(heldout)})
                log.info("step %d held-out %s", step + 1, history[-1]["heldout"])
        self.tower.model.eval()
        return history

    def adapter(self) -> dict[str, torch.Tensor]:
        return adapter_state(self.wrapped)


def tune(data_dir: Path, out: Path, cfg: TuneConfig = TuneConfig()) -> dict:
    """Train the adapter, measure base vs tuned on the held-out conditions, write adapter + report to `out`."""
    t0 = time.perf_counter()
    tuner = Tuner(data_dir, cfg)
    pools = training_pools(data_dir, cfg, tuner.extra_texts, tuner.extra_codes, tuner.n_official)
    heldout = heldout_conditions(data_dir)
    base = tuner.evaluate(heldout)
    log.info("base tower, held-out: %s", base)
    t_train = time.perf_counter()
    history = tuner.train(pools, heldout)
    train_s = time.perf_counter() - t_train
    tuned = tuner.evaluate(heldout)
    log.info("tuned tower, held-out: %s", tuned)
    out.mkdir(parents=True, exist_ok=True)
    tensors = tuner.adapter()
    save_file(tensors, str(out / ADAPTER_FILE))
    from hs_model.towers import adapter_identity

    report = {
        "config": asdict(cfg),
        "base_tower": tuner.base_name,
        "tuned_tower": adapter_identity(tuner.base_name, tensors),
        "adapter_parameters": int(sum(v.numel() for k, v in tensors.items() if not k.endswith("scale"))),
        "pools": {k: len(v) for k, v in pools.items()},
        "train_seconds": train_s,
        "total_seconds": time.perf_counter() - t0,
        "heldout": {"base": base, "tuned": tuned},
        "history": history,
    }
    (out / "tune.json").write_text(json.dumps(report, indent=2))
    return report
