"""Guided classification: the questions worth asking about an item, the broker's answers, and the reweighting of the
candidates in place (no model run, no torch).

The criteria and what each code's text says live in `hs_model.criteria`; the evidence a description states in
`hs_model.evidence`. Questions are offered only where the candidates that hold the probability say different
things, ranked by expected information gain; evidence answers a question where it can and the broker can override
it. `guide` is the one entry point the classifier calls; `apply_answers` re-ranks under the broker's answers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from hs_core.nomenclature import HsCode
from hs_model.criteria import (
    CRITERIA,
    CRITERION,
    EVIDENCE_MISMATCH,
    HEADING,
    HEADING_OPTIONS,
    MISMATCH,
    MORE_HEADINGS,
    NEUTRAL,
    NONE,
    SUBHEADING,
    UNKNOWN,
    Criterion,
    broker_choice,
    check_answer,
    likelihood,
    said,
)
from hs_model.evidence import Evidence, read_evidence

if TYPE_CHECKING:
    from hs_model.predict import Candidate, Prediction

# the names callers use, kept importable from here (services, the CLI, evaluation)
__all__ = [
    "CRITERION",
    "NONE",
    "POOL",
    "SPLIT_TEMPERATURE",
    "TOP_CALIBRATION",
    "UNKNOWN",
    "Guidance",
    "Question",
    "TopCalibration",
    "apply_answers",
    "broker_choice",
    "check_answer",
    "guide",
    "make_questions",
    "read_evidence",
    "reweighted_scores",
    "said",
]

POOL = 30  # candidates per level the guidance keeps from the model (questions look beyond the shown top 5)
# The subheading pool also holds every subheading of the model's best headings: those the heading questions can
# offer (up to 4, then 4 more after "none of these"), so that a heading the broker picks has all its subheadings
# ranked, not only those among the 30 best of all.
HEADINGS_COVERED = 2 * HEADING_OPTIONS
# The knobs below were chosen with hsdesk-v3 on the UK parcels' validation split (232 rows) and the CBP rulings of
# May 2026 (136, one-line form), the precedent index without those rows (`hs_train.guided_eval --tune`), by HS4 /
# HS6 after two answers within 1.5 questions an item and, for the calibration, the log-loss of the top subheading.
HEADING_MIN_MASS = 0.01  # a heading offered first holds at least this share of the probability (was 0.05)
HEADING_PRIORITY = 2.0  # the heading question's gain counts this many times when questions are ranked
MORE_HEADING_MIN_MASS = 0.005  # the same for the headings offered after "none of these"
# Tempering of within-heading splits: T=2 where a criterion of the texts separates the subheadings (material,
# knitted, gender…: what descriptions rarely state and the model cannot see), T=1.5 elsewhere. (4 / 2 was chosen
# for hsdesk-v2; with hsdesk-v3 and the precedents vote it made the HS6 calibration worse on rows the vote had not
# seen.)
SPLIT_TEMPERATURE = 2.0
OTHER_SPLIT_TEMPERATURE = 1.5
CONFIDENT = 0.9  # no question when the top subheading holds this much and the evidence agrees
MIN_GAIN = 0.5  # bits: a question expected to tell less is not worth a click (0.3 asked 1.55 an item on UK val)
# After a heading is chosen: "never" / "fallback" (when no criterion of the texts splits its candidates) / "always"
# ask which of its subheadings it is (those holding at least SUBHEADING_MIN_SHARE of the heading, best first).
SUBHEADING_FOLLOW_UP = "fallback"
SUBHEADING_MIN_SHARE = 0.05
MAX_QUESTIONS = 2


@dataclass(frozen=True)
class TopCalibration:
    """Platt scaling of the top subheading's probability, odds' = e^shift · odds^power, the rest of the distribution
    scaled to fill what remains (so levels still add up). The served split was too sure above 50 % (0.85 meant
    about 0.5 right) and not sure enough below 10 % (0.05 meant 0.13) on rows the vote had not seen."""

    power: float
    shift: float

    def __call__(self, p: float) -> float:
        p = min(max(p, 1e-9), 1.0 - 1e-9)
        return 1.0 / (1.0 + math.exp(-(self.power * math.log(p / (1.0 - p)) + self.shift)))


TOP_CALIBRATION = TopCalibration(power=0.731, shift=0.074)

# ------------------------------------------------------------------------------------------------- questions


class CandidateLike(Protocol):
    @property
    def code(self) -> str: ...
    @property
    def score(self) -> float: ...


@dataclass(frozen=True)
class Question:
    """A question worth asking about one item, with the options its candidates' texts use."""

    key: str  # the criterion
    text: str
    options: tuple[tuple[str, str], ...]  # (key, label), then "none of these" and "don't know"
    gain: float  # expected information gain over the subheading candidates, bits
    evidence: str | None = None  # the option the input already states, if any
    follow_ups: tuple[tuple[str, Question], ...] = ()  # (heading answered, the question to ask next)

    @property
    def offered(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.options if k not in (NONE, UNKNOWN))

    def follow_up(self, answer: str | None) -> Question | None:
        return dict(self.follow_ups).get(answer or "")

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "key": self.key,
            "question": self.text,
            "options": [{"key": k, "label": label} for k, label in self.options],
            "gain_bits": round(self.gain, 4),
            "answered_by_evidence": self.evidence,
        }
        if self.follow_ups:
            out["follow_ups"] = {answer: q.to_dict() for answer, q in self.follow_ups}
        return out


