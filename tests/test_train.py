"""Training smoke run on a few synthetic items: the loop learns, keeps the best epoch and calibrates."""

from __future__ import annotations

import torch

from hs_train.train import FeatureSet, TrainConfig, accuracy, calibrate, fit
from tests.test_model import CODES, C, E, tiny_model


def synthetic_pool(n: int, seed: int) -> FeatureSet:
    """Items whose photo features encode their code; labels mix subheadings (6) and headings (4)."""
    g = torch.Generator().manual_seed(seed)
    code_idx = torch.randint(0, len(CODES), (n,), generator=g)
    signature = torch.randn(len(CODES), C, generator=torch.Generator().manual_seed(99)) * 3
    pooled = signature[code_idx] + 0.3 * torch.randn(n, C, generator=g)
    heads = sorted({c[:4] for c in CODES})
    level = torch.where(torch.arange(n) % 2 == 0, 6, 4)
    target = torch.tensor(
        [
            int(i) if lv == 6 else heads.index(CODES[i][:4])
            for i, lv in zip(code_idx.tolist(), level.tolist(), strict=True)
        ]
    )
    return FeatureSet(
        text=torch.zeros(n, E),
        image_pooled=pooled,
        image_probs=torch.softmax(torch.randn(n, 1000, generator=g), -1),
        has_text=torch.zeros(n, dtype=torch.bool),
        has_image=torch.ones(n, dtype=torch.bool),
        target=target,
        level=level,
        exclude=torch.full((n,), -1),
        pair=torch.zeros(n, dtype=torch.bool),
        source=["synthetic"] * n,
    )


def test_training_learns_photo_signatures_and_calibrates():
    model = tiny_model()
    train, val = synthetic_pool(400, 1), synthetic_pool(200, 2)
    before = accuracy(model, val)
    history = fit(model, train, val, TrainConfig(epochs=6, batch_size=64, lr=1e-2, label_examples_per_epoch=0))
    after = accuracy(model, val)
    assert len(history) == 6 and after == max(h["val_top1"] for h in history)
    assert after > before + 0.3
    calib = calibrate(model, val, target_accuracy=0.9)
    assert 0.1 <= calib["temperature"] <= 10
    assert 0.0 <= calib["review_threshold"] <= 1.0


def test_corrections_stay_zero_for_codes_without_data():
    model = tiny_model()
    pool = synthetic_pool(300, 3)
    keep = torch.tensor([i for i in range(len(pool)) if pool.level[i] == 6 and CODES[int(pool.target[i])][:2] == "61"])
    train = pool.subset(keep)  # only chapter-61 subheadings have data
    fit(model, train, train, TrainConfig(epochs=2, batch_size=64, lr=1e-2, label_examples_per_epoch=0))
    for i, code in enumerate(CODES):
        has_data = code[:2] == "61"
        assert bool(model.correction[i].abs().sum() > 0) == has_data, code


def test_heading_labels_move_headings_not_the_order_inside_them():
    """Rows labelled only to 4 digits train their heading's shared offset, never a subheading's own: the
    ranking of the subheadings inside a heading is the one the model gives without its heading offsets."""
    model = tiny_model()
    pool = synthetic_pool(400, 4)
    train = pool.subset(torch.nonzero(pool.level == 4).flatten())  # weak heading labels only
    feats = synthetic_pool(50, 5)

    def within_heading_order(m) -> list[list[int]]:
        with torch.no_grad():
            logits = m(feats.text, feats.image_pooled, feats.image_probs, feats.has_text, feats.has_image).logits
        heads = m.sub_to_head.tolist()
        return [
            [sorted([j for j in range(len(CODES)) if heads[j] == h], key=lambda j: -float(row[j])) for h in set(heads)]
            for row in logits
        ]

    fit(model, train, train, TrainConfig(epochs=3, batch_size=64, lr=1e-2, label_examples_per_epoch=0))
    model.eval()
    assert not model.correction.abs().sum() and not model.correction_bias.abs().sum()
    assert model.heading_correction.abs().sum() > 0
    untrained = tiny_model()
    untrained.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("heading_correction")}, strict=False
    )
    untrained.eval()
    assert within_heading_order(model) == within_heading_order(untrained)


def test_epochs_of_equal_top1_are_told_apart_by_the_validation_loss(monkeypatch):
    """A small fine-tune scores the same top-1 at every epoch: the epoch kept is the one with the lowest loss,
    not simply the first (which left a fine-tune at its first epoch)."""
    import hs_train.train as train_module

    model = tiny_model()
    states, losses = [], iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(train_module, "accuracy", lambda m, fs: 0.5)
    monkeypatch.setattr(train_module, "validation_nll", lambda m, fs: next(losses))
    history = fit(
        model, synthetic_pool(60, 0), synthetic_pool(20, 1), TrainConfig(epochs=3, batch_size=16, lr=0.05),
        on_epoch=lambda row: states.append({k: v.clone() for k, v in model.state_dict().items()}),
    )  # fmt: skip
    assert [r["val_nll"] for r in history] == [3.0, 1.0, 2.0]
    kept = model.state_dict()
    assert all(torch.equal(kept[k], states[1][k]) for k in kept)  # the second epoch's weights
    assert not all(torch.equal(kept[k], states[2][k]) for k in kept)
