"""A simulated broker answers the guided questions: HS4 / HS6 top-1 after 0, 1 and 2 answers, questions per item,
and the HS6 / HS4 calibration error of the model's own ranking and as served (tempering, evidence, calibration).

Honesty rules: the questions and their options come from the candidates alone, before any answer
(`hs_model.questions.make_questions`); the simulated broker then picks the offered option whose words the gold
code's official text says (`broker_choice`), else "none of these"; nothing about the gold code enters a question.

    python -m hs_train.guided_eval --data-dir ../shared/data --out docs/guided_eval.json
    python -m hs_train.guided_eval --data-dir ../shared/data --tune --sets "" --out docs/guided_tune.json

`--tune` chooses the knobs on the tuning sets only: the UK parcels' validation split and the CBP rulings of May 2026
(one-line form), with the precedent index stripped of those rows (the shipped index holds them: a row would vote
for itself). It fits the top subheading's calibration for each within-heading tempering and sweeps the heading
question's knobs; the evaluation sets are not read.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import numpy as np

from hs_core.nomenclature import get_nomenclature
from hs_core.settings import DEFAULT_DATA_DIR, DEFAULT_MODEL_DIR
from hs_model import questions
from hs_model.criteria import HEADING_OPTIONS
from hs_model.predict import Classifier, Prediction, Query
from hs_model.questions import (
    CRITERION,
    NONE,
    POOL,
    SPLIT_TEMPERATURE,
    TOP_CALIBRATION,
    UNKNOWN,
    Question,
    TopCalibration,
    apply_answers,
    broker_choice,
    guide,
)
from hs_train.datasets import _read_jsonl, convert_atlas, convert_hscodecomp, load_uk_parcels, split_of
from hs_train.evaluate import expected_calibration_error
from hs_train.precedents_eval import HELD_OUT_FROM, load_rulings, split_rulings

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


def may_rulings_rows(data_dir: Path) -> list[Row]:
    """CBP rulings of May 2026 in their one-line form (held out of the training by date)."""
    return [Row(r["short"], r["hs6"], {}) for r in split_rulings(load_rulings(data_dir))[1] if r["short"]]


def hold_out_precedents(classifier: Classifier, data_dir: Path) -> int:
    """Drop from the classifier's precedent index the rows the tuning sets are made of (the UK parcels' validation
    split and the rulings of May 2026), so that no row votes for itself; returns how many rows were dropped."""
    index = classifier.precedents
    if index is None:
        return 0
    val_ids = {e.id for e in load_uk_parcels(data_dir) if split_of(e.text or e.id) == "val"}
    keep = [
        i
        for i, (dataset, row_id, date) in enumerate(index.provenance[: len(index)])
        if not (dataset == "uk_parcels" and row_id in val_ids)
        and not (dataset == "cbp_rulings" and date >= HELD_OUT_FROM)
    ]
    classifier.precedents = index.subset(keep)
    return len(index) - len(keep)


def raw_predictions(classifier: Classifier, rows: Sequence[Row], batch: int = 64) -> list[Prediction]:
    """The model's own pools (no guidance), POOL candidates per level."""
    out = []
    for start in range(0, len(rows), batch):
        feats = classifier.encode([Query(r.text) for r in rows[start : start + batch]])
        out.extend(classifier.predict_features(feats, POOL))
    return out


def _top(p: Prediction, level: int) -> str:
    return p.levels[level][0].code


def simulate(
    raw: Prediction,
    row: Row,
    temperature: float | None,
    heading_question: bool = True,
    calibration: TopCalibration | None = TOP_CALIBRATION,
) -> dict:
    """One item: its questions (asked before any answer), then the broker's answers one at a time."""
    valid = row.gold in get_nomenclature().subheading_index
    base = guide(
        raw,
        row.text,
        5,
        row.attributes,
        temperature=temperature,
        heading_question=heading_question,
        calibration=calibration,
    )
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
        stages.append(apply_answers(base, answers, temperature, calibration))
    while len(stages) < 3:
        stages.append(stages[-1])  # no more questions: the answer stays
    return {
        "model": {lv: _top(raw, lv) for lv in (4, 6)},
        "model_p": {lv: raw.levels[lv][0].score for lv in (4, 6)},
        "stages": [{lv: _top(s, lv) for lv in (4, 6)} for s in stages],
        "p": [{lv: s.levels[lv][0].score for lv in (4, 6)} for s in stages],
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

    def ece(level: int, conf, get) -> float:
        correct = np.array([get(s)[level] == r.gold[:level] for r, s in zip(rows, sims, strict=True)], dtype=float)
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
        **{f"hs{lv}_ece_model": ece(lv, [s["model_p"][lv] for s in sims], lambda s: s["model"]) for lv in (4, 6)},
        **{
            f"hs{lv}_ece_after_0_answers": ece(lv, [s["p"][0][lv] for s in sims], lambda s: s["stages"][0])
            for lv in (4, 6)
        },
        "hs6_ece_floor_after_0_answers": ece_floor(np.array([s["p"][0][6] for s in sims])),
    }


def ece_floor(conf: np.ndarray, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these confidences would show on this many rows (its mean over
    draws of right / wrong with exactly those probabilities): below it, a difference is noise."""
    rng = np.random.default_rng(seed)
    values = [expected_calibration_error(conf, (rng.random(len(conf)) < conf).astype(float)) for _ in range(draws)]
    return round(float(np.mean(values)), 4)


def fit_top_calibration(conf: np.ndarray, correct: np.ndarray, steps: int = 50) -> TopCalibration:
    """Platt scaling of the top candidate's probability: the power and shift of its log-odds that minimise the
    log-loss of right / wrong (Newton's method on two parameters)."""
    p = np.clip(conf, 1e-6, 1 - 1e-6)
    x = np.log(p / (1 - p))
    theta = np.array([1.0, 0.0])
    for _ in range(steps):
        q = 1 / (1 + np.exp(-(theta[0] * x + theta[1])))
        grad = np.array([np.sum((q - correct) * x), np.sum(q - correct)])
        w = q * (1 - q)
        hess = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]) + 1e-6 * np.eye(2)
        theta = theta - np.linalg.solve(hess, grad)
    return TopCalibration(power=round(float(theta[0]), 3), shift=round(float(theta[1]), 3))