def _entropy(p: Sequence[float]) -> float:
    total = sum(p)
    return -sum(x / total * math.log2(x / total) for x in p if x > 0) if total > 0 else 0.0


def _distribution(pool: Sequence[CandidateLike]) -> tuple[list[str], list[float]]:
    codes = [c.code for c in pool]
    probs = [max(c.score, 0.0) for c in pool]
    return codes, probs


def expected_gain(criterion: Criterion, offered: Sequence[str], codes: Sequence[str], probs: Sequence[float]) -> float:
    """Bits the answer is expected to tell about the subheading: H(p) - E_answer H(p | answer).

    The broker is modelled as answering what a code's text says (an option it does not offer reads as "none"),
    and, for a silent code, "none of these" half of the time and any offered option otherwise.
    """
    answers = [*offered, NONE]
    joint = {a: [0.0] * len(codes) for a in answers}
    for i, (code, p) in enumerate(zip(codes, probs, strict=True)):
        found = [o for o in offered if o in said(criterion, code)]
        if found:
            for o in found:
                joint[o][i] += p / len(found)
        elif said(criterion, code):
            joint[NONE][i] += p
        else:
            joint[NONE][i] += p * 0.5
            for o in offered:
                joint[o][i] += p * 0.5 / len(offered)
    total = sum(probs)
    after = sum(sum(row) / total * _entropy(row) for row in joint.values() if sum(row) > 0)
    return _entropy(probs) - after


def offered_options(criterion: Criterion, codes: Sequence[str], probs: Sequence[float], min_mass: float) -> list[str]:
    """The options said by candidates that together hold at least `min_mass`, in the criterion's order."""
    mass = dict.fromkeys((o.key for o in criterion.options), 0.0)
    for code, p in zip(codes, probs, strict=True):
        for key in said(criterion, code):
            mass[key] += p
    return [k for k, m in mass.items() if m >= min_mass]


def _heading_ranking(
    codes: Sequence[str], probs: Sequence[float], headings: Sequence[tuple[str, float]] | None
) -> list[tuple[str, float]]:
    """Headings best first with their probability: the model's heading-level pool when given (it counts the
    subheadings outside the pool too), else the pool's subheadings summed per heading."""
    if headings is None:
        mass: dict[str, float] = {}
        for code, p in zip(codes, probs, strict=True):
            mass[code[:4]] = mass.get(code[:4], 0.0) + p
        headings = list(mass.items())
    return sorted(headings, key=lambda kv: -kv[1])


def _heading_options(offered: Sequence[str]) -> tuple[tuple[str, str], ...]:
    options = tuple((h, f"{h} {_short(HsCode(h).description)}") for h in offered)
    return options + ((NONE, "None of these"), (UNKNOWN, "Don't know"))


def _heading_question(
    codes: Sequence[str], probs: Sequence[float], headings: Sequence[tuple[str, float]] | None = None
) -> Question | None:
    """ "Which of these is it?" over the best headings holding at least HEADING_MIN_MASS each (two at least)."""
    total = sum(probs) if headings is None else 1.0
    ranking = _heading_ranking(codes, probs, headings)
    offered = [h for h, m in ranking if m >= HEADING_MIN_MASS * total][:HEADING_OPTIONS]
    if len(offered) < 2:
        return None
    gain = expected_gain(HEADING, offered, codes, probs)
    return Question(HEADING.key, HEADING.question, _heading_options(offered), gain)


