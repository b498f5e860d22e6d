"""Checkpoints: the trained parts only, as safetensors, plus a JSON card. Never pickle."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hs_core.files import atomic_write_text, fsync_file

WEIGHTS = "weights.safetensors"
CARD = "card.json"
# the precedent index shipped beside a model's weights (hs_model.precedents): vectors + its own card
PRECEDENTS_INDEX = "precedents.safetensors"
PRECEDENTS_CARD = "precedents.json"
# the photo precedents (hs_model.photo_precedents): catalogue photos' pooled image-tower vectors + their card
PHOTO_PRECEDENTS_INDEX = "photo_precedents.safetensors"
PHOTO_PRECEDENTS_CARD = "photo_precedents.json"


class CheckpointError(RuntimeError):
    """A model folder that cannot be used (missing, tampered, made for other towers)."""


@dataclass
class ModelCard:
    """What a checkpoint is: enough for an auditor to know which model made a prediction."""

    version: str
    nomenclature_edition: str
    text_tower: str
    image_tower: str
    created: str
    kind: str = "trained"  # "zero-shot" | "trained" | "fine-tuned"
    parent: str | None = None
    weights_sha256: str | None = None
    review_threshold: float = 0.5
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        raw = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


NEXT_CARD = CARD + ".next"  # journal: the card that belongs to weights being committed


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], card: ModelCard) -> ModelCard:
    """Write weights and card so that a crash at any moment leaves a loadable folder.

    Order: weights to a temp file; the new card to `card.json.next` (the journal); weights renamed into
    place; card renamed into place. A crash before the weights rename leaves the old pair; a crash between
    the two renames leaves new weights whose card waits in the journal, which `load_checkpoint` commits.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    fsync_file(tmp)
    card.weights_sha256 = sha256_file(tmp)
    atomic_write_text(folder / NEXT_CARD, card.to_json())
    os.replace(tmp, folder / WEIGHTS)
    os.replace(folder / NEXT_CARD, folder / CARD)
    return card


def _recover(folder: Path, digest: str) -> ModelCard | None:
    """Finish a save that crashed between its two renames: the journal card matches the weights now in place."""
    journal = folder / NEXT_CARD
    if not journal.is_file():
        return None
    try:
        pending = ModelCard.from_json(journal.read_text())
    except (ValueError, TypeError):
        return None
    if pending.weights_sha256 != digest:
        return None
    os.replace(journal, folder / CARD)
    return pending


def read_card(folder: Path) -> ModelCard:
    path = folder / CARD
    if not path.is_file():
        raise CheckpointError(f"No model card at {path}.")
    try:
        return ModelCard.from_json(path.read_text())
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"The model card {path} is not valid: {exc}") from None


def load_checkpoint(folder: Path, expected_sha256: str | None = None) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """Card and tensors; refuses a weights file whose hash differs from the card's (or the registry's)."""
    card = read_card(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        if card.kind == "zero-shot":
            return card, {}
        raise CheckpointError(f"The model {card.version} has no weights file at {weights}.")
    digest = sha256_file(weights)
    if card.weights_sha256 and card.weights_sha256 != digest:
        card = _recover(folder, digest) or card
    for want in (card.weights_sha256, expected_sha256):
        if want and want != digest:
            raise CheckpointError(
                f"The weights of model {card.version} do not match their recorded hash "
                f"(expected {want[:12]}…, found {digest[:12]}…): the file was changed; refusing to load it."
            )
    return card, load_file(str(weights))
