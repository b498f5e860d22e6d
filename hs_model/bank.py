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
    from hs_core.nomenclature import HsCode, get_nomenclature

    nom = get_nomenclature()

    def texts(codes: tuple[str, ...]) -> list[str]:
        return [clean_legal_text(nom.description(HsCode.parse(c))) for c in codes]

    return texts(space.subheadings), texts(space.headings), texts(space.chapters)


def clean_legal_text(text: str) -> str:
    """Normalise whitespace and trailing punctuation only; the legal words themselves all matter."""
    return re.sub(r"\s+", " ", text).strip().rstrip(";:,")


# How ImageNet class names become texts for the photo->text bridge. "a photo of {}" (used by the first trained
# model) pulled photos towards chapter 37 (photographic film); new models use the bare name.
DEFAULT_BRIDGE_PROMPT = "{}"
LEGACY_BRIDGE_PROMPT = "a photo of {}"


def class_name_texts(prompt: str = DEFAULT_BRIDGE_PROMPT) -> list[str]:
    """ImageNet class names (first synonym) as short phrases for the photo->text bridge."""
    return [prompt.format(names.split(",")[0].strip()) for names in imagenet_class_names()]


def _cached(tower: TextTower, texts: list[str], tag: str, use_cache: bool) -> torch.Tensor:
    key = hashlib.sha256("\n".join([tower.name, str(tower.max_length), *texts]).encode()).hexdigest()[:12]
    path = cache_dir() / f"{tag}-{_slug(tower.name)}-{key}.safetensors"
    if use_cache and path.is_file():
        return load_file(str(path))["emb"]
    log.info("embedding %d %s texts with %s (cached at %s)", len(texts), tag, tower.name, path)
    emb = tower.encode_text(texts)
    if use_cache:
        tmp = path.with_suffix(".tmp")
        save_file({"emb": emb}, str(tmp))
        tmp.replace(path)
    return emb


def class_name_embeddings(
    tower: TextTower, prompt: str = DEFAULT_BRIDGE_PROMPT, use_cache: bool = True
) -> torch.Tensor:
    """[1000, E] text-tower vectors of the ImageNet class names under `prompt`."""
    return _cached(tower, class_name_texts(prompt), "names", use_cache)


def build_official_bank(
    tower: TextTower,
    space: LabelSpace,
    edition: str,
    use_cache: bool = True,
    bridge_prompt: str = DEFAULT_BRIDGE_PROMPT,
) -> LabelBank:
    """One prototype per subheading from its own official text, plus heading, chapter and class-name texts."""
    subs, heads, chaps = official_label_texts(space)
    tag = f"official-{edition}"
    return LabelBank(
        text_emb=_cached(tower, subs, f"{tag}-sub", use_cache),
        text_code=torch.arange(len(space.subheadings)),
        heading_emb=_cached(tower, heads, f"{tag}-head", use_cache),
        chapter_emb=_cached(tower, chaps, f"{tag}-chap", use_cache),
        class_name_emb=class_name_embeddings(tower, bridge_prompt, use_cache),
    )


def with_extra_prototypes(
    bank: LabelBank, extra_emb: torch.Tensor, extra_code: torch.Tensor, class_name_emb: torch.Tensor | None = None
) -> LabelBank:
    """Add further prototypes (e.g. from tariff lines and common names, shipped in a checkpoint)."""
    return LabelBank(
        text_emb=torch.cat([bank.text_emb, extra_emb.float()]),
        text_code=torch.cat([bank.text_code, extra_code.long()]),
        heading_emb=bank.heading_emb,
        chapter_emb=bank.chapter_emb,
        class_name_emb=bank.class_name_emb if class_name_emb is None else class_name_emb,
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(name).name)[:40]