def _more_headings(
    question: Question, codes: Sequence[str], probs: Sequence[float], headings: Sequence[tuple[str, float]] | None
) -> Question | None:
    """The follow-up of "none of these" to the heading question: the next headings of the ranking."""
    total = sum(probs) if headings is None else 1.0
    ranking = _heading_ranking(codes, probs, headings)
    offered = [h for h, m in ranking if h not in question.offered and m >= MORE_HEADING_MIN_MASS * total]
    offered = offered[:HEADING_OPTIONS]
    if not offered:
        return None
    gain = expected_gain(MORE_HEADINGS, offered, codes, probs)
    return Question(MORE_HEADINGS.key, MORE_HEADINGS.question, _heading_options(offered), gain)


def _with_follow_ups(
    question: Question,
    codes: Sequence[str],
    probs: Sequence[float],
    evidence: Sequence[Evidence],
    min_gain: float,
    headings: Sequence[tuple[str, float]] | None = None,
) -> Question:
    """For each heading offered, the question that best splits that heading's own candidates, and for "none of
    these" the next headings of the ranking (a question tree, drawn up before any answer)."""
    follow: list[tuple[str, Question]] = []
    for heading in question.offered:
        inside = [(c, p) for c, p in zip(codes, probs, strict=True) if c[:4] == heading]
        if len(inside) < 2:
            continue
        pool = [_Scored(c, p) for c, p in inside]
        found = [q for q in make_questions(pool, evidence, 1, min_gain, heading_question=False) if q.evidence is None]
        sub = _subheading_question(inside, min_gain) if SUBHEADING_FOLLOW_UP != "never" else None
        chosen = sub if sub is not None and (SUBHEADING_FOLLOW_UP == "always" or not found) else next(iter(found), None)
        if chosen is not None:
            follow.append((heading, chosen))
    more = _more_headings(question, codes, probs, headings)
    if more is not None:
        follow.append((NONE, more))
    return dataclasses.replace(question, follow_ups=tuple(follow))


def _subheading_question(inside: Sequence[tuple[str, float]], min_gain: float) -> Question | None:
    """ "Which of these subheadings is it?" over one heading's candidates, unless one holds CONFIDENT of it or the
    question is expected to tell less than `min_gain` bits."""
    total = sum(p for _, p in inside)
    ranked = sorted(inside, key=lambda cp: -cp[1])
    if total <= 0 or ranked[0][1] >= CONFIDENT * total:
        return None
    offered = [c for c, p in ranked if p >= SUBHEADING_MIN_SHARE * total][:HEADING_OPTIONS]
    if len(offered) < 2:
        return None
    gain = expected_gain(SUBHEADING, offered, [c for c, _ in ranked], [p for _, p in ranked])
    if gain < min_gain:
        return None
    options = tuple((c, f"{HsCode(c).formatted} {_short(HsCode(c).description)}") for c in offered)
    options += ((NONE, "None of these"), (UNKNOWN, "Don't know"))
    return Question(SUBHEADING.key, SUBHEADING.question, options, gain)


