"""Evaluation report: every set x modality x model variant, as a markdown table plus reliability plots.

The towers run once per (set, condition); each model variant then only runs its small head over the same
features, so ablations cost seconds. Evaluation files are only read here, never trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hs_model.config import cache_dir
from hs_model.predict import Classifier, Features
from hs_train.datasets import Example, convert_atlas, convert_hscodecomp, load_eval_jsonl, load_myntra, write_eval_jsonl
from hs_train.evaluate import Modality, RowResult, encode_rows, evaluate_rows, score_rows
from hs_train.features import myntra_image_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Condition:
    """One evaluation set seen through one modality / text condition."""

    name: str
    examples: list[Example]
    modality: Modality
    data_dir: Path | None = None  # set for Myntra: its photos' tower outputs come from the shared feature cache


def myntra_conditions(data_dir: Path) -> list[Condition]:
    test = [e for e in load_myntra(data_dir, "test") if e.images]
    brand = [replace(e, text=(e.text or "").split()[0] if (e.text or "").split() else "") for e in test]
    return [
        Condition("Myntra test, title + photo", test, "both", data_dir),
        Condition("Myntra test, title only", test, "text", data_dir),
        Condition("Myntra test, photo only", test, "image", data_dir),
        Condition("Myntra test, brand word + photo", brand, "both", data_dir),
        Condition("Myntra test, empty text + photo", [replace(e, text="") for e in test], "both", data_dir),
    ]


def myntra_features(classifier: Classifier, cond: Condition) -> tuple[list[int], Features]:
    """The same tower outputs `Classifier.encode` gives (one photo per product), with the photos' features read
    from the cache that training filled (every Myntra photo, computed once), so five conditions cost seconds."""
    assert cond.data_dir is not None  # called only for Myntra conditions, which have a data folder
    img, row_of = myntra_image_features(classifier.image_tower, cond.data_dir)
    idx = torch.tensor([row_of[e.id] for e in cond.examples], dtype=torch.long)
    use_text = cond.modality in ("text", "both")
    use_image = cond.modality in ("image", "both")
    texts = [(e.text or "").strip() if use_text else "" for e in cond.examples]
    n = len(texts)
    text = torch.zeros(n, classifier.text_tower.dim)
    with_text = [i for i, t in enumerate(texts) if t]
    if with_text:
        text[with_text] = classifier.text_tower.encode_text([texts[i] for i in with_text])
    has_image = img["ok"][idx] if use_image else torch.zeros(n, dtype=torch.bool)
    pooled = img["pooled"][idx] * has_image[:, None]
    probs = img["probs"][idx] * has_image[:, None]
    has_text = torch.tensor([bool(t) for t in texts])
    served = [i for i in range(n) if has_text[i] or has_image[i]]
    keep = torch.tensor(served, dtype=torch.long)
    return served, Features(text[keep], pooled[keep], probs[keep], has_text[keep], has_image[keep])


def public_conditions(data_dir: Path, work: Path) -> list[Condition]:
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for name, fn, src in (
        ("HSCodeComp", convert_hscodecomp, "hscodecomp.jsonl"),
        ("ATLAS validation", convert_atlas, "atlas_validation.jsonl"),
    ):
        path = work / src
        write_eval_jsonl(fn(data_dir / "eval" / src), path)
        out.append(Condition(f"{name}, text", load_eval_jsonl(path), "text"))
    return out


def cached_encode(classifier: Classifier, cond: Condition) -> tuple[list[int], Features | None]:
    """`encode_rows` with the towers' outputs kept on disk, so adding a model variant re-runs only the heads."""
    parts = [classifier.text_tower.name, classifier.image_tower.name, cond.name, cond.modality]
    parts += [f"{e.text}|{'|'.join(str(p) for p in e.images)}" for e in cond.examples]
    path = cache_dir() / f"report-{hashlib.sha256(chr(31).join(parts).encode()).hexdigest()[:16]}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return t["served"].tolist(), Features(t["text"], t["pooled"], t["probs"], t["has_text"], t["has_image"])
    feats: Features | None
    if cond.data_dir is not None:
        served, feats = myntra_features(classifier, cond)
    else:
        served, feats = encode_rows(classifier, cond.examples, cond.modality)
    if feats is not None:
        save_file(
            {
                "served": torch.tensor(served, dtype=torch.long),
                "text": feats.text,
                "pooled": feats.image_pooled,
                "probs": feats.image_probs,
                "has_text": feats.has_text,
                "has_image": feats.has_image,
            },
            str(path),
        )
    return served, feats


