"""Learning curve of fine-tuning: how test accuracy grows with the number of reviewed decisions.

Reviewed decisions are simulated in memory (no database) from labelled UK parcel descriptions the shipped
model never trained on: the parcel rows of the md5 `test` split plus HMRC's high-score weak labels, deduplicated
against each other, against the parcel train/val texts and against the public benchmark. A fixed test set is
cut from the same pool first; every fine-tune then runs through the same code as the app's
(`finetune.finetune_and_gate`), starting from the shipped model each time (not cumulatively).

Besides the curve: (i) decisions concentrated on the headings the shipped model handles worst (chosen on the
pool, never on the test set) and (ii) a poisoned set (10 % wrong labels) to see what the gate makes of it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hs_model.predict import Features
from hs_train.datasets import Example, load_uk_parcels, load_uk_weak, split_of
from hs_train.finetune import (
    BaseModel,
    FinetuneConfig,
    LabelledSet,
    accuracies,
    decide,
    finetune_and_gate,
    gate_scores,
    load_base,
    load_benchmark,
    part_of,
)
from hs_train.train import predicted_codes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveConfig:
    """What the learning curve simulates."""

    sizes: tuple[int, ...] = (0, 50, 100, 200, 500, 1000)
    test_rows: int = 400
    weak_min_score: float = 500.0
    weak_headings: int = 10  # how many of the worst headings (on the pool) the targeted case covers
    weak_min_rows: int = 4  # a heading needs this many pool rows to be judged
    poison_n: int = 1000
    poison_rate: float = 0.10
    poison_kind: str = "random"  # which variant ("random" or "systematic") is reported as "poisoned"
    seed: int = 0


def _norm(text: str | None) -> str:
    return " ".join((text or "").casefold().split())


def _order(text: str, seed: int) -> str:
    return hashlib.md5(f"{seed}:{_norm(text)}".encode()).hexdigest()


def build_pool(data_dir: Path, cfg: CurveConfig, exclude_texts: Set[str] = frozenset()) -> list[Example]:
    """Labelled parcel descriptions the shipped model did not train on, deduplicated, in a fixed random order."""
    uk = load_uk_parcels(data_dir)
    trained = {_norm(e.text) for e in uk if split_of(e.text or e.id) != "test"}
    candidates = [e for e in uk if split_of(e.text or e.id) == "test"]
    candidates += load_uk_weak(data_dir, min_score=cfg.weak_min_score)
    seen: set[str] = set()
    pool = []
    for e in candidates:
        key = _norm(e.text)
        if not key or key in trained or key in exclude_texts or key in seen:
            continue
        seen.add(key)
        pool.append(e)
    return sorted(pool, key=lambda e: _order(e.text or "", cfg.seed))


def encode_examples(classifier, examples: Sequence[Example], tag: str) -> LabelledSet:
    """Text-only features (cached on disk by tower and content)."""
    from hs_train.features import cached_text_embeddings

    texts = [" ".join((e.text or "").split()) for e in examples]
    emb = cached_text_embeddings(classifier.text_tower, texts, tag)
    n = len(texts)
    feats = Features(
        emb, torch.zeros(n, classifier.image_tower.dim), torch.zeros(n, 1000), torch.ones(n, dtype=torch.bool),
        torch.zeros(n, dtype=torch.bool),
    )  # fmt: skip
    return LabelledSet(feats, tuple(e.hs for e in examples), tuple(str(i + 1) for i in range(n)))


def as_reviewed(data: LabelledSet, golds: Sequence[str] | None = None) -> LabelledSet:
    """Rows as reviewed decisions: fresh line item ids 1..n (they decide the train / held-out split)."""
    return LabelledSet(data.features, tuple(golds or data.golds), tuple(str(i + 1) for i in range(len(data))))


def worst_headings(base: BaseModel, pool: LabelledSet, cfg: CurveConfig) -> list[str]:
    """Headings with the lowest HS4 top-1 of the shipped model on the pool (never on the test set)."""
    pred = predicted_codes(base.model, pool.features, (4,))[4]
    hits: dict[str, list[bool]] = defaultdict(list)
    for p, g in zip(pred, pool.golds, strict=True):
        hits[g[:4]].append(p == g[:4])
    judged = [(sum(h) / len(h), -len(h), head) for head, h in hits.items() if len(h) >= cfg.weak_min_rows]
    return [head for _, _, head in sorted(judged)[: cfg.weak_headings]]


def _pick(n: int, k: int, seed: int, tag: str) -> list[int]:
    return sorted(range(n), key=lambda i: hashlib.md5(f"{tag}:{seed}:{i}".encode()).hexdigest())[:k]


def poison_random(golds: Sequence[str], rate: float, seed: int) -> tuple[list[str], dict[str, Any]]:
    """Careless labels: `rate` of the rows get a code of another heading, drawn from the codes used in the set."""
    codes = sorted(set(golds))
    out = list(golds)
    picked = _pick(len(golds), round(rate * len(golds)), seed, "poison")
    for i in picked:
        others = [c for c in codes if c[:4] != golds[i][:4]]
        out[i] = others[int(hashlib.md5(f"code:{seed}:{i}".encode()).hexdigest(), 16) % len(others)]
    return out, {"kind": "random", "wrong_labels": len(picked)}


def poison_systematic(golds: Sequence[str], rate: float, seed: int) -> tuple[list[str], dict[str, Any]]:
    """A reviewer who consistently files one common heading under a neighbour: every row of the heading whose
    share is closest to `rate` gets the commonest code of another heading of its chapter (of the commonest
    other heading when its chapter has none). Chosen on the reviewed set alone, never on a test or benchmark."""
    del seed  # deterministic by construction
    counts = Counter(g[:4] for g in golds)
    head = min(counts, key=lambda h: (abs(counts[h] - rate * len(golds)), h))
    ranked = [h for h, _ in counts.most_common() if h != head]
    other = next((h for h in ranked if h[:2] == head[:2]), ranked[0])
    code = Counter(g for g in golds if g[:4] == other).most_common(1)[0][0]
    out = [code if g[:4] == head else g for g in golds]
    wrong = sum(a != b for a, b in zip(out, golds, strict=True))
    return out, {"kind": "systematic", "wrong_labels": wrong, "relabelled": {head: code}}


POISONS = {"random": poison_random, "systematic": poison_systematic}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def test_accuracy(model, test: LabelledSet) -> dict[str, float | None]:
    acc = accuracies(model, test)
    return {"accuracy": _round(acc[4][0]), "accuracy_hs6": _round(acc[6][0])}


def run_learning_curve(
    classifier,
    model_dir: Path | None,
    data_dir: Path,
    cfg: CurveConfig = CurveConfig(),
    ft: FinetuneConfig | None = None,
    plot: Path | None = None,
) -> dict[str, Any]:
    """Simulate reviewed decisions, fine-tune after each N, and report test accuracy, seconds and the gate's verdicts."""
    ft = ft or FinetuneConfig()
    classifier = classifier.with_model(model_dir)  # the model's own towers (a tuned text tower since hsdesk-v3)
    base = load_base(classifier, model_dir)
    benchmark = load_benchmark(classifier, data_dir)
    bench_texts: set[str] = set()  # never let an evaluation text into the simulated decisions
    if benchmark is not None:
        from hs_train.datasets import convert_atlas, convert_hscodecomp

        eval_dir = data_dir / "eval"
        rows = convert_hscodecomp(eval_dir / "hscodecomp.jsonl") + convert_atlas(eval_dir / "atlas_validation.jsonl")
        bench_texts = {_norm(r["text"]) for r in rows}
    examples = build_pool(data_dir, cfg, bench_texts)
    test_ex, pool_ex = examples[: cfg.test_rows], examples[cfg.test_rows :]
    test = encode_examples(classifier, test_ex, "lc-test")
    pool = encode_examples(classifier, pool_ex, "lc-pool")
    log.info("learning curve: %d test rows, %d pool rows, base %s", len(test), len(pool), base.version)

    def one(reviewed: LabelledSet, name: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = finetune_and_gate(
            base, base, reviewed, benchmark=benchmark, cfg=ft, version=f"lc-{name}", started_by="learning-curve"
        )
        seconds = time.perf_counter() - t0
        return {
            **test_accuracy(out.model, test),
            "seconds": round(seconds, 2),
            "activated": out.decision.activate,
            "reason": out.decision.reason,
            "model": out.model,
        }

    curve, clean_models = [], {}
    for n in cfg.sizes:
        n_eff = min(n, len(pool))
        if n_eff == 0:
            row = {"n": 0, **test_accuracy(base.model, test), "seconds": 0.0}
        else:
            res = one(as_reviewed(pool.subset(range(n_eff))), str(n_eff))
            clean_models[n_eff] = res.pop("model")
            row = {"n": n_eff, **res}
        log.info("learning curve: %s", row)
        curve.append(row)

    heads = worst_headings(base, pool, cfg)
    chosen = [i for i, g in enumerate(pool.golds) if g[:4] in heads]
    in_heads = [i for i, g in enumerate(test.golds) if g[:4] in heads]
    res = one(as_reviewed(pool.subset(chosen)), "weak")
    weak_model = res.pop("model")
    weak = {
        "headings": heads,
        "n": len(chosen),
        "test_rows_in_headings": len(in_heads),
        "accuracy_in_headings_before": _round(accuracies(base.model, test.subset(in_heads), (4,))[4][0])
        if in_heads
        else None,
        "accuracy_in_headings_after": _round(accuracies(weak_model, test.subset(in_heads), (4,))[4][0])
        if in_heads
        else None,
        **res,
    }

    # The poisoned decisions are the curve's first `poison_n` with some labels wrong. Gated twice: against the
    # shipped model (the first fine-tune of a desk) and against the clean fine-tune on the same decisions
    # (the desk already serves a good version; a re-training on the corrupted log must not replace it).
    n_poison = min(cfg.poison_n, len(pool))
    clean = pool.subset(range(n_poison))
    if n_poison not in clean_models:
        clean_models[n_poison] = one(as_reviewed(clean), str(n_poison))["model"]
    clean_test = test_accuracy(clean_models[n_poison], test)["accuracy"]
    variants = {}
    for kind, fn in POISONS.items():
        bad_golds, info = fn(clean.golds, cfg.poison_rate, cfg.seed)
        reviewed = as_reviewed(clean, bad_golds)
        res = one(reviewed, f"poisoned-{kind}")
        model = res.pop("model")
        held = reviewed.subset([i for i, item in enumerate(reviewed.ids) if part_of(item) == "heldout"])
        vs_clean = decide(
            gate_scores(model, held, benchmark), gate_scores(clean_models[n_poison], held, benchmark), ft.tolerance
        )
        variants[kind] = {
            "n": n_poison,
            **info,
            "accuracy": res["accuracy"],
            "accuracy_hs6": res["accuracy_hs6"],
            "seconds": res["seconds"],
            "activated": vs_clean.activate,
            "reason": vs_clean.reason,
            "active": f"the clean fine-tune on the same {n_poison} decisions (test accuracy {clean_test})",
            "against_shipped": {"activated": res["activated"], "reason": res["reason"]},
        }
    poisoned = {**variants[cfg.poison_kind], "variants": variants}

    result = {
        "base_model": base.version,
        "mode": "each N fine-tuned from the shipped model (not cumulative); N drawn as a prefix of one fixed order",
        "test_rows": len(test),
        "pool_rows": len(pool),
        "benchmark_rows": len(benchmark) if benchmark is not None else 0,
        "metric": "HS4 top-1 on the fixed test set (accuracy_hs6: HS6 top-1)",
        "learning_curve": curve,
        "weak_headings": weak,
        "poisoned": poisoned,
    }
    if plot is not None:
        plot_curve(result, plot)
        result["plot"] = str(plot)
    return result


def plot_curve(result: dict[str, Any], out: Path) -> None:
    """Accuracy against N, with the targeted and poisoned cases marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["learning_curve"]
    xs = list(range(len(curve)))
    fig, ax = plt.subplots(figsize=(7.5, 5.4), dpi=120)
    ax.plot(xs, [100 * r["accuracy"] for r in curve], "o-", label="HS4 top-1")
    ax.plot(xs, [100 * r["accuracy_hs6"] for r in curve], "s--", label="HS6 top-1", alpha=0.7)
    for x, r in zip(xs, curve, strict=True):
        ax.annotate(f"{r['seconds']:.0f}s", (x, 100 * r["accuracy"]), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=7, color="gray")  # fmt: skip
    for (kind, p), color, dx in zip(
        result["poisoned"]["variants"].items(), ("darkorange", "red"), (-0.12, 0.12), strict=False
    ):
        verdict = {True: "activated", False: "kept back"}
        label = (
            f"N={p['n']}, {p['wrong_labels']} wrong labels ({kind}): vs the clean version "
            f"{verdict[p['activated']]}, vs shipped {verdict[p['against_shipped']['activated']]}"
        )
        ax.scatter([xs[-1] + dx], [100 * p["accuracy"]], marker="x", color=color, zorder=3, label=label)
    weak = result["weak_headings"]
    if weak.get("accuracy_in_headings_after") is not None:
        ax.text(0.02, 0.97, f"{weak['n']} decisions in the {len(weak['headings'])} weakest headings (chosen on the pool):\n"
                f"those headings on the test set {100 * weak['accuracy_in_headings_before']:.0f}% -> "
                f"{100 * weak['accuracy_in_headings_after']:.0f}% ({weak['test_rows_in_headings']} rows)",
                transform=ax.transAxes, va="top", fontsize=7)  # fmt: skip
    ax.set_xticks(xs, [str(r["n"]) for r in curve])
    ax.set_xlabel("reviewed decisions used for fine-tuning (N)")
    ax.set_ylabel(f"accuracy on the fixed test set (%, {result['test_rows']} rows)")
    ax.set_title(f"Fine-tuning from {result['base_model']}: learning curve", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