@dataclass(frozen=True)
class _Scored:
    code: str
    score: float


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def make_questions(
    pool: Sequence[CandidateLike],
    evidence: Sequence[Evidence] = (),
    max_questions: int = MAX_QUESTIONS,
    min_gain: float | None = None,
    heading_question: bool = True,
    headings: Sequence[tuple[str, float]] | None = None,
) -> list[Question]:
    """The questions that split the candidates' probability best, from their texts alone (before any answer).

    Args:
        pool: subheading candidates with their probabilities (best first).
        evidence: what the input already states; a question it answers is kept, marked with that answer.
        max_questions: how many questions to ask the broker (evidence-answered ones do not count).
        min_gain: questions expected to tell less than this many bits are dropped.
        heading_question: also consider "which of these headings is it?".
        headings: the model's heading-level pool as (heading, probability), which the heading questions offer
            from (None: the subheadings of `pool` summed per heading).

    Returns:
        Questions, the most informative first.
    """
    min_gain = MIN_GAIN if min_gain is None else min_gain
    codes, probs = _distribution(pool)
    total = sum(probs)
    if not codes or total <= 0:
        return []
    stated = {ev.criterion: ev.option for ev in evidence}
    top = codes[0]
    if probs[0] / total >= CONFIDENT and all(
        not said(CRITERION[c], top) or o in said(CRITERION[c], top) for c, o in stated.items()
    ):
        return []  # confident, and nothing in the input contradicts the top candidate
    ranked = []
    for criterion in CRITERIA:
        offered = offered_options(criterion, codes, probs, min_mass=0.02 * total)
        silent = sum(p for c, p in zip(codes, probs, strict=True) if not said(criterion, c))
        if len(offered) < 2 and not (offered and silent >= 0.1 * total):
            continue  # nothing to choose between
        gain = expected_gain(criterion, offered, codes, probs)
        if gain < min_gain:
            continue
        options = tuple((k, criterion.option(k).label) for k in offered)
        options += ((NONE, "None of these"), (UNKNOWN, "Don't know"))
        ranked.append(Question(criterion.key, criterion.question, options, gain, stated.get(criterion.key)))
    heading = _heading_question(codes, probs, headings) if heading_question else None
    if heading is not None and heading.gain >= min_gain:
        ranked.append(heading)
    ranked.sort(key=lambda q: -q.gain * (HEADING_PRIORITY if q.key == HEADING.key else 1.0))
    asked = [q for q in ranked if q.evidence is None][:max_questions]
    if asked and asked[0].key == HEADING.key and max_questions > 1:
        asked[0] = _with_follow_ups(asked[0], codes, probs, evidence, min_gain, headings)
    return [q for q in ranked if q.evidence is not None] + asked


# ------------------------------------------------------------------------------------------------- reweighting


# criterion -> (option, weight of a code saying another option, weight of a silent code, the options offered)
EffectiveAnswer = tuple[str, float, float, frozenset[str] | None]


@dataclass(frozen=True)
class Guidance:
    """Everything needed to re-rank an item without the model: the model's own candidate pool at each level,
    the evidence read, the questions and the answers given so far."""

    # the model's candidates per level (up to POOL)
    pool: Mapping[int, tuple[Candidate, ...]] = field(default_factory=dict)
    evidence: tuple[Evidence, ...] = ()
    questions: tuple[Question, ...] = ()
    answers: Mapping[str, str] = field(default_factory=dict)  # criterion -> option, from the broker
    top_k: int = 5

    def effective_answers(self) -> dict[str, EffectiveAnswer]:
        """criterion -> (option, weight of a code saying another option, weight of a silent code, the options
        offered): the broker's answers over the evidence. The model has read the evidence's words already: a code
        silent on them keeps its weight; the broker's answer is news, and favours the codes that say it."""
        out: dict[str, EffectiveAnswer] = {
            ev.criterion: (ev.option, EVIDENCE_MISMATCH, 1.0, None) for ev in self.evidence
        }
        offered = {q.key: frozenset(q.offered) for q in self.questions}
        for q in self.questions:  # a follow-up asked after the broker's heading answer
            follow = q.follow_up(self.answers.get(q.key))
            if follow is not None:
                offered[follow.key] = frozenset(follow.offered)
        out.update({c: (o, MISMATCH, NEUTRAL, offered.get(c)) for c, o in self.answers.items()})
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "questions": [q.to_dict() for q in self.questions],
            "evidence": [ev.to_dict() for ev in self.evidence],
            "answers": dict(self.answers),
        }


def _code_weight(code: str, answers: Mapping[str, EffectiveAnswer]) -> float:
    w = 1.0
    for criterion, (option, mismatch, neutral, offered) in answers.items():
        w *= likelihood(CRITERION[criterion], code, option, mismatch, neutral, offered)
    return w


@functools.lru_cache(maxsize=16384)
def _separating(codes: frozenset[str]) -> bool:
    """Whether a criterion of the texts tells these sibling subheadings apart."""
    return any(len({said(c, code) for code in codes}) > 1 for c in CRITERIA)


