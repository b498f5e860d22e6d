"""Label texts through the text tower, cached on disk by tower and nomenclature edition."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hs_model.config import cache_dir
from hs_model.model import LabelBank, LabelSpace
from hs_model.towers import TextTower, imagenet_class_names

log = logging.getLogger(__name__)


def official_label_texts(space: LabelSpace) -> tuple[list[str], list[str], list[str]]:
    """Official descriptions of every subheading, heading and chapter, in the space's order."""
    from hs_model.nomenclature import HsCode, get_nomenclature

    nom = get_nomenclature()

    def texts(codes: tuple[str, ...]) -> list[str]:
        return [clean_legal_text(nom.description(HsCode.parse(c))) for c in codes]

    return texts(space.subheadings), texts(space.headings), texts(space.chapters)


def clean_legal_text(text: str) -> str:
    """Normalise whitespace and trailing punctuation only; the legal words themselves all matter."""
    return re.sub(r"\s+", " ", text).strip().rstrip(";:,")


def class_name_texts() -> list[str]:
    """ImageNet class names as short phrases for the photo->text bridge ("a photo of a running shoe")."""
    return [f"a photo of {names.split(',')[0].strip()}" for names in imagenet_class_names()]


def build_official_bank(tower: TextTower, space: LabelSpace, edition: str, use_cache: bool = True) -> LabelBank:
    """One prototype per subheading from its own official text, plus heading, chapter and class-name texts."""
    subs, heads, chaps = official_label_texts(space)
    names = class_name_texts()
    key = hashlib.sha256(
        "\n".join([tower.name, edition, str(tower.max_length), *subs, *heads, *chaps, *names]).encode()
    )
    path = cache_dir() / f"bank-{_slug(tower.name)}-{edition}-{key.hexdigest()[:12]}.safetensors"
    if use_cache and path.is_file():
        t = load_file(str(path))
    else:
        log.info(
            "embedding %d label texts with %s (cached at %s)", len(subs) + len(heads) + len(chaps), tower.name, path
        )
        t = {
            "sub": tower.encode_text(subs),
            "head": tower.encode_text(heads),
            "chap": tower.encode_text(chaps),
            "names": tower.encode_text(names),
        }
        if use_cache:
            tmp = path.with_suffix(".tmp")
            save_file(t, str(tmp))
            tmp.replace(path)
    return LabelBank(
        text_emb=t["sub"],
        text_code=torch.arange(len(space.subheadings)),
        heading_emb=t["head"],
        chapter_emb=t["chap"],
        class_name_emb=t["names"],
    )


def with_extra_prototypes(bank: LabelBank, extra_emb: torch.Tensor, extra_code: torch.Tensor) -> LabelBank:
    """Add further prototypes (e.g. from tariff lines and common names, shipped in a checkpoint)."""
    return LabelBank(
        text_emb=torch.cat([bank.text_emb, extra_emb.float()]),
        text_code=torch.cat([bank.text_code, extra_code.long()]),
        heading_emb=bank.heading_emb,
        chapter_emb=bank.chapter_emb,
        class_name_emb=bank.class_name_emb,
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(name).name)[:40]
