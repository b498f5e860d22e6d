"""The cross-encoder reranker: pair layout, frozen lower layers, the listwise loss learns, the combination reranks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hs_train.rerank import CrossEncoder, Mined, RerankConfig, combine, listwise_loss, train
from tests.test_explain import tiny_bert_folder

CODES = {  # short texts: the tiny tower's 12-piece code side must tell them apart
    "610910": "knitted T-shirts of cotton",
    "610990": "knitted vests of other textile materials",
    "711320": "jewellery of base metal clad with gold",
    "711719": "imitation jewellery of base metal",
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert_folder(tmp_path_factory.mktemp("tiny-rerank"), layers=2)


def tiny_encoder(folder: Path, **kw) -> CrossEncoder:
    torch.manual_seed(0)
    model = CrossEncoder(str(folder), RerankConfig(max_length=32, max_code_tokens=12, **kw))
    model.set_code_texts(CODES)
    return model


def test_pairs_put_the_code_second_and_respect_both_length_limits(tiny_dir):
    model = tiny_encoder(tiny_dir)
    long = "stainless steel cuban link chain necklace gold colour " * 10
    batch = model.pair_batch([long, "cotton tee"], ["711320", "610910"])
    ids, types, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    assert ids.shape[1] <= 32
    tok = model.tokenizer
    for row in range(2):
        n = int(mask[row].sum())
        seps = (ids[row, :n] == tok.sep_token_id).nonzero().flatten().tolist()
        assert ids[row, 0] == tok.cls_token_id and len(seps) == 2 and seps[1] == n - 1
        assert types[row, : seps[0] + 1].eq(0).all() and types[row, seps[0] + 1 : n].eq(1).all()
        assert n - seps[0] - 1 <= 12  # the code side, its final [SEP] included
    # the long description is what got cut, not the code's text
    code_ids = tok(CODES["711320"], add_special_tokens=False)["input_ids"][:11]
    n0 = int(mask[0].sum())
    assert ids[0, n0 - 1 - len(code_ids) : n0 - 1].tolist() == code_ids


def test_only_the_last_layers_and_the_scorer_train(tiny_dir):
    model = tiny_encoder(tiny_dir, train_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("bert.encoder.layer.1.", "scorer.")) for n in trainable)
    assert set(model.trained_state()) == trainable


def test_listwise_loss_decreases_and_the_gold_comes_first(tiny_dir):
    model = tiny_encoder(tiny_dir, train_layers=2)
    texts = ["men's cotton t-shirt", "polyester vest, knitted", "gold plated brass bracelet", "steel chain necklace"]
    golds = ["610910", "610990", "711320", "711719"]
    mined = Mined(texts * 30, golds * 30, [[c for c in CODES if c != g] for g in golds * 30], [0] * 120)

    def loss_and_hits() -> tuple[float, int]:
        model.eval()
        with torch.no_grad():
            scores = torch.stack([model.score([t] * 4, list(CODES)) for t in texts])  # [4, 4]
        gold = torch.tensor([list(CODES).index(g) for g in golds])
        return float(listwise_loss(scores, gold)), int((scores.argmax(1) == gold).sum())

    before, _ = loss_and_hits()
    assert math.isclose(before, math.log(4), rel_tol=0.2)  # an untrained scorer is about uniform
    cfg = RerankConfig(max_length=32, max_code_tokens=12, candidates=4, queries_per_step=2, lr=1e-2, head_lr=1e-1,
                       max_minutes=5.0, max_steps=60, warmup_steps=1)  # fmt: skip
    model.cfg = cfg
    history = train(model, mined, cfg)
    after, hits = loss_and_hits()
    assert [h["step"] for h in history] == [25, 50]  # stopped at max_steps (60), logged every 25
    assert after < 0.5 * before
    assert hits == 4


def test_combine_reranks_inside_the_top_n_and_keeps_the_rest():
    torch.manual_seed(0)
    log_p6 = torch.log_softmax(torch.randn(3, 50), dim=1)
    top = log_p6.topk(5, dim=1).indices
    # w = 0, T = 1: exactly the first stage
    assert torch.allclose(combine(log_p6, top, torch.randn(3, 5), 0.0), log_p6, atol=1e-6)
    rerank = torch.zeros(3, 5)
    rerank[:, 3] = 10.0  # the reranker is sure of the 4th candidate
    out = combine(log_p6, top, rerank, 2.0)
    assert torch.equal(out.argmax(1), top[:, 3])
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)  # still a distribution
    rest = torch.ones_like(log_p6, dtype=torch.bool).scatter(1, top, False)
    assert torch.equal(out[rest], log_p6[rest])  # the codes outside the top N keep their probability
    assert torch.allclose(out.gather(1, top).logsumexp(1), log_p6.gather(1, top).logsumexp(1), atol=1e-5)


def test_combination_rolls_up_to_headings_by_summing():
    from hs_train.rerank_eval import top1

    subs = ["610910", "610990", "711320", "711719"]
    # the first stage: 7113.20 alone is the best subheading, but heading 6109 (and chapter 61) hold more mass
    log_p6 = torch.tensor([[0.3, 0.25, 0.35, 0.1]]).log()
    assert top1(log_p6, ["610990"], subs) == {"hs2_top1": 1.0, "hs4_top1": 1.0, "hs6_top1": 0.0}
    assert top1(log_p6, ["711719"], subs) == {"hs2_top1": 0.0, "hs4_top1": 0.0, "hs6_top1": 0.0}
    top = torch.tensor([[2, 0, 1, 3]])
    rerank = torch.tensor([[0.0, 0.0, 0.0, 4.0]])  # the reranker reads "imitation": 7117.19
    out = combine(log_p6, top, rerank, 1.0)
    assert top1(out, ["711719"], subs) == {"hs2_top1": 1.0, "hs4_top1": 1.0, "hs6_top1": 1.0}


def test_scores_of_deeper_ranks_join_the_first_run(tmp_path):
    from hs_train.rerank_eval import merge_scores, save_parts

    top = torch.arange(12).reshape(2, 6)
    first = {"c": {"top": top[:, :4], "scores": torch.ones(2, 4), "start": 0, "seconds": 1.0}}
    deeper = {"c": {"top": top[:, 4:], "scores": torch.zeros(2, 2), "start": 4, "seconds": 2.0}}
    save_parts(first, tmp_path / "scores.safetensors")
    save_parts(deeper, tmp_path / "scores-deep.safetensors")
    merged = merge_scores([tmp_path / "scores-deep.safetensors", tmp_path / "scores.safetensors"])["c"]
    assert torch.equal(merged["top"], top) and merged["scores"][:, :4].eq(1).all() and merged["seconds"] == 3.0
    save_parts({"c": {**deeper["c"], "start": 5}}, tmp_path / "scores-deep.safetensors")
    with pytest.raises(ValueError, match="contiguous"):
        merge_scores([tmp_path / "scores.safetensors", tmp_path / "scores-deep.safetensors"])