def log_loss(conf: np.ndarray, correct: np.ndarray) -> float:
    p = np.clip(conf, 1e-6, 1 - 1e-6)
    return float(-np.mean(correct * np.log(p) + (1 - correct) * np.log(1 - p)))


# (split temperature or None, other split temperature) tried by `tune`
TEMPERINGS = ((None, 1.0), (1.5, 1.0), (2.0, 1.0), (2.0, 1.5), (2.0, 2.0), (4.0, 1.0), (4.0, 2.0))
# the question tree's knobs swept by `tune`, one at a time around the shipped values (module constants of
# hs_model.questions, patched for the sweep)
QUESTION_KNOBS = {
    "HEADING_MIN_MASS": (0.05, 0.02, 0.01),
    "HEADING_OPTIONS": (4, 5),
    "HEADING_PRIORITY": (1.0, 2.0),
    "MIN_GAIN": (0.3, 0.4, 0.5),
    "SUBHEADING_FOLLOW_UP": ("never", "fallback", "always"),
}


def tune(classifier: Classifier, data: Path) -> dict:
    """Calibration per tempering and the heading question's knobs, on the tuning sets with a held-out vote."""
    held_out = copy.copy(classifier)
    dropped = hold_out_precedents(held_out, data)
    sets = {"uk_val": uk_rows(data, "val"), "may_rulings_one_line": may_rulings_rows(data)}
    raws = {name: raw_predictions(held_out, rows) for name, rows in sets.items()}
    out: dict = {"precedent_rows_dropped": dropped, "rows": {k: len(v) for k, v in sets.items()}, "calibration": []}
    for temperature, other in TEMPERINGS:
        conf, correct, names = [], [], []
        with mock.patch.object(questions, "OTHER_SPLIT_TEMPERATURE", other):
            for name, rows in sets.items():
                for raw, row in zip(raws[name], rows, strict=True):
                    served = guide(raw, row.text, 5, row.attributes, temperature=temperature, calibration=None)
                    conf.append(served.levels[6][0].score)
                    correct.append(served.levels[6][0].code == row.gold)
                    names.append(name)
        c, y, n = np.array(conf), np.array(correct, dtype=float), np.array(names)
        cal = fit_top_calibration(c, y)
        cc = np.array([cal(x) for x in c])
        cross = {}  # fitted on the other tuning set only: the ECE to expect on rows the fit has not seen
        for k in sets:
            other_fit = fit_top_calibration(c[n != k], y[n != k])
            cross[k] = round(expected_calibration_error(np.array([other_fit(x) for x in c[n == k]]), y[n == k]), 4)
        out["calibration"].append(
            {
                "temperature": temperature,
                "other": other,
                "hs6_top1": round(float(y.mean()), 4),
                "log_loss": round(log_loss(c, y), 4),
                "fitted": dataclasses.asdict(cal),
                "log_loss_calibrated": round(log_loss(cc, y), 4),
                "hs6_ece": {k: round(expected_calibration_error(c[n == k], y[n == k]), 4) for k in sets},
                "hs6_ece_calibrated": {k: round(expected_calibration_error(cc[n == k], y[n == k]), 4) for k in sets},
                "hs6_ece_calibrated_on_the_other_set": cross,
                "hs6_ece_floor": {k: ece_floor(cc[n == k]) for k in sets},
            }
        )
        log.info("tune calibration: %s", out["calibration"][-1])
    out["question_knobs"] = []
    shipped = {k: getattr(questions, k) for k in QUESTION_KNOBS}
    variants = [shipped] + [
        {**shipped, k: v} for k, values in QUESTION_KNOBS.items() for v in values if v != shipped[k]
    ]
    for knobs in variants:
        with mock.patch.multiple(questions, **knobs):  # type: ignore[arg-type]
            result = {}
            for name, rows in sets.items():
                sims = [simulate(p, r, SPLIT_TEMPERATURE) for p, r in zip(raws[name], rows, strict=True)]
                summary = summarise(rows, sims)
                result[name] = {
                    k: summary[k] for k in ("after_1_answer_top1", "after_2_answers_top1", "questions_per_item")
                }
        out["question_knobs"].append({"knobs": knobs, **result})
        log.info("tune questions: %s", out["question_knobs"][-1])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--out", default=None, help="write the summary JSON here too")
    parser.add_argument("--temperature", type=float, default=SPLIT_TEMPERATURE, help="within-heading tempering")
    parser.add_argument("--tune", action="store_true", help="choose the knobs on the tuning sets (see above)")
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
    result: dict = {
        "model_version": classifier.version,
        "serving": {
            "split_temperature": args.temperature,
            "other_split_temperature": questions.OTHER_SPLIT_TEMPERATURE,
            "top_calibration": dataclasses.asdict(TOP_CALIBRATION),
            "heading_min_mass": questions.HEADING_MIN_MASS,
            "heading_options": HEADING_OPTIONS,
            "heading_priority": questions.HEADING_PRIORITY,
            "min_gain": questions.MIN_GAIN,
        },
        "sets": {},
    }
    if args.tune:
        result["tuning"] = tune(classifier, data)
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
