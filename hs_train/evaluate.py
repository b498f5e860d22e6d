"""Accuracy, macro precision/recall/F1, calibration and abstention at 2, 4 and 6 digits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from hs_model.errors import InputError
from hs_model.images import ImageError, load_image
from hs_model.predict import LEVELS, Classifier, Features, Prediction, Query
from hs_model.questions import POOL, guide
from hs_train.datasets import Example

log = logging.getLogger(__name__)

Modality = Literal["text", "image", "both"]


@dataclass(frozen=True)
class RowResult:
    """One evaluated row: gold label and the ranked codes at each level (top 5) with the top-1 probability."""

    gold: str
    ranked: dict[int, list[str]]
    top_prob: dict[int, float]
    needs_review: bool


def to_query(example: Example, modality: Modality) -> Query | None:
    """The example seen through one modality; None when that modality is absent (or a photo is unreadable)."""
    text = example.text if modality in ("text", "both") else None
    images: tuple[Image.Image, ...] = ()
    if modality in ("image", "both") and example.images:
        try:
            images = tuple(load_image(p, p.name) for p in example.images)
        except ImageError as exc:
            log.warning("row %s: %s", example.id, exc)
            images = ()
    if not (text and text.strip()) and not images:
        return None
    return Query(text, images)


def encode_rows(
    classifier: Classifier, examples: Sequence[Example], modality: Modality, batch_size: int = 32
) -> tuple[list[int], Features | None]:
    """Run the towers over every row the modality can serve: (row indices, their features)."""
    served: list[int]
    served, parts = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        queries = [(start + i, to_query(e, modality)) for i, e in enumerate(chunk)]
        present = [(i, q) for i, q in queries if q is not None]
        if present:
            served.extend(i for i, _ in present)
            parts.append(classifier.encode([q for _, q in present]))
    return served, (Features.concat(parts) if parts else None)


def score_rows(
    classifier: Classifier, examples: Sequence[Example], served: list[int], feats: Features | None
) -> list[RowResult | None]:
    """Rank codes from cached features; None marks a row the modality cannot serve (counted wrong, never dropped).

    The ranking is the one the app and the CLI serve: the model's pool (precedents vote included) re-ranked by
    the evidence read from the description and the tempered within-heading splits (`hs_model.questions.guide`),
    with no broker answers.
    """
    results: list[RowResult | None] = [None] * len(examples)
    if feats is None:
        return results
    preds = classifier.predict_features(feats, top_k=POOL)
    has_text = feats.has_text.tolist()
    for i, p, text in zip(served, preds, has_text, strict=True):
        results[i] = _row(examples[i].hs, guide(p, examples[i].text if text else None, top_k=5))
    return results


def run_rows(classifier: Classifier, examples: Sequence[Example], modality: Modality) -> list[RowResult | None]:
    """Predict every row (towers, then the joint model)."""
    return score_rows(classifier, examples, *encode_rows(classifier, examples, modality))


def _row(gold: str, p: Prediction) -> RowResult:
    return RowResult(
        gold=gold,
        ranked={lv: [c.code for c in p.levels[lv]] for lv in LEVELS},
        top_prob={lv: p.levels[lv][0].score for lv in LEVELS},
        needs_review=p.needs_review,
    )


def metrics(rows: Sequence[RowResult | None], golds: Sequence[str], level: int) -> dict:
    """Metrics at one level over every row whose label has at least `level` digits."""
    pairs = [(g[:level], r) for g, r in zip(golds, rows, strict=True) if len(g) >= level]
    n = len(pairs)
    if n == 0:
        return {"rows": 0}
    top1 = [r is not None and r.ranked[level][0] == g for g, r in pairs]
    top5 = [r is not None and g in r.ranked[level][:5] for g, r in pairs]
    pred = [r.ranked[level][0] if r is not None else "<none>" for _, r in pairs]
    gold = [g for g, _ in pairs]
    p, rcl, f1 = macro_prf(gold, pred)
    conf = np.array([r.top_prob[level] if r is not None else 0.0 for _, r in pairs])
    correct = np.array(top1, dtype=float)
    answered = [r is not None and not r.needs_review for _, r in pairs]
    covered = int(sum(answered))
    return {
        "rows": n,
        "top1": float(np.mean(top1)),
        "top5": float(np.mean(top5)),
        "macro_precision": p,
        "macro_recall": rcl,
        "macro_f1": f1,
        "ece": expected_calibration_error(conf, correct),
        "coverage": covered / n,
        "accuracy_when_answered": float(np.mean([c for c, a in zip(top1, answered, strict=True) if a]))
        if covered
        else None,
        "unanswerable_rows": sum(r is None for _, r in pairs),
    }


def macro_prf(gold: Sequence[str], pred: Sequence[str]) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over the classes present in the gold labels (scikit-learn's definitions)."""
    from sklearn.metrics import precision_recall_fscore_support

    if not gold:
        return 0.0, 0.0, 0.0
    p, r, f, _ = precision_recall_fscore_support(
        list(gold), list(pred), labels=sorted(set(gold)), average="macro", zero_division=0.0
    )
    return float(p), float(r), float(f)


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    if len(conf) == 0:
        return 0.0
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)


def evaluate(classifier: Classifier, examples: Sequence[Example], modality: Modality = "both") -> dict:
    """Evaluate on labelled examples; the JSON shape of `python -m hs_model evaluate --json`."""
    if not examples:
        raise InputError("The evaluation file has no rows.")
    return evaluate_rows(classifier, examples, modality, run_rows(classifier, examples, modality))


def evaluate_rows(
    classifier: Classifier, examples: Sequence[Example], modality: Modality, rows: Sequence[RowResult | None]
) -> dict:
    """Metrics from already-scored rows (see `evaluate`)."""
    if all(r is None for r in rows):
        raise InputError(f"No row has the {modality} modality (e.g. no photos for --modality image).")
    golds = [e.hs for e in examples]
    return {
        "rows": len(examples),
        "modality": modality,
        "model_version": classifier.version,
        "levels": {str(lv): metrics(rows, golds, lv) for lv in LEVELS if any(len(g) >= lv for g in golds)},
    }