def worst_headings(rows: list[RowResult | None], golds: list[str], n: int = 8) -> list[dict]:
    """Headings with the most top-1 errors, and what they were confused with."""
    errors: dict[str, Counter] = {}
    totals: Counter = Counter()
    for g, r in zip(golds, rows, strict=True):
        if len(g) < 4:
            continue
        totals[g[:4]] += 1
        pred = r.ranked[4][0] if r is not None else "none"
        if pred != g[:4]:
            errors.setdefault(g[:4], Counter())[pred] += 1
    worst = sorted(errors, key=lambda h: -sum(errors[h].values()))[:n]
    return [
        {"heading": h, "rows": totals[h], "wrong": sum(errors[h].values()), "confused_with": errors[h].most_common(3)}
        for h in worst
    ]


def reliability_plot(rows: list[RowResult | None], golds: list[str], level: int, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.array([r.top_prob[level] if r else 0.0 for r, g in zip(rows, golds, strict=True) if len(g) >= level])
    hit = np.array(
        [bool(r and r.ranked[level][0] == g[:level]) for r, g in zip(rows, golds, strict=True) if len(g) >= level]
    )
    edges = np.linspace(0, 1, 11)
    mids, accs, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf >= lo) & (conf < hi if hi < 1 else conf <= hi)
        if m.any():
            mids.append(conf[m].mean())
            accs.append(hit[m].mean())
            counts.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(4, 4), dpi=110)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.plot(mids, accs, "o-", color="#1f77b4", label="model")
    for x, y, c in zip(mids, accs, counts, strict=True):
        ax.annotate(str(c), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel=f"confidence (HS{level} top-1)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def build_report(
    main_dir: Path | None, variants: dict[str, Path | None], data_dir: Path, out: Path, work: Path
) -> dict:
    """Evaluate `variants` (name -> model folder; None = zero-shot) on every condition; write out/results.{md,json}."""
    out.mkdir(parents=True, exist_ok=True)
    base = Classifier(main_dir)
    heads = {name: base.with_model(d) for name, d in variants.items()}
    conditions = myntra_conditions(data_dir) + public_conditions(data_dir, work)
    results: dict = {"variants": {n: h.version for n, h in heads.items()}, "conditions": {}}
    for cond in conditions:
        log.info("encoding %s (%d rows)", cond.name, len(cond.examples))
        served, feats = cached_encode(base, cond)
        golds = [e.hs for e in cond.examples]
        entry = {}
        for name, head in heads.items():
            rows = score_rows(head, cond.examples, served, feats)
            m = evaluate_rows(head, cond.examples, cond.modality, rows)
            entry[name] = m
            if name == next(iter(heads)):
                slug = "".join(ch if ch.isalnum() else "_" for ch in cond.name.lower()).strip("_")
                level = 6 if all(len(g) >= 6 for g in golds) else 4
                reliability_plot(rows, golds, level, cond.name, out / f"reliability_{slug}.png")
                m["worst_headings"] = worst_headings(rows, golds)
        results["conditions"][cond.name] = entry
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(to_markdown(results))
    return results


def _pct(m: dict, level: str, key: str) -> str:
    v = m.get("levels", {}).get(level, {}).get(key)
    return "–" if v is None else f"{100 * v:.1f}"


def to_markdown(results: dict) -> str:
    lines = [
        "| set / condition | model | rows | HS2 top-1 / top-5 | HS4 top-1 / top-5 | HS6 top-1 / top-5 "
        "| HS4 macro P / R / F1 | HS4 ECE | coverage / acc. when answered (HS4) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cond, entry in results["conditions"].items():
        for name, m in entry.items():
            l4 = m["levels"].get("4", {})
            cov = l4.get("coverage")
            acc = l4.get("accuracy_when_answered")
            lines.append(
                f"| {cond} | {name} | {m['rows']} "
                f"| {_pct(m, '2', 'top1')} / {_pct(m, '2', 'top5')} "
                f"| {_pct(m, '4', 'top1')} / {_pct(m, '4', 'top5')} "
                f"| {_pct(m, '6', 'top1')} / {_pct(m, '6', 'top5')} "
                f"| {_pct(m, '4', 'macro_precision')} / {_pct(m, '4', 'macro_recall')} / {_pct(m, '4', 'macro_f1')} "
                f"| {l4.get('ece', 0):.3f} "
                f"| {'–' if cov is None else f'{100 * cov:.0f} %'} / {'–' if acc is None else f'{100 * acc:.1f}'} |"
            )
    lines.append("")
    for cond, entry in results["conditions"].items():
        first = next(iter(entry.values()))
        if first.get("worst_headings"):
            worst = "; ".join(
                f"{w['heading']} ({w['wrong']}/{w['rows']} wrong → "
                + ", ".join(f"{c}×{k}" for c, k in w["confused_with"])
                + ")"
                for w in first["worst_headings"][:5]
            )
            lines.append(f"- **{cond}**, worst headings: {worst}")
    return "\n".join(lines) + "\n"
