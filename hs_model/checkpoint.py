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

WEIGHTS = "weights.safetensors"
CARD = "card.json"


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


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], card: ModelCard) -> ModelCard:
    """Write weights then card atomically (a crash leaves either the old folder contents or the new ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(dir=folder, suffix=".tmp")[1])
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    card.weights_sha256 = sha256_file(tmp)
    os.replace(tmp, folder / WEIGHTS)
    tmp_card = folder / (CARD + ".tmp")
    tmp_card.write_text(card.to_json())
    os.replace(tmp_card, folder / CARD)
    return card


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
    for want in (card.weights_sha256, expected_sha256):
        if want and want != digest:
            raise CheckpointError(
                f"The weights of model {card.version} do not match their recorded hash "
                f"(expected {want[:12]}…, found {digest[:12]}…): the file was changed; refusing to load it."
            )
    return card, load_file(str(weights))
