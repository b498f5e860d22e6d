"""Guided classification: the criteria that separate the candidates, read from their own HS texts; the evidence the
description states; the broker's answers; and the reweighting of the candidates in place (no model run, no torch).

A *criterion* (textile material, knitted or not, gender, precious or base metal, footwear uppers, main material,
power source) is a question with options; an option is a pattern over a code's official text. A candidate "says"
an option when its text matches it ("Shirts; men's or boys', of cotton (not knitted or crocheted)" says cotton, men's,
not knitted); a text silent on a criterion is neutral. Questions are offered only where the candidates that hold the
probability say different things, ranked by expected information gain; the description's own words (and product
attributes such as a "Material" field) answer a question where they can, as evidence the broker can override.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from hs_core.nomenclature import HsCode, get_nomenclature

if TYPE_CHECKING:
    from hs_model.predict import Candidate, Prediction

NONE = "none"  # "none of these"
UNKNOWN = "unknown"  # "don't know": leaves the candidates as they are
MISMATCH = 0.02  # weight of a candidate whose text says another option than the broker's answer
EVIDENCE_MISMATCH = 0.15  # the same for an answer read from the description (words can mislead: softer)
NEUTRAL = 0.5  # weight of a candidate whose text says nothing on the criterion, for a specific answer
POOL = 30  # candidates per level the guidance keeps from the model (questions look beyond the shown top 5)
# Tempering of within-heading splits: T=4 where a criterion of the texts separates the subheadings (material,
# knitted, gender…: what descriptions rarely state and the model cannot see), T=2 elsewhere. On the UK parcels'
# validation split: HS6 ECE 0.090 untempered, 0.050 with T=2 everywhere, 0.057 with 4 / 2; 4 / 2 is kept because
# T=2 still left "Wrangler Men Motor Rider Red T-Shirts" at 83 % on a material nobody stated.
SPLIT_TEMPERATURE = 4.0
OTHER_SPLIT_TEMPERATURE = 2.0
CONFIDENT = 0.9  # no question when the top subheading holds this much and the evidence agrees
MIN_GAIN = 0.3  # bits: a question expected to tell less is not worth a click (chosen on UK validation: 1.4 a item)
MAX_QUESTIONS = 2

# Negated or qualifying spans removed before a positive option is matched: "of textile materials (other than
# cotton)" does not say cotton; "whether or not plated with precious metal" does not say precious metal.
_NEGATED = re.compile(
    r"\((?:other than|excluding|not including)[^)]*\)|(?:other than|excluding|whether or not)[^;,()]*", re.IGNORECASE
)


@dataclass(frozen=True)
class Option:
    key: str
    label: str
    pattern: re.Pattern[str]

    def said_by(self, text: str) -> bool:
        return bool(self.pattern.search(text))


@dataclass(frozen=True)
class Criterion:
    """One question the nomenclature asks of goods, with the options its texts use."""

    key: str
    question: str
    options: tuple[Option, ...]
    chapters: frozenset[str] | None = None  # where the criterion decides anything; None = everywhere
    exclusive: bool = True  # a code says at most one option (the first its text matches)
    broad: bool = False  # a code silent on it takes its chapter's, then its section's, words (the path)

    def option(self, key: str) -> Option:
        return next(o for o in self.options if o.key == key)

    def applies(self, code: str) -> bool:
        return self.chapters is None or code[:2] in self.chapters


def _opt(key: str, label: str, pattern: str) -> Option:
    return Option(key, label, re.compile(pattern, re.IGNORECASE))


def _chapters(*spans: tuple[int, int]) -> frozenset[str]:
    return frozenset(f"{c:02d}" for lo, hi in spans for c in range(lo, hi + 1))


CRITERIA: tuple[Criterion, ...] = (
    Criterion(
        "knitted",
        "Is the fabric knitted or crocheted?",
        (
            _opt("not_knitted", "Not knitted or crocheted (woven, etc.)", r"\bnot knitted or crocheted"),
            _opt("knitted", "Knitted or crocheted", r"(?<!not )\bknitted or crocheted"),
        ),
        _chapters((60, 63)),
    ),
    Criterion(
        "textile",
        "Which textile material predominates by weight?",
        (
            _opt("cotton", "Of cotton", r"\bcotton\b"),
            _opt("wool", "Of wool or fine animal hair", r"\bwool\b|fine animal hair|kashmir|cashmere"),
            _opt("synthetic", "Of synthetic or man-made fibres (polyester, nylon…)", r"synthetic|man-made"),
            _opt("artificial", "Of artificial fibres (viscose, rayon…)", r"\bartificial fibres"),
            _opt("silk", "Of silk", r"\bsilk\b"),
            _opt("flax", "Of flax (linen)", r"\bflax\b"),
            _opt("other_textile", "Of other textile materials", r"\bof (?:other )?textile materials\b"),
        ),
        _chapters((50, 63)),
    ),
    Criterion(
        "gender",
        "Who is it for?",
        (
            _opt("babies", "Babies", r"\bbabies'"),
            _opt("women", "Women or girls", r"\bwomen's|\bgirls'"),
            _opt("men", "Men or boys", r"\bmen's|\bboys'"),
        ),
        _chapters((61, 62)),
    ),
    Criterion(
        "metal",
        "What is the jewellery or article made of?",
        (
            _opt("clad", "Base metal clad with precious metal", r"clad with precious metal"),
            _opt("silver", "Silver (precious metal)", r"\bof silver\b"),
            _opt("precious", "Gold, platinum or other precious metal", r"\bof precious metal|\bgold\b|platinum"),
            _opt("base", "Base metal (steel, brass, zinc alloy…), plated or not", r"\bbase metal"),
            _opt("non_metal", "Not metal (plastics, glass, wood…)", r"imitation, of\s*(?:,|$)"),
        ),
        _chapters((71, 71)),
    ),
    Criterion(
        "uppers",
        "What are the uppers made of?",
        (
            _opt("leather", "Leather", r"uppers (?:of|consisting of) leather"),
            _opt("rubber_plastics", "Rubber or plastics", r"uppers of rubber or plastics"),
            _opt("textile_uppers", "Textile materials", r"uppers of textile"),
        ),
        _chapters((64, 64)),
    ),
    Criterion(
        "material",
        "What is it mainly made of?",
        (
            _opt("plastics", "Plastics", r"\bplastics?\b"),
            _opt("rubber", "Rubber", r"\brubber\b"),
            _opt("leather", "Leather", r"\bleather\b"),
            _opt("textile", "Textile materials", r"\btextile"),
            _opt("wood", "Wood", r"\bwood(?:en)?\b"),
            _opt("paper", "Paper or paperboard", r"\bpaper"),
            _opt("glass", "Glass", r"\bglass\b"),
            _opt("ceramic", "Ceramic or porcelain", r"ceramic|porcelain"),
            _opt("precious_metal", "Precious metal", r"precious metal"),
            _opt("hair", "Human or animal hair", r"\bhuman hair|\banimal hair|\bhair of"),
            _opt(
                "base_metal",
                "Base metal (iron, steel, aluminium, copper, zinc…)",
                r"base metal|\biron\b|\bsteel\b|\balumini?um\b|\bcopper\b|\bzinc\b|\bnickel\b|\btin\b",
            ),
        ),
        exclusive=False,
        broad=True,
    ),
    Criterion(
        "power",
        "How is it powered?",
        (
            _opt("non_electric", "Not electric (manual, mechanical)", r"non-electric|hand-operated|\bmanual"),
            _opt("engine", "Combustion engine", r"spark-ignition|compression-ignition|internal combustion"),
            _opt("pneumatic", "Pneumatic or hydraulic", r"pneumatic|hydraulic"),
            _opt("electric", "Electric (mains or battery)", r"(?<!non-)\belectric|\belectro-|\bbattery"),
        ),
    ),
)
# "Which of these is it?" over the candidates' own headings: its options are the headings that hold the most
# probability (4-digit codes, labelled with their official texts), so it has no fixed option list.
HEADING = Criterion("heading", "Which of these describes the goods?", ())
CRITERION = {c.key: c for c in (*CRITERIA, HEADING)}
HEADING_OPTIONS = 4  # at most this many headings offered


# ------------------------------------------------------------------------------------------------- codes


def said(criterion: Criterion, code: str) -> frozenset[str]:
    """The options of `criterion` that the code's official path says, read from the most specific text that
    speaks (HS 2022 subheading texts are self-contained: "T-shirts, singlets and other vests; of cotton, knitted or
    crocheted"); empty when the path is silent on it."""
    return _said(criterion.key, code)


@functools.lru_cache(maxsize=65536)
def _said(key: str, code: str) -> frozenset[str]:
    if key == HEADING.key:
        return frozenset({code[:4]}) if len(code) >= 4 else frozenset()
    criterion = CRITERION[key]
    if not criterion.applies(code):
        return frozenset()
    # the code's own text, else its heading's; for broad criteria then its chapter's and section's (the path)
    texts = [code, code[:4]] if len(code) == 6 else [code]
    if criterion.broad:
        texts += [code[:2], "section"]
    for source in dict.fromkeys(texts):
        if source == "section":
            text = get_nomenclature().section(code).name
        else:
            text = _NEGATED.sub(" ", HsCode(source).description)
        found = [o.key for o in criterion.options if o.said_by(text)]
        if found:
            return frozenset(found[:1] if criterion.exclusive else found)
    return frozenset()


def check_answer(key: str, value: str) -> None:
    """Refuse an answer that is not a question's option.

    Raises:
        ValueError: an unknown question or option (the message lists the valid ones).
    """
    if key not in CRITERION:
        raise ValueError(f"unknown question {key!r}; questions are: {', '.join(CRITERION)}")
    if key == HEADING.key:
        if not (value in (NONE, UNKNOWN) or (len(value) == 4 and value.isdigit())):
            raise ValueError(f"{key}={value!r} is not an option; give a 4-digit heading, {NONE} or {UNKNOWN}")
        return
    valid = [o.key for o in CRITERION[key].options] + [NONE, UNKNOWN]
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not an option; options: {', '.join(valid)}")


def broker_choice(criterion: Criterion, offered: Sequence[str], code: str) -> str:
    """The simulated broker: the first offered option whose words the code's official text holds, else "none"."""
    found = said(criterion, code)
    return next((key for key in offered if key in found), NONE)


def likelihood(
    criterion: Criterion,
    code: str,
    answer: str,
    mismatch: float = MISMATCH,
    neutral: float = NEUTRAL,
    offered: frozenset[str] | None = None,
) -> float:
    """How much an answer keeps a code: 1 if its text says the answer, `mismatch` if it says only other options,
    `neutral` if it is silent; for "none of these", `mismatch` if it says one of the `offered` options (any option
    when None), else 1; "don't know" keeps everything."""
    if answer == UNKNOWN:
        return 1.0
    found = said(criterion, code)
    if answer == NONE:
        return mismatch if (found & offered if offered is not None else found) else 1.0
    if not found:
        return neutral
    return 1.0 if found & set(answer.split("|")) else mismatch  # evidence may allow several: "plastics|rubber"


# ------------------------------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Evidence:
    """Words of the input that answer a criterion ("PU leather" -> material: plastics, not leather)."""

    criterion: str
    option: str
    words: str  # as found in the input
    source: str  # "description" or "attributes"

    @property
    def label(self) -> str:
        return " or ".join(CRITERION[self.criterion].option(o).label for o in self.option.split("|"))

    def to_dict(self) -> dict[str, str]:
        return {
            "criterion": self.criterion,
            "option": self.option,
            "label": self.label,
            "words": self.words,
            "source": self.source,
        }


# Most specific first: a phrase found is blanked out so "PU leather" never also reads as "leather".
_EVIDENCE_RULES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        r"\b(?:pu|pvc|faux|fake|vegan|synthetic|artificial|imitation|eco|polyurethane) ?-?leather\b|\bleatherette\b",
        (("material", "plastics"), ("uppers", "rubber_plastics")),
    ),
    (
        r"\b(?:genuine|real|full[- ]grain|top[- ]grain|cow|calf|sheep|goat|pig)(?:skin)? ?leather\b|\bcowhide\b",
        (("material", "leather"), ("uppers", "leather")),
    ),
    (r"\bleather\b", (("material", "leather"), ("uppers", "leather"))),
    (
        r"\bgold[- ]?(?:colou?r|tone|toned|plated|plating|filled)\b|\bsilver[- ]?(?:colou?r|tone|toned|plated|plating)\b"
        r"|\b(?:gold|silver|rhodium)[- ]plated\b|\bplated\b",
        (("metal", "base"),),
    ),
    (r"\bprecious metal\b", (("metal", "precious"), ("material", "precious_metal"))),
    (r"\b(?:925|sterling)(?: silver)?\b|\bs925\b", (("metal", "silver"), ("material", "precious_metal"))),
    (
        r"\b(?:9|10|14|18|22|24) ?(?:k|kt|karat|carat)\b(?: (?:solid )?gold)?|\bsolid gold\b|\bplatinum\b",
        (("metal", "precious"), ("material", "precious_metal")),
    ),
    (r"\bstainless steel\b|\bsteel\b|\biron\b", (("material", "base_metal"), ("metal", "base"))),
    (
        r"\b(?:zinc|alloy|brass|titanium|tungsten|copper|bronze|pewter|tin|alumini?um|metal)\b",
        (("material", "base_metal"), ("metal", "base")),
    ),
    (r"\bsilicone\b", (("material", "plastics|rubber"), ("uppers", "rubber_plastics"))),  # 39 or 40: the form decides
    (r"\brubber\b|\blatex\b|\bneoprene\b", (("material", "rubber"), ("uppers", "rubber_plastics"))),
    (
        r"\bplastics?\b|\bpvc\b|\babs\b|\bpolypropylene\b|\bpolyethylene\b|\bpp\b|\bpe\b|\bresin\b|\bacrylic sheet\b"
        r"|\beva\b|\bpolycarbonate\b|\bnylon plastic\b",
        (("material", "plastics"), ("uppers", "rubber_plastics"), ("metal", "non_metal")),
    ),
    (r"\bwood(?:en)?\b|\bbamboo\b|\bplywood\b", (("material", "wood"),)),
    (r"\bglass\b|\bcrystal\b", (("material", "glass"),)),
    (r"\bceramic\b|\bporcelain\b|\bstoneware\b", (("material", "ceramic"),)),
    (r"\bpaper\b|\bcardboard\b|\bpaperboard\b", (("material", "paper"),)),
    (r"\b(?:knit|knitted|knitwear|jersey|crochet|crocheted)\b", (("knitted", "knitted"),)),
    (r"\b(?:woven|denim|poplin|chiffon|twill|oxford cloth)\b", (("knitted", "not_knitted"),)),
    (r"\b(?:babies|baby|infant|infants|newborn|toddler)\b", (("gender", "babies"),)),
    (r"\b(?:women|women's|womens|woman|ladies|lady|girls|girl's|girl|female)\b", (("gender", "women"),)),
    (r"\b(?:men|men's|mens|man|boys|boy's|boy|male|gents)\b", (("gender", "men"),)),
    (
        r"\b(?:electric|electrical|battery|batteries|rechargeable|usb|cordless|mains|powered|plug-in|motorised|motorized)\b",
        (("power", "electric"),),
    ),
    (r"\b(?:manual|hand-operated|hand operated|non-electric)\b", (("power", "non_electric"),)),
)
_EVIDENCE = tuple((re.compile(p, re.IGNORECASE), pairs) for p, pairs in _EVIDENCE_RULES)

