"""Label texts through the text tower, cached on disk by tower and nomenclature edition."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hs_core.settings import ASSETS_DIR
from hs_model.config import cache_dir
from hs_model.model import LabelBank, LabelSpace
from hs_model.towers import TextTower, imagenet_class_names

log = logging.getLogger(__name__)

# The official bank of the default text tower, shipped so that a fresh install's first start embeds nothing
# (`python -m hs_model ship-label-bank` writes it; the file names carry the texts' hash, so an edited text or
# another tower falls back to the cache and to embedding).
SHIPPED_DIR = ASSETS_DIR / "label_bank"


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


def _file_name(tower: TextTower, texts: list[str], tag: str) -> str:
    """Named by tag, tower and a hash of the tower, its input length and every text: a stale file is never read."""
    key = hashlib.sha256("\n".join([tower.name, str(tower.max_length), *texts]).encode()).hexdigest()[:12]
    return f"{tag}-{_slug(tower.name)}-{key}.safetensors"


def _cached(tower: TextTower, texts: list[str], tag: str, use_cache: bool) -> torch.Tensor:
    """The texts' vectors: shipped with the app (`SHIPPED_DIR`, float16), else the local cache, else embedded now
    (about 8,000 texts for the official bank: half a minute on a quiet 2-core CPU, minutes under load)."""
    name = _file_name(tower, texts, tag)
    shipped = SHIPPED_DIR / name
    if use_cache and shipped.is_file():
        return load_file(str(shipped))["emb"].float()
    path = cache_dir() / name
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
    sub, head, chap, names = (
        _cached(tower, texts, tag, use_cache) for texts, tag in _bank_parts(space, edition, bridge_prompt)
    )
    return LabelBank(
        text_emb=sub,
        text_code=torch.arange(len(space.subheadings)),
        heading_emb=head,
        chapter_emb=chap,
        class_name_emb=names,
    )


def _bank_parts(space: LabelSpace, edition: str, bridge_prompt: str) -> list[tuple[list[str], str]]:
    """The official bank's four parts as (texts, tag): subheadings, headings, chapters, ImageNet class names."""
    subs, heads, chaps = official_label_texts(space)
    tag = f"official-{edition}"
    return [
        (subs, f"{tag}-sub"),
        (heads, f"{tag}-head"),
        (chaps, f"{tag}-chap"),
        (class_name_texts(bridge_prompt), "names"),
    ]


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


def ship_official_bank(tower: TextTower, space: LabelSpace, edition: str, folder: Path = SHIPPED_DIR) -> list[Path]:
    """Write the official bank and the class-name vectors of `tower` to `folder` as float16 (about 6 MB), under
    the names `_cached` looks for; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for texts, part in _bank_parts(space, edition, DEFAULT_BRIDGE_PROMPT):
        path = folder / _file_name(tower, texts, part)
        emb = _cached(tower, texts, part, use_cache=True)
        save_file({"emb": emb.half().contiguous()}, str(path))
        written.append(path)
    return written
