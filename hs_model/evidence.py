"""Evidence read from the input: material and construction words of a description (and product attributes such as
a "Material" field), mapped to the nomenclature's own options ("stainless steel" -> base metal, "PU leather" ->
plastics, not leather). Evidence answers a criterion's question where it can; the broker can override it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hs_model.criteria import CRITERION

if TYPE_CHECKING:
    pass


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
