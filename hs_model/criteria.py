"""The criteria that separate HS candidates, read from their own official texts (no torch, no database).

A *criterion* (textile material, knitted or not, gender, precious or base metal, footwear uppers, main material,
power source) is a question with options; an option is a pattern over a code's official text. A candidate "says"
an option when its text matches it ("Shirts; men's or boys', of cotton (not knitted or crocheted)" says cotton, men's,
not knitted); a text silent on a criterion is neutral. Used by `hs_model.evidence` (what a description states) and
`hs_model.questions` (what to ask, and the reweighting under the answers).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hs_core.nomenclature import HsCode, get_nomenclature

if TYPE_CHECKING:
    pass

NONE = "none"  # "none of these"
UNKNOWN = "unknown"  # "don't know": leaves the candidates as they are
MISMATCH = 0.02  # weight of a candidate whose text says another option than the broker's answer
EVIDENCE_MISMATCH = 0.15  # the same for an answer read from the description (words can mislead: softer)
NEUTRAL = 0.5  # weight of a candidate whose text says nothing on the criterion, for a specific answer

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
# Asked after "none of these" to the heading question (drawn up with it, before any answer): the next headings of
# the model's ranking.
MORE_HEADINGS = Criterion("heading_more", "None of those; which of these then?", ())
HEADING_KEYS = frozenset({HEADING.key, MORE_HEADINGS.key})
# Asked after a heading is chosen when no criterion of the texts splits its candidates: its subheadings themselves.
SUBHEADING = Criterion("subheading", "Which of these subheadings is it?", ())
CRITERION = {c.key: c for c in (*CRITERIA, HEADING, MORE_HEADINGS, SUBHEADING)}
HEADING_OPTIONS = 5  # at most this many headings offered by one question


# ------------------------------------------------------------------------------------------------- codes


def said(criterion: Criterion, code: str) -> frozenset[str]:
    """The options of `criterion` that the code's official path says, read from the most specific text that
    speaks (HS 2022 subheading texts are self-contained: "T-shirts, singlets and other vests; of cotton, knitted or
    crocheted"); empty when the path is silent on it."""
    return _said(criterion.key, code)


@functools.lru_cache(maxsize=65536)
def _said(key: str, code: str) -> frozenset[str]:
    if key in HEADING_KEYS:
        return frozenset({code[:4]}) if len(code) >= 4 else frozenset()
    if key == SUBHEADING.key:
        return frozenset({code}) if len(code) == 6 else frozenset()
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
    if key in HEADING_KEYS:
        if not (value in (NONE, UNKNOWN) or (len(value) == 4 and value.isdigit())):
            raise ValueError(f"{key}={value!r} is not an option; give a 4-digit heading, {NONE} or {UNKNOWN}")
        return
    if key == SUBHEADING.key:
        if not (value in (NONE, UNKNOWN) or (len(value) == 6 and value.isdigit())):
            raise ValueError(f"{key}={value!r} is not an option; give a 6-digit subheading, {NONE} or {UNKNOWN}")
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
