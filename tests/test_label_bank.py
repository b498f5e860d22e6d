"""The official label bank ships with the app (assets/label_bank), so a fresh install's first start embeds nothing;
a shipped file is read only for exactly the tower and texts it was made from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hs_model import bank


class CountingTower:
    """Stands in for the text tower: deterministic vectors, and a count of the texts it was asked to embed."""

    name = "tiny-tower"
    max_length = 16

    def __init__(self) -> None:
        self.embedded = 0

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        self.embedded += len(texts)
        g = torch.Generator().manual_seed(len(texts))
        return torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=g), dim=-1)


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    shipped, cache = tmp_path / "shipped", tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(bank, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(bank, "cache_dir", lambda: cache)
    return shipped, cache


def test_a_shipped_bank_is_read_and_nothing_is_embedded(dirs):
    shipped, cache = dirs
    texts = ["Live horses", "Pure-bred breeding animals", "Other"]
    maker = CountingTower()
    shipped.mkdir()
    reference = maker.encode_text(texts)
    save_file({"emb": reference.half()}, str(shipped / bank._file_name(maker, texts, "official-X-sub")))
    tower = CountingTower()
    emb = bank._cached(tower, texts, "official-X-sub", use_cache=True)
    assert tower.embedded == 0 and emb.dtype == torch.float32
    assert torch.allclose(emb, reference, atol=1e-3)
    assert not list(cache.iterdir())  # nothing written: the shipped file is the source


def test_a_shipped_file_for_other_texts_is_not_read(dirs):
    shipped, cache = dirs
    tower = CountingTower()
    shipped.mkdir()
    stale = ["Live horses", "Other"]
    save_file({"emb": torch.zeros(2, 8).half()}, str(shipped / bank._file_name(tower, stale, "official-X-sub")))
    texts = ["Live horses, asses, mules and hinnies", "Other"]  # an edited text: another hash, another file
    emb = bank._cached(tower, texts, "official-X-sub", use_cache=True)
    assert tower.embedded == 2 and emb.abs().sum() > 0
    assert len(list(cache.iterdir())) == 1  # embedded now and cached locally


def test_ship_official_bank_writes_what_the_loader_reads(dirs, monkeypatch):
    shipped, _ = dirs
    from hs_model.model import LabelSpace

    space = LabelSpace(subheadings=("010121", "010129"), headings=("0101",), chapters=("01",))
    monkeypatch.setattr(bank, "class_name_texts", lambda prompt=bank.DEFAULT_BRIDGE_PROMPT: ["tench", "goldfish"])
    maker = CountingTower()
    written = bank.ship_official_bank(maker, space, "HS2022", shipped)
    assert len(written) == 4 and all(p.parent == shipped for p in written)
    assert all(p.read_bytes() for p in written)
    tower = CountingTower()
    loaded = bank.build_official_bank(tower, space, "HS2022")
    assert tower.embedded == 0
    assert loaded.text_emb.shape == (2, 8) and loaded.heading_emb.shape == (1, 8)


def test_the_shipped_bank_matches_the_default_tower_and_nomenclature():
    """The files in assets/label_bank carry the names the app asks for today (else a first start embeds again):
    the default tower's name and input length, the HS 2022 texts and the bridge's class names."""
    from hs_core.nomenclature import EDITION, get_nomenclature
    from hs_model.config import TowerConfig
    from hs_model.model import LabelSpace

    config = TowerConfig()
    tower = CountingTower()
    tower.name, tower.max_length = config.text_model, config.text_max_length
    space = LabelSpace.from_codes([c.digits for c in get_nomenclature().subheadings])
    subs, heads, chaps = bank.official_label_texts(space)
    tag = f"official-{EDITION}"
    for texts, part, rows in ((subs, f"{tag}-sub", 5612), (heads, f"{tag}-head", 1228), (chaps, f"{tag}-chap", 96),
                              (bank.class_name_texts(), "names", 1000)):  # fmt: skip
        path = bank.SHIPPED_DIR / bank._file_name(tower, texts, part)
        assert path.is_file(), f"{path.name} is not shipped: run `python -m hs_model ship-label-bank`"
        with safe_open(str(path), "pt") as f:
            assert f.get_slice("emb").get_shape() == [rows, 384]
