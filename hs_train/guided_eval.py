"""A simulated broker answers the guided questions: HS4 / HS6 top-1 after 0, 1 and 2 answers, questions per item,
and the HS6 calibration error with and without the within-heading tempering.

Honesty rules: the questions and their options come from the candidates alone, before any answer
(`hs_model.questions.make_questions`); the simulated broker then picks the offered option whose words the gold
code's official text says (`broker_choice`), else "none of these"; nothing about the gold code enters a question.

    python -m hs_train.guided_eval --data-dir ../shared/data --out docs/guided_eval.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hs_core.nomenclature import get_nomenclature
from hs_core.settings import DEFAULT_DATA_DIR, DEFAULT_MODEL_DIR
from hs_model.predict import Classifier, Prediction, Query
from hs_model.questions import (
    CRITERION,
    NONE,
    POOL,
    SPLIT_TEMPERATURE,
    UNKNOWN,
    Question,
    apply_answers,
    broker_choice,
    guide,
)
from hs_train.datasets import _read_jsonl, convert_atlas, convert_hscodecomp, load_uk_parcels, split_of
from hs_train.evaluate import expected_calibration_error

log = logging.getLogger("hs_train.guided_eval")


@dataclasses.dataclass(frozen=True)
class Row:
    text: str | None
    gold: str  # HS6 (may be outside HS 2022: counted wrong)
    attributes: dict


def hscodecomp_rows(path: Path) -> list[Row]:
    """Every HSCodeComp row: the converted text (title, category, material) and the product attributes."""
    converted = convert_hscodecomp(path)
    attrs = []
    for _, record in _read_jsonl(path):
        raw = record.get("product_attributes") or {}
        try:
            raw = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            raw = {}
        attrs.append({str(k).strip(): v for k, v in raw.items()} if isinstance(raw, dict) else {})
    return [Row(r["text"], r["hs"], a) for r, a in zip(converted, attrs, strict=True)]


def atlas_rows(path: Path) -> list[Row]:
    return [Row(r["text"], r["hs"], {}) for r in convert_atlas(path)]


def uk_rows(data_dir: Path, split: str) -> list[Row]:
    """UK parcels of one split, split as training does (by description): `test` was never trained or tuned on."""
    return [Row(e.text, e.hs, {}) for e in load_uk_parcels(data_dir) if split_of(e.text or e.id) == split]


def raw_predictions(classifier: Classifier, rows: Sequence[Row], batch: int = 64) -> list[Prediction]:
    """The model's own pools (no guidance), POOL candidates per level."""
    out = []
    for start in range(0, len(rows), batch):
        feats = classifier.encode([Query(r.text) for r in rows[start : start + batch]])
        out.extend(classifier.predict_features(feats, POOL))
    return out


def _top(p: Prediction, level: int) -> str:
    return p.levels[level][0].code


def simulate(raw: Prediction, row: Row, temperature: float | None, heading_question: bool = True) -> dict:
    """One item: its questions (asked before any answer), then the broker's answers one at a time."""
    valid = row.gold in get_nomenclature().subheading_index
    base = guide(raw, row.text, 5, row.attributes, temperature=temperature, heading_question=heading_question)
    assert base.guidance is not None  # guide() always fills it in
    queue = [q for q in base.guidance.questions if q.evidence is None]
    stages = [base]
    answers: dict[str, str] = {}
    asked: list[Question] = []
    while queue and len(asked) < 2:
        q = queue.pop(0)
        if q.key in answers:
            continue
        answers[q.key] = broker_choice(CRITERION[q.key], q.offered, row.gold) if valid else UNKNOWN
        asked.append(q)
        follow = q.follow_up(answers[q.key])
        if follow is not None:
            queue.insert(0, follow)  # the question tree: the follow-up for the heading the broker chose
        stages.append(apply_answers(base, answers, temperature))
    while len(stages) < 3:
        stages.append(stages[-1])  # no more questions: the answer stays
    return {
        "model": {lv: _top(raw, lv) for lv in (4, 6)},
        "model_p6": raw.levels[6][0].score,
        "stages": [{lv: _top(s, lv) for lv in (4, 6)} for s in stages],
        "p6": [s.levels[6][0].score for s in stages],
        "asked": [q.key for q in asked],
        "answers": answers,
        "evidence": [e.criterion for e in base.guidance.evidence],
    }