def temper_splits(
    scores: dict[str, float], temperature: float = SPLIT_TEMPERATURE, other: float = OTHER_SPLIT_TEMPERATURE
) -> dict[str, float]:
    """Flatten each heading's split over its listed subheadings toward uniform (p_i ∝ p_i^(1/T)).

    The model separates headings far better than the subheadings inside one (they differ mostly by material or
    construction, which descriptions rarely state and which its weak heading labels never taught it), so its
    split there is overconfident; it is tempered (by `temperature` where a criterion of the texts separates the
    subheadings, by `other` elsewhere) and left to what the input states and the broker answers, applied
    afterwards. The heading's total is kept.
    """
    by_heading: dict[str, list[str]] = {}
    for code in scores:
        by_heading.setdefault(code[:4], []).append(code)
    out = dict(scores)
    for codes in by_heading.values():
        if len(codes) < 2:
            continue
        t = temperature if _separating(frozenset(codes)) else other
        total = sum(scores[c] for c in codes)
        flat = {c: max(scores[c], 1e-12) ** (1.0 / t) for c in codes}
        norm = sum(flat.values())
        for c in codes:
            out[c] = total * flat[c] / norm
    return out


def reweighted_scores(
    pool: Mapping[int, Sequence[CandidateLike]],
    answers: Mapping[str, EffectiveAnswer],
    temperature: float | None = SPLIT_TEMPERATURE,
    calibration: TopCalibration | None = TOP_CALIBRATION,
) -> dict[int, dict[str, float]]:
    """The pool's probabilities at 6/4/2 digits re-weighted under the answers, levels kept consistent.

    Every subheading of the pool is weighted by how well its text fits the answers; the rest of each heading
    (its subheadings outside the pool) by the heading's own text, the rest of each chapter by the chapter's, and
    the mass outside the pool stays neutral. Then everything is renormalised, so a heading is still the sum of
    its subheadings and a chapter of its headings.

    Args:
        pool: candidates per level (objects with `code` and `score`).
        answers: criterion -> (option, weight of a mismatching code, weight of a silent code, options offered).
        temperature: tempering of within-heading splits (None: none).
        calibration: the top subheading's calibration, applied last (None: none).

    Returns:
        level -> {code: probability} for the pool's codes (and any heading or chapter needed for the roll-up).
    """
    subs = {c.code: c.score for c in pool[6]}
    heads = {c.code: c.score for c in pool[4]}
    chaps = {c.code: c.score for c in pool[2]}
    listed_in_head: dict[str, float] = {}
    for code, p in subs.items():
        listed_in_head[code[:4]] = listed_in_head.get(code[:4], 0.0) + p
    for h, total in listed_in_head.items():  # a pooled subheading whose heading fell outside the heading pool
        heads[h] = max(heads.get(h, 0.0), total)
    listed_in_chap: dict[str, float] = {}
    for h, p in heads.items():
        listed_in_chap[h[:2]] = listed_in_chap.get(h[:2], 0.0) + p
    for ch, total in listed_in_chap.items():
        chaps[ch] = max(chaps.get(ch, 0.0), total)
    if temperature:
        subs = temper_splits(subs, temperature, min(OTHER_SPLIT_TEMPERATURE, temperature))
    new_sub = {c: p * _code_weight(c, answers) for c, p in subs.items()}
    new_head = {h: max(p - listed_in_head.get(h, 0.0), 0.0) * _code_weight(h, answers) for h, p in heads.items()}
    for c, p in new_sub.items():
        new_head[c[:4]] += p
    new_chap = {ch: max(p - listed_in_chap.get(ch, 0.0), 0.0) * _code_weight(ch, answers) for ch, p in chaps.items()}
    for h, p in new_head.items():
        new_chap[h[:2]] += p
    outside = max(1.0 - sum(chaps.values()), 0.0)
    z = sum(new_chap.values()) + outside * math.prod(a[2] for a in answers.values() if a[0] != UNKNOWN)
    z = z if z > 0 else 1.0
    out = {lv: {c: v / z for c, v in new.items()} for lv, new in ((6, new_sub), (4, new_head), (2, new_chap))}
    return calibrate_top(out, calibration) if calibration is not None else out


