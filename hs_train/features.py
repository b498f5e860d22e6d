"""Frozen tower outputs cached on disk, so training and evaluation sweeps never re-run the towers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from hs_model.config import cache_dir
from hs_model.images import ImageError, load_image
from hs_model.towers import ImageTower, TextTower

log = logging.getLogger(__name__)


def _key(parts: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def cached_text_embeddings(tower: TextTower, texts: Sequence[str], tag: str) -> torch.Tensor:
    """[N, E] unit vectors for `texts` (empty strings give zero rows), cached by tower + content."""
    path = cache_dir() / f"text-{tag}-{_key([tower.name, str(tower.max_length), *texts])}.safetensors"
    if path.is_file():
        return load_file(str(path))["emb"]
    out = torch.zeros(len(texts), tower.dim)
    idx = [i for i, t in enumerate(texts) if t.strip()]
    for start in tqdm(range(0, len(idx), 2048), desc=f"text {tag}", disable=len(idx) < 4096):
        chunk = idx[start : start + 2048]
        out[chunk] = tower.encode_text([texts[i] for i in chunk], batch_size=128)
    save_file({"emb": out}, str(path))
    return out


def cached_image_features(tower: ImageTower, paths: Sequence[Path], tag: str) -> dict[str, torch.Tensor]:
    """Pooled features [N, C], ImageNet probabilities [N, 1000] and an `ok` mask [N] for image files."""
    key = _key([tower.name, *(f"{p.resolve()}:{p.stat().st_size if p.exists() else -1}" for p in paths)])
    path = cache_dir() / f"image-{tag}-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))
    pooled, probs = torch.zeros(len(paths), tower.dim), torch.zeros(len(paths), 1000)
    ok = torch.zeros(len(paths), dtype=torch.bool)
    batch: list[int] = []
    images: list[Image.Image] = []

    def flush() -> None:
        if batch:
            f = tower.encode_image(images, batch_size=len(images))
            pooled[batch], probs[batch], ok[batch] = f.pooled, f.probs, True
            batch.clear()
            images.clear()

    for i, p in enumerate(tqdm(paths, desc=f"images {tag}", disable=len(paths) < 256)):
        try:
            images.append(load_image(p, p.name))
            batch.append(i)
        except (ImageError, OSError) as exc:
            log.warning("skipping %s: %s", p, exc)
        if len(batch) >= 8:
            flush()
    flush()
    out = {"pooled": pooled, "probs": probs, "ok": ok}
    save_file(out, str(path))
    return out


def myntra_image_features(tower: ImageTower, data_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Features of every Myntra photo (one cache for all splits) and the row of each product id."""
    paths = sorted((data_dir / "products" / "images").glob("*.jpg"), key=lambda p: int(p.stem))
    return cached_image_features(tower, paths, "myntra"), {p.stem: i for i, p in enumerate(paths)}
