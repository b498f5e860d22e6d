"""The text-tower adapter: LoRA layers, merging into the tower at load time, and the tuned tower's identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hs_model.checkpoint import CheckpointError, ModelCard, save_checkpoint
from hs_model.config import TowerConfig
from hs_model.predict import Classifier, Query, trained_parts
from hs_model.towers import (
    ADAPTER_PREFIX,
    TextTower,
    adapter_identity,
    adapter_tensors,
    merge_text_adapter,
)
from hs_train.text_tune import DEFAULT_TARGETS, LoRALinear, adapter_state, add_lora
from tests.test_explain import TinyImageTower, random_bank, tiny_bert_folder


@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert_folder(tmp_path_factory.mktemp("tiny-text"), layers=2)


def tiny_tower(folder: Path) -> TextTower:
    tower = TextTower(str(folder), max_length=32)
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower


def trained_adapter(tower: TextTower, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Wrap the tower's layers in LoRA with random (non-zero) B; return the adapter and the wrapped model's output."""
    wrapped = add_lora(tower.model, DEFAULT_TARGETS, rank=4, alpha=8.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in wrapped.values():
            lora.B.copy_(torch.randn(lora.B.shape, generator=g) * 0.2)
    batch = tower.tokenize(["men's knitted cotton T-shirt", "stainless steel chain necklace, gold colour"])
    with torch.no_grad():
        out = tower.forward_tokens(batch["input_ids"], batch["attention_mask"])
    return adapter_state(wrapped), out


def test_lora_wraps_every_linear_layer_of_each_block_and_starts_as_the_base(tiny_text_dir):
    tower = tiny_tower(tiny_text_dir)
    batch = tower.tokenize(["a wooden chair"])
    before = tower.forward_tokens(batch["input_ids"], batch["attention_mask"])
    wrapped = add_lora(tower.model, DEFAULT_TARGETS, rank=4, alpha=8.0)
    assert len(wrapped) == 2 * 6  # 2 layers x (query, key, value, attention output, intermediate, output)
    assert all(isinstance(m, LoRALinear) for m in wrapped.values())
    trainable = [n for n, p in tower.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".A", ".B")) for n in trainable)
    after = tower.forward_tokens(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(before, after, atol=1e-6)  # B = 0: the tuned tower starts as the base


def test_merged_adapter_gives_the_tuned_outputs_and_leaves_the_base_alone(tiny_text_dir):
    base = tiny_tower(tiny_text_dir)
    batch = base.tokenize(["men's knitted cotton T-shirt", "stainless steel chain necklace, gold colour"])
    base_out = base.forward_tokens(batch["input_ids"], batch["attention_mask"])
    adapter, tuned_out = trained_adapter(tiny_tower(tiny_text_dir))
    merged = merge_text_adapter(base, adapter)
    merged_out = merged.forward_tokens(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(merged_out, tuned_out, atol=1e-5)
    assert not torch.allclose(merged_out, base_out, atol=1e-3)  # the adapter changed something
    again = base.forward_tokens(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(again, base_out)  # the base tower (shared with other versions) is untouched
    assert merged.name == adapter_identity(base.name, adapter) != base.name
    assert merged.name.startswith(base.name + "+lora-")
    assert not any(p.requires_grad for p in merged.parameters())
    # the word-embedding table is shared (the adapter never touches it), the encoder's weights are not
    assert merged.word_embeddings.weight is base.word_embeddings.weight
    assert merged.word_embeddings is not base.word_embeddings  # separate modules: Captum's hooks stay separate


def test_adapter_identity_depends_on_the_weights():
    a = {ADAPTER_PREFIX + "x.A": torch.ones(2, 3), ADAPTER_PREFIX + "x.B": torch.ones(3, 2)}
    b = {ADAPTER_PREFIX + "x.A": torch.ones(2, 3), ADAPTER_PREFIX + "x.B": torch.full((3, 2), 1.01)}
    assert adapter_identity("tower", a) == adapter_identity("tower", dict(a))
    assert adapter_identity("tower", a) != adapter_identity("tower", b)
    assert adapter_identity("tower", {"head.x": torch.ones(1)}) == "tower"  # no adapter: the base tower
    assert adapter_tensors({"head.x": torch.ones(1), **a}) == a


def test_an_adapter_for_another_tower_is_refused(tiny_text_dir):
    base = tiny_tower(tiny_text_dir)
    bad = {ADAPTER_PREFIX + "encoder.layer.9.attention.self.query.A": torch.zeros(4, 16)}
    bad[ADAPTER_PREFIX + "encoder.layer.9.attention.self.query.B"] = torch.zeros(16, 4)
    with pytest.raises(ValueError, match="not a linear layer"):
        merge_text_adapter(base, bad)
    wrong_shape = {
        ADAPTER_PREFIX + "encoder.layer.0.attention.self.query.A": torch.zeros(4, 8),
        ADAPTER_PREFIX + "encoder.layer.0.attention.self.query.B": torch.zeros(16, 4),
    }
    with pytest.raises(ValueError, match="shape"):
        merge_text_adapter(base, wrong_shape)


# -- the loader ----------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_classifier_factory(tiny_text_dir, monkeypatch):
    text, image = tiny_tower(tiny_text_dir), TinyImageTower()

    monkeypatch.setattr("hs_model.predict.build_towers", lambda config: (text, image, torch.device("cpu")))
    monkeypatch.setattr("hs_model.predict.build_official_bank", random_bank)
    config = TowerConfig(text_model=str(tiny_text_dir), image_model=image.name, device="cpu")
    return lambda folder: Classifier(folder, config)


def write_model(folder: Path, clf: Classifier, version: str, adapter: dict[str, torch.Tensor]) -> Path:
    tensors = trained_parts(clf.model) | adapter
    card = ModelCard(
        version=version,
        nomenclature_edition=clf.edition,
        text_tower=adapter_identity(clf.base_text_tower.name, adapter),
        image_tower=clf.image_tower.name,
        created="2026-12-02",
        training={"bridge_prompt": "{}"},
    )
    save_checkpoint(folder, tensors, card)
    return folder


def test_checkpoint_without_adapter_loads_as_before(tiny_classifier_factory, tmp_path):
    zero = tiny_classifier_factory(None)
    plain = write_model(tmp_path / "v2", zero, "v2", {})
    clf = tiny_classifier_factory(plain)
    assert clf.text_tower is clf.base_text_tower  # no copy, no merge
    q = [Query("men's knitted cotton T-shirt")]
    a, b = zero.predict_batch(q)[0], clf.predict_batch(q)[0]
    assert [c.code for c in a.levels[6]] == [c.code for c in b.levels[6]]
    assert [c.score for c in a.levels[6]] == pytest.approx([c.score for c in b.levels[6]])


def test_checkpoint_with_adapter_reads_descriptions_with_the_tuned_tower(
    tiny_classifier_factory, tiny_text_dir, tmp_path
):
    zero = tiny_classifier_factory(None)
    adapter, tuned_out = trained_adapter(tiny_tower(tiny_text_dir))
    v3 = tiny_classifier_factory(write_model(tmp_path / "v3", zero, "v3", adapter))
    assert v3.text_tower is not v3.base_text_tower
    assert v3.card.text_tower == v3.text_tower.name == adapter_identity(v3.base_text_tower.name, adapter)
    texts = ["men's knitted cotton T-shirt", "stainless steel chain necklace, gold colour"]
    assert torch.allclose(v3.encode([Query(t) for t in texts]).text, tuned_out, atol=1e-5)
    # the codes' side (bank) stays the base tower's: asymmetric tuning
    assert torch.equal(v3.model.bank_text, zero.model.bank_text)
    # switching versions in one process: the base model gets the base tower back, the tuned one is merged once
    back = v3.with_model(None)
    assert back.text_tower is back.base_text_tower
    again = back.with_model(tmp_path / "v3")
    assert again.text_tower is v3.text_tower


def test_card_naming_the_base_tower_with_adapter_weights_is_refused(tiny_classifier_factory, tiny_text_dir, tmp_path):
    zero = tiny_classifier_factory(None)
    adapter, _ = trained_adapter(tiny_tower(tiny_text_dir))
    folder = tmp_path / "mixed"
    card = ModelCard(
        version="mixed",
        nomenclature_edition=zero.edition,
        text_tower=zero.base_text_tower.name,  # says "base tower" but carries an adapter
        image_tower=zero.image_tower.name,
        created="2026-12-02",
    )
    save_checkpoint(folder, trained_parts(zero.model) | adapter, card)
    with pytest.raises(CheckpointError, match="trained on"):
        tiny_classifier_factory(folder)


def test_heldout_table_puts_each_model_codes_only_then_fused():
    from hs_train.heldout_compare import to_markdown

    m = {"hs2_top1": 0.5, "hs4_top1": 0.25, "hs6_top1": 0.125}
    f = {"hs2_top1": 0.75, "hs4_top1": 0.5}  # Myntra-like: no 6-digit labels
    results = {
        "models": {"hsdesk-v2": {}, "hsdesk-v3": {}},
        "conditions": {
            "UK parcels, val": {n: {"rows": 232, "codes-only": m, "fused": f} for n in ("hsdesk-v2", "hsdesk-v3")}
        },
    }
    table = to_markdown(results)
    assert "hsdesk-v2: codes only" in table and "hsdesk-v3: codes only" in table
    assert "| UK parcels, val | 232 | 50.0 / 25.0 / 12.5 → **75.0 / 50.0 / –** |" in table