def calibrate_top(scores: dict[int, dict[str, float]], calibration: TopCalibration) -> dict[int, dict[str, float]]:
    """The top subheading's probability p calibrated to q, everything else scaled by (1 - q) / (1 - p): a heading
    or chapter holding the top subheading gets q plus its scaled rest, so the levels keep adding up."""
    if not scores[6]:
        return scores
    top = max(scores[6], key=scores[6].__getitem__)
    p = scores[6][top]
    if p >= 1.0 - 1e-9:
        return scores
    q = calibration(p)
    r = (1.0 - q) / (1.0 - p)
    return {
        lv: {c: q + r * (v - p) if top.startswith(c) else r * v for c, v in level.items()}
        for lv, level in scores.items()
    }


def reweight_levels(
    pool: Mapping[int, Sequence[Candidate]],
    answers: Mapping[str, EffectiveAnswer],
    temperature: float | None = SPLIT_TEMPERATURE,
    keep: int | None = None,
    calibration: TopCalibration | None = TOP_CALIBRATION,
) -> dict[int, list[Candidate]]:
    """`reweighted_scores` as candidate lists per level, best first (the pool's objects with their new `score`,
    via `dataclasses.replace`), cut to `keep` when given."""
    scores = reweighted_scores(pool, answers, temperature, calibration)
    out: dict[int, list[Candidate]] = {}
    for level, new in scores.items():
        by_code: dict[str, Candidate] = {c.code: c for c in pool[level]}
        ranked = sorted((code for code in new if code in by_code), key=lambda c: -new[c])[:keep]
        out[level] = [dataclasses.replace(by_code[code], score=new[code]) for code in ranked]
    return out


def guide(
    prediction: Prediction,
    text: str | None,
    top_k: int,
    attributes: Mapping[str, object] | None = None,
    answers: Mapping[str, str] | None = None,
    temperature: float | None = SPLIT_TEMPERATURE,
    heading_question: bool = True,
    calibration: TopCalibration | None = TOP_CALIBRATION,
) -> Prediction:
    """Post-process a Prediction whose levels hold the model's pool: evidence, calibrated splits, questions, answers.

    Args:
        prediction: a `hs_model.predict.Prediction` (any frozen dataclass with `levels`, `needs_review`,
            `review_threshold` and a `guidance` field) whose levels hold up to POOL candidates.
        text: the description the prediction was made from.
        top_k: candidates per level to keep.
        attributes: product attributes, when the input has them.
        answers: criterion -> option the broker gave.
        temperature: within-heading tempering on unstated criteria (None: none).
        heading_question: also consider "which of these headings is it?".
        calibration: the top subheading's calibration (None: none).

    Returns:
        The prediction with re-ranked levels cut to `top_k` and its `guidance` filled in.
    """
    pool = {lv: tuple(cs) for lv, cs in prediction.levels.items()}
    evidence = tuple(read_evidence(text, attributes))
    base = Guidance(pool=pool, evidence=evidence, top_k=top_k)
    before = reweighted_scores(pool, base.effective_answers(), temperature, calibration)
    ranked = sorted(before[6].items(), key=lambda kv: -kv[1])
    questions = tuple(
        make_questions(
            [_Scored(c, p) for c, p in ranked],
            evidence,
            heading_question=heading_question,
            headings=list(before[4].items()),
        )
    )
    guidance = dataclasses.replace(base, questions=questions)
    return apply_answers(dataclasses.replace(prediction, guidance=guidance), answers or {}, temperature, calibration)


def apply_answers(
    prediction: Prediction,
    answers: Mapping[str, str],
    temperature: float | None = SPLIT_TEMPERATURE,
    calibration: TopCalibration | None = TOP_CALIBRATION,
) -> Prediction:
    """The prediction re-ranked under the broker's answers (replacing earlier ones); the questions stay as asked.

    Raises:
        ValueError: an unknown criterion or option (the message lists the valid ones), or a prediction without
            guidance (one `guide` has not seen).
    """
    guidance = prediction.guidance
    if guidance is None:
        raise ValueError("the prediction has no guidance: run `guide` on it first")
    for criterion, option in answers.items():
        check_answer(criterion, option)
    guidance = dataclasses.replace(guidance, answers=dict(answers))
    levels = reweight_levels(guidance.pool, guidance.effective_answers(), temperature, guidance.top_k, calibration)
    return dataclasses.replace(
        prediction,
        levels=levels,
        needs_review=levels[4][0].score < prediction.review_threshold,
        guidance=guidance,
    )
