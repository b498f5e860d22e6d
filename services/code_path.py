"""One consistent answer across the levels: the best subheading inside the best heading inside the best chapter.

The model's heading and chapter probabilities are sums over their subheadings, so the single most likely
subheading can sit outside the most likely heading or chapter (e.g. subheading 9617.00 alone beats every
subheading of heading 8476, yet chapter 84 as a whole is more likely than chapter 96). Showing the three
"best" codes side by side then contradicts itself; this walks down from the chapter instead and says why when
the levels disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.decisions import format_code


class Ranked(Protocol):
    code: str
    score: float


@dataclass(frozen=True)
class CodePath:
    """The path shown to the broker, and why it is not simply each level's best code (``None``: it is)."""

    chapter: Ranked
    heading: Ranked | None  # None: no heading of the best chapter among the ranked headings
    subheading: Ranked | None  # None: no subheading of that heading among the ranked subheadings
    disagreement: str | None

    @property
    def complete(self) -> bool:
        return self.heading is not None and self.subheading is not None


def _pct(score: float) -> str:
    return "<1%" if score < 0.005 else f"{score:.0%}"


def consistent_path(levels: Mapping[int, Sequence[Ranked]]) -> CodePath:
    """Walk down from the best chapter through its best heading to that heading's best subheading.

    Args:
        levels: Ranked candidates per level (6, 4, 2), best first, as a prediction holds them.

    Returns:
        The path and, when it differs from the levels' own best codes, a plain-words reason.
    """
    chapter = levels[2][0]
    heading = next((h for h in levels[4] if h.code[:2] == chapter.code), None)
    sub = next((s for s in levels[6] if heading is not None and s.code[:4] == heading.code), None)
    best_sub = levels[6][0]
    if heading is None or sub is None:
        missing = "heading" if heading is None else f"subheading of heading {format_code(heading.code)}"
        return CodePath(
            chapter,
            heading,
            sub,
            f"The levels disagree: chapter {chapter.code} is the most likely chapter ({_pct(chapter.score)}), but no "
            f"{missing} is among the model's best candidates; the most likely subheading, "
            f"{format_code(best_sub.code)} ({_pct(best_sub.score)}), is in chapter {best_sub.code[:2]}. The "
            "probability is spread thin: check the product against the official texts before choosing.",
        )
    if sub.code == best_sub.code:
        return CodePath(chapter, heading, sub, None)
    where = (
        f"heading {format_code(best_sub.code[:4])}"
        if best_sub.code[:2] == chapter.code
        else f"chapter {best_sub.code[:2]}"
    )
    spread = "chapter" if best_sub.code[:2] != chapter.code else "heading"
    return CodePath(
        chapter,
        heading,
        sub,
        f"The levels disagree: the single most likely subheading, {format_code(best_sub.code)} "
        f"({_pct(best_sub.score)}), is in {where}, but more of the probability lies in {spread} "
        f"{chapter.code if spread == 'chapter' else format_code(heading.code)}, spread over several subheadings. "
        f"The path shown is the best subheading inside the best heading inside the best chapter: "
        f"{format_code(sub.code)} ({_pct(sub.score)}) in heading {format_code(heading.code)} "
        f"({_pct(heading.score)}) in chapter {chapter.code} ({_pct(chapter.score)}).",
    )