def summarise(rows: Sequence[Row], sims: Sequence[dict]) -> dict:
    n = len(rows)

    def acc(get) -> dict:
        return {
            str(lv): round(float(np.mean([get(s)[lv] == r.gold[:lv] for r, s in zip(rows, sims, strict=True)])), 4)
            for lv in (4, 6)
        }

    def ece(conf, get) -> float:
        correct = np.array([get(s)[6] == r.gold for r, s in zip(rows, sims, strict=True)], dtype=float)
        return round(expected_calibration_error(np.array(conf), correct), 4)

    asked = [len(s["asked"]) for s in sims]
    return {
        "rows": n,
        "model_top1": acc(lambda s: s["model"]),
        "after_0_answers_top1": acc(lambda s: s["stages"][0]),
        "after_1_answer_top1": acc(lambda s: s["stages"][1]),
        "after_2_answers_top1": acc(lambda s: s["stages"][2]),
        "questions_per_item": round(float(np.mean(asked)), 3),
        "items_with_no_question": sum(a == 0 for a in asked),
        "items_with_evidence": sum(bool(s["evidence"]) for s in sims),
        "questions_asked": {k: sum(k in s["asked"] for s in sims) for k in CRITERION},
        "answers_none_of_these": sum(v == NONE for s in sims for v in s["answers"].values()),
        "hs6_ece_model": ece([s["model_p6"] for s in sims], lambda s: s["model"]),
        "hs6_ece_after_0_answers": ece([s["p6"][0] for s in sims], lambda s: s["stages"][0]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--out", default=None, help="write the summary JSON here too")
    parser.add_argument("--temperature", type=float, default=SPLIT_TEMPERATURE, help="within-heading tempering")
    parser.add_argument(
        "--sweep", default="", help="comma-separated temperatures to compare on the UK validation split"
    )
    parser.add_argument("--sets", default="hscodecomp,atlas,uk_test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    data = Path(args.data_dir)
    t0 = time.perf_counter()
    classifier = Classifier(Path(args.model))
    loaders = {
        "hscodecomp": lambda: hscodecomp_rows(data / "eval" / "hscodecomp.jsonl"),
        "atlas": lambda: atlas_rows(data / "eval" / "atlas_validation.jsonl"),
        "uk_test": lambda: uk_rows(data, "test"),
        "uk_val": lambda: uk_rows(data, "val"),
    }
    result: dict = {"model_version": classifier.version, "temperature": args.temperature, "sets": {}}
    if args.sweep:
        rows = loaders["uk_val"]()
        raws = raw_predictions(classifier, rows)
        result["sweep_uk_val"] = {}
        for t in [float(x) for x in args.sweep.split(",")]:
            sims = [simulate(p, r, t if t > 1 else None) for p, r in zip(raws, rows, strict=True)]
            summary = summarise(rows, sims)
            result["sweep_uk_val"][str(t)] = {
                k: summary[k]
                for k in ("rows", "hs6_ece_after_0_answers", "after_0_answers_top1", "after_2_answers_top1")
            }
            log.info("T=%s: %s", t, result["sweep_uk_val"][str(t)])
    for name in [s for s in args.sets.split(",") if s]:
        rows = loaders[name]()
        raws = raw_predictions(classifier, rows)
        result["sets"][name] = {}
        for variant, heading in (("criteria", False), ("criteria+heading", True)):
            sims = [simulate(p, r, args.temperature, heading) for p, r in zip(raws, rows, strict=True)]
            result["sets"][name][variant] = summarise(rows, sims)
            log.info("%s %s: %s", name, variant, json.dumps(result["sets"][name][variant]))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