_FIBRES = {
    "cotton": "cotton",
    "wool": "wool",
    "merino": "wool",
    "cashmere": "wool",
    "mohair": "wool",
    "polyester": "synthetic",
    "nylon": "synthetic",
    "polyamide": "synthetic",
    "acrylic": "synthetic",
    "spandex": "synthetic",
    "elastane": "synthetic",
    "lycra": "synthetic",
    "polypropylene": "synthetic",
    "microfiber": "synthetic",
    "microfibre": "synthetic",
    "viscose": "artificial",
    "rayon": "artificial",
    "modal": "artificial",
    "lyocell": "artificial",
    "tencel": "artificial",
    "silk": "silk",
    "linen": "flax",
    "flax": "flax",
}
_FIBRE = re.compile(
    r"(?:(\d{1,3}(?:\.\d+)?)\s*%\s*)?\b(" + "|".join(_FIBRES) + r")\b(?:\s*(\d{1,3}(?:\.\d+)?)\s*%)?", re.I
)


def _fibre_evidence(text: str, source: str) -> list[Evidence]:
    """The textile material that predominates: by the stated percentages, else the only fibre named."""
    shares: dict[str, float] = {}
    words: dict[str, str] = {}
    for m in _FIBRE.finditer(text):
        option = _FIBRES[m.group(2).lower()]
        share = float(m.group(1) or m.group(3) or 0)
        shares[option] = shares.get(option, 0.0) + share
        words.setdefault(option, m.group(0).strip())
    if not shares:
        return []
    if len(shares) > 1 and max(shares.values()) == 0:
        return []  # several fibres, no percentages: which predominates is not stated
    best = max(shares, key=shares.__getitem__)
    return [Evidence("textile", best, words[best], source), Evidence("material", "textile", words[best], source)]


