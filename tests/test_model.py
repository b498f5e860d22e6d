"""The joint model's parts on tiny synthetic inputs: losses, fusion, roll-up, calibration, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hs_model.checkpoint import CheckpointError, ModelCard, load_checkpoint, save_checkpoint
from hs_model.model import HeadConfig, HsJointModel, LabelBank, LabelSpace
from hs_model.predict import load_trained_parts, trained_parts
from hs_train.calibration import choose_threshold, fit_temperature
from hs_train.evaluate import expected_calibration_error, macro_prf
from hs_train.losses import ClipLoss, hierarchical_nll

CODES = ["610910", "610990", "620520", "620530", "640411", "640419", "420221"]
E, C = 16, 24


def tiny_model(seed: int = 0) -> HsJointModel:
    g = torch.Generator().manual_seed(seed)
    space = LabelSpace.from_codes(CODES)
    bank = LabelBank(
        text_emb=torch.nn.functional.normalize(torch.randn(len(CODES) + 3, E, generator=g), dim=-1),
        text_code=torch.tensor(list(range(len(CODES))) + [0, 2, 4]),
        heading_emb=torch.randn(len(space.headings), E, generator=g),
        chapter_emb=torch.randn(len(space.chapters), E, generator=g),
        class_name_emb=torch.randn(1000, E, generator=g),
    )
    return HsJointModel(space, bank, HeadConfig(text_dim=E, image_dim=C))


def batch(n: int, has_text: bool = True, has_image: bool = True):
    g = torch.Generator().manual_seed(1)
    return (
        torch.nn.functional.normalize(torch.randn(n, E, generator=g), dim=-1),
        torch.randn(n, C, generator=g),
        torch.softmax(torch.randn(n, 1000, generator=g), -1),
        torch.full((n,), has_text),
        torch.full((n,), has_image),
    )


def test_contrastive_loss_prefers_aligned_pairs():
    a = torch.nn.functional.normalize(torch.randn(32, 8), dim=-1)
    loss = ClipLoss()
    aligned = loss(a, a)
    shuffled = loss(a, a[torch.randperm(32)])
    assert aligned < shuffled


@pytest.mark.parametrize(("has_text", "has_image"), [(True, False), (False, True), (True, True)])
def test_fusion_uses_only_present_modalities(has_text, has_image):
    model = tiny_model().eval()
    out = model(*batch(4, has_text, has_image))
    assert torch.isfinite(out.logits).all()
    assert torch.allclose(out.gates.sum(1), torch.ones(4))
    assert bool((out.gates[:, 0] > 0).all()) == has_text
    assert bool((out.gates[:, 1] > 0).all()) == has_image
    assert torch.allclose(out.joint.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_missing_text_vector_is_ignored():
    """Whatever sits in the text slot of a photo-only row must not change its scores."""
    model = tiny_model().eval()
    t, p, q, _, hi = batch(3, False, True)
    a = model(t, p, q, torch.zeros(3, dtype=torch.bool), hi).logits
    b = model(torch.randn_like(t), p, q, torch.zeros(3, dtype=torch.bool), hi).logits
    assert torch.allclose(a, b)


def test_levels_roll_up_consistently():
    model = tiny_model().eval()
    logits = model(*batch(5)).logits
    p6, p4, p2 = (model.level_log_probs(logits, lv).exp() for lv in (6, 4, 2))
    assert torch.allclose(p6.sum(-1), torch.ones(5), atol=1e-5)
    for h, head in enumerate(model.space.headings):
        kids = [i for i, c in enumerate(model.space.subheadings) if c.startswith(head)]
        assert torch.allclose(p4[:, h], p6[:, kids].sum(-1), atol=1e-5)
    for c, chap in enumerate(model.space.chapters):
        kids = [i for i, h in enumerate(model.space.headings) if h.startswith(chap)]
        assert torch.allclose(p2[:, c], p4[:, kids].sum(-1), atol=1e-5)


def test_prototype_max_over_texts_and_exclusion():
    model = tiny_model().eval()
    z = model.embed_text(model.bank_text[[7]])  # the 2nd text of code 0
    full = model.score(z)
    hidden = model.score(z, exclude_text=torch.tensor([7]))
    assert full[0, 0] > hidden[0, 0]  # its own text no longer counts for code 0
    assert torch.allclose(full[0, 1:], hidden[0, 1:])


def test_hierarchical_nll_handles_mixed_levels():
    model = tiny_model()
    logits = model(*batch(4)).logits
    targets = torch.tensor([0, 1, 0, 3])  # 610910 (6), 6205 in headings (4), 61 (2), 620530 (6)
    levels = torch.tensor([6, 4, 2, 6])
    loss = hierarchical_nll(model.level_log_probs, logits, targets, levels)
    loss.backward()
    assert loss > 0 and model.text_adapter.weight.grad is not None


def test_temperature_lowers_ece_on_overconfident_scores():
    rng = np.random.default_rng(0)
    n, k = 2000, 10
    target = torch.tensor(rng.integers(0, k, n))
    logits = torch.tensor(rng.normal(size=(n, k)), dtype=torch.float32)
    logits[torch.arange(n), target] += 1.0  # right about half the time ...
    logits *= 8.0  # ... but far too sure
    t = fit_temperature(logits, target)
    assert t > 1.5

    def ece(z):
        p = torch.softmax(z, -1)
        conf, pred = p.max(-1)
        return expected_calibration_error(conf.numpy(), (pred == target).numpy().astype(float))

    assert ece(logits / t) < ece(logits) / 2


def test_threshold_meets_target_accuracy():
    conf = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([1, 1, 1, 0, 1, 0])
    th = choose_threshold(conf, correct, 0.75)
    answered = conf >= th
    assert correct[answered].mean() >= 0.75 and answered.sum() == 5
    assert choose_threshold(conf, np.zeros(6), 0.9) == 1.0


def test_a_small_dataset_weighs_as_much_as_a_large_one():
    from hs_train.calibration import dataset_weights

    # 8 confident, correct apparel rows; 2 general-goods rows, one wrong at 0.6, one right at 0.5
    conf = np.array([0.99] * 8 + [0.6, 0.5])
    correct = np.array([1] * 8 + [0, 1])
    sources = ["myntra-full"] * 4 + ["myntra-image"] * 4 + ["uk-val"] * 2
    assert choose_threshold(conf, correct, 0.9) == 0.5  # by rows: 9 of 10 right, answer everything
    weighted = choose_threshold(conf, correct, 0.9, dataset_weights(sources))
    assert weighted == 0.99  # weighted, the wrong parcel is half of the parcels' weight: it goes to review
    assert dataset_weights(sources).sum() == pytest.approx(2.0)


def test_macro_prf_on_known_case():
    p, r, f = macro_prf(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert r == pytest.approx((0.5 + 1.0) / 2)
    assert p == pytest.approx((1.0 + 2 / 3) / 2)
    assert 0 < f < 1


def test_checkpoint_round_trip_and_tamper_refusal(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.text_adapter.weight.normal_()
        model.correction[2].normal_()
        model.temperature.fill_(1.7)
    card = ModelCard("v-test", "HS2022", "t", "i", "2026-11-25")
    save_checkpoint(tmp_path, trained_parts(model), card)
    loaded_card, tensors = load_checkpoint(tmp_path)
    assert loaded_card.version == "v-test" and loaded_card.weights_sha256
    assert tensors["correction.weight"].shape == (1, E)  # only the non-zero row is stored
    other = tiny_model()
    load_trained_parts(other, tensors)
    model.eval()
    other.eval()
    assert torch.allclose(model(*batch(3)).logits, other(*batch(3)).logits, atol=1e-6)
    assert float(other.temperature) == pytest.approx(1.7)
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"XXXX")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path)


def test_within_heading_kl_only_sees_the_split_inside_the_gold_heading():
    from hs_train.losses import within_heading_kl

    sub_to_head = torch.tensor([0, 0, 0, 1, 1])
    teacher = torch.tensor([[2.0, 0.0, -1.0, 5.0, 5.0]])
    heading = torch.tensor([0])
    same_split = teacher + torch.tensor([[3.0, 3.0, 3.0, -9.0, 7.0]])  # heading 0 shifted as a whole
    assert float(within_heading_kl(same_split, teacher, heading, sub_to_head)) < 1e-6
    flipped = torch.tensor([[-1.0, 0.0, 2.0, 5.0, 5.0]], requires_grad=True)
    loss = within_heading_kl(flipped, teacher, heading, sub_to_head)
    assert float(loss.detach()) > 0.5
    loss.backward()
    assert flipped.grad[0, 3:].abs().sum() == 0  # the other heading's subheadings are not touched
    assert flipped.grad[0, 0] < 0 < flipped.grad[0, 2]  # descent raises what the teacher ranks first