_MATERIAL_KEY = re.compile(r"material|fabric|metal|composition|upper|power", re.IGNORECASE)


def read_evidence(text: str | None, attributes: Mapping[str, object] | None = None) -> list[Evidence]:
    """Material, construction, gender and power words of the input, mapped to the nomenclature's options.

    Args:
        text: the product description.
        attributes: product attributes (e.g. HSCodeComp's {"Material": "Stainless Steel"}); material-like keys
            are read as the description is and win over it.

    Returns:
        At most one piece of evidence per criterion; a criterion on which the input says two different things
        (e.g. "cotton and polyester", no percentages) gets none.
    """
    found: dict[str, list[Evidence]] = {}
    sources: list[tuple[str, str]] = []
    for key, value in (attributes or {}).items():
        if isinstance(value, str) and _MATERIAL_KEY.search(str(key)):
            sources.append((value, "attributes"))
    sources.append((text or "", "description"))
    for chunk, source in sources:
        local: dict[str, list[Evidence]] = {}
        for ev in _fibre_evidence(chunk, source):
            local.setdefault(ev.criterion, []).append(ev)
        rest = chunk
        for pattern, pairs in _EVIDENCE:
            for m in pattern.finditer(rest):
                for criterion, option in pairs:
                    local.setdefault(criterion, []).append(Evidence(criterion, option, m.group(0), source))
            rest = pattern.sub(" ", rest)
        for criterion, items in local.items():
            found.setdefault(criterion, items)  # attributes come first and win over the description
    out = []
    for criterion, items in found.items():
        options = {ev.option for ev in items}
        if len(options) == 1:
            out.append(items[0])
        elif criterion == "material" and "textile" in options and len(options) == 2:
            out.append(next(ev for ev in items if ev.option != "textile"))  # "cotton bag with PU leather trim"
    return out


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


def _heading_question(codes: Sequence[str], probs: Sequence[float]) -> Question | None:
    """ "Which of these is it?" over the candidates' headings holding at least 5 % each (two at least)."""
    mass: dict[str, float] = {}
    for code, p in zip(codes, probs, strict=True):
        mass[code[:4]] = mass.get(code[:4], 0.0) + p
    total = sum(probs)
    offered = [h for h, m in sorted(mass.items(), key=lambda kv: -kv[1]) if m >= 0.05 * total][:HEADING_OPTIONS]
    if len(offered) < 2:
        return None
    gain = expected_gain(HEADING, offered, codes, probs)
    options = tuple((h, f"{h} {_short(HsCode(h).description)}") for h in offered)
    options += ((NONE, "None of these"), (UNKNOWN, "Don't know"))
    return Question(HEADING.key, HEADING.question, options, gain)


def _with_follow_ups(
    question: Question, codes: Sequence[str], probs: Sequence[float], evidence: Sequence[Evidence], min_gain: float
) -> Question:
    """For each heading offered, the question that best splits that heading's own candidates (a question tree,
    drawn up before any answer)."""
    follow = []
    for heading in question.offered:
        inside = [(c, p) for c, p in zip(codes, probs, strict=True) if c[:4] == heading]
        if len(inside) < 2:
            continue
        pool = [_Scored(c, p) for c, p in inside]
        found = [q for q in make_questions(pool, evidence, 1, min_gain, heading_question=False) if q.evidence is None]
        if found:
            follow.append((heading, found[0]))
    return dataclasses.replace(question, follow_ups=tuple(follow))


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
) -> list[Question]:
    """The questions that split the candidates' probability best, from their texts alone (before any answer).

    Args:
        pool: subheading candidates with their probabilities (best first).
        evidence: what the input already states; a question it answers is kept, marked with that answer.
        max_questions: how many questions to ask the broker (evidence-answered ones do not count).
        min_gain: questions expected to tell less than this many bits are dropped.
        heading_question: also consider "which of these headings is it?".

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
    heading = _heading_question(codes, probs) if heading_question else None
    if heading is not None and heading.gain >= min_gain:
        ranked.append(heading)
    ranked.sort(key=lambda q: -q.gain)
    asked = [q for q in ranked if q.evidence is None][:max_questions]
    if asked and asked[0].key == HEADING.key and max_questions > 1:
        asked[0] = _with_follow_ups(asked[0], codes, probs, evidence, min_gain)
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
    return {lv: {c: v / z for c, v in new.items()} for lv, new in ((6, new_sub), (4, new_head), (2, new_chap))}


def reweight_levels(
    pool: Mapping[int, Sequence[Candidate]],
    answers: Mapping[str, EffectiveAnswer],
    temperature: float | None = SPLIT_TEMPERATURE,
    keep: int | None = None,
) -> dict[int, list[Candidate]]:
    """`reweighted_scores` as candidate lists per level, best first (the pool's objects with their new `score`,
    via `dataclasses.replace`), cut to `keep` when given."""
    scores = reweighted_scores(pool, answers, temperature)
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

    Returns:
        The prediction with re-ranked levels cut to `top_k` and its `guidance` filled in.
    """
    pool = {lv: tuple(cs) for lv, cs in prediction.levels.items()}
    evidence = tuple(read_evidence(text, attributes))
    base = Guidance(pool=pool, evidence=evidence, top_k=top_k)
    before = reweighted_scores(pool, base.effective_answers(), temperature)[6]
    ranked = sorted(before.items(), key=lambda kv: -kv[1])
    questions = tuple(make_questions([_Scored(c, p) for c, p in ranked], evidence, heading_question=heading_question))
    guidance = dataclasses.replace(base, questions=questions)
    return apply_answers(dataclasses.replace(prediction, guidance=guidance), answers or {}, temperature)


def apply_answers(
    prediction: Prediction, answers: Mapping[str, str], temperature: float | None = SPLIT_TEMPERATURE
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
    levels = reweight_levels(guidance.pool, guidance.effective_answers(), temperature, keep=guidance.top_k)
    return dataclasses.replace(
        prediction,
        levels=levels,
        needs_review=levels[4][0].score < prediction.review_threshold,
        guidance=guidance,
    )
