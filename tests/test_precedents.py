"""Precedents vote: lexical scores, vote math, fusion, bad codes and texts, incremental adds, the shipped index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rank_bm25 import BM25Okapi
from sklearn.feature_extraction.text import TfidfVectorizer

from hs_core.settings import DEFAULT_MODEL_DIR
from hs_model.lexical import LexicalIndex, tokens
from hs_model.model import LabelSpace
from hs_model.precedents import (
    INDEX_FILE,
    PrecedentIndex,
    VoteConfig,
    code_tables,
    fuse_log_probs,
    summary,
    valid_code_set,
)

SUBS = ["650610", "650691", "610910", "610990", "847130", "950300"]
SPACE = LabelSpace.from_codes(SUBS)
TABLES = code_tables(SUBS)
VALID = frozenset(SUBS) | {c[:4] for c in SUBS}
DOCS = [
    "bicycle helmet of plastics",
    "cotton knitted t-shirt for men",
    "portable laptop computer 14 inch",
    "plastic toy helmet",
    "knitted t-shirt of polyester",
    "laptop notebook computer",
]
CODES = ["650610", "610910", "847130", "950300", "610990", "847130"]


def unit(*rows: list[float]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def small_index(cfg: VoteConfig | None = None) -> PrecedentIndex:
    """Six precedents in a 3-d toy space: helmets near e0, shirts near e1, laptops near e2."""
    emb = unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0.1, 0], [0, 1, 0.1], [0, 0.1, 1])
    index = PrecedentIndex("toy", 3, config=cfg or VoteConfig(k=3, lexical_weight=0.0, min_similarity=0.5))
    prov = [("cbp_rulings", f"N{i}", f"2026-01-0{i + 1}") for i in range(len(DOCS))]
    report = index.add(DOCS, emb, CODES, prov, VALID)
    assert report.added == 6
    return index


def test_lexical_bm25_equals_rank_bm25_and_tfidf_equals_sklearn():
    query = ["steel helmet for bicycle, plastic"]
    bm = LexicalIndex("bm25")
    bm.add(DOCS)
    idx, val = bm.search(query, 6)
    ref = BM25Okapi([tokens(d) for d in DOCS]).get_scores(tokens(query[0]))
    found = idx[0][idx[0] >= 0]
    assert list(found) == list(np.argsort(-ref, kind="stable")[: len(found)])
    assert val[0][0] / val[0][1] == pytest.approx(ref[found[0]] / ref[found[1]], rel=1e-5)  # same scores up to scale
    tf = LexicalIndex("tfidf")
    tf.add(DOCS[:2])
    tf.add(DOCS[2:])  # added in two chunks
    idx, val = tf.search(query, 6)
    vec = TfidfVectorizer(analyzer=tokens, sublinear_tf=True)
    ref = (vec.fit_transform(DOCS) @ vec.transform(query).T).toarray().ravel()
    found = idx[0][idx[0] >= 0]
    assert val[0][: len(found)] == pytest.approx(ref[found], abs=1e-5)
    assert set(found) == set(np.nonzero(ref > 0)[0])


def test_vote_math_weights_are_similarity_above_the_floor():
    index = small_index()
    q = unit([1, 0.2, 0])  # a helmet
    nb = index.neighbours(q, ["helmet"])
    votes, chosen, sims, weights = index.vote(nb, TABLES)
    cos = (q @ index.matrix.float().T)[0].numpy()
    top = np.argsort(-cos)[:3]
    assert list(chosen[0]) == list(top)
    expected = np.maximum(cos[top] - 0.5, 0)
    assert weights[0] == pytest.approx(expected, abs=2e-3)  # float16 vectors
    rows, cols, w = votes[4]
    by_heading = {SPACE.headings[c]: float(x) for c, x in zip(cols, w, strict=True)}
    want: dict[str, float] = {}
    for j, x in zip(top, expected, strict=True):
        if x > 0:
            want[CODES[j][:4]] = want.get(CODES[j][:4], 0.0) + float(x)
    assert set(by_heading) == set(want) == {"6506", "9503"}
    for code, x in want.items():
        assert by_heading[code] == pytest.approx(x, abs=2e-3)
    rows, cols, w = votes[2]
    assert {SPACE.chapters[c] for c in cols} == {"65", "95"}


def test_heading_only_precedent_votes_at_4_and_2_digits_only():
    index = PrecedentIndex("toy", 3, config=VoteConfig(k=2, lexical_weight=0.0, min_similarity=0.0))
    index.add(["t-shirt"], unit([0, 1, 0]), ["6109"], [("myntra", "1", "")], VALID)
    votes, *_ = index.vote(index.neighbours(unit([0, 1, 0]), ["t-shirt"]), TABLES)
    assert len(votes[6][0]) == 0 and len(votes[4][0]) == 1 and len(votes[2][0]) == 1


def test_fusion_is_codes_only_with_an_empty_index_or_no_text():
    log_p = torch.log_softmax(torch.randn(2, len(SUBS)), dim=-1)
    cfg = VoteConfig(beta6=2.0, beta4=1.0, beta2=0.5, temperature=1.3)
    empty = PrecedentIndex("toy", 3, config=cfg)
    nb = empty.neighbours(unit([1, 0, 0], [0, 1, 0]), ["helmet", "shirt"])
    votes, *_ = empty.vote(nb, TABLES)
    heads, chaps = SPACE.parent_index(4), SPACE.parent_index(2)
    assert torch.equal(fuse_log_probs(log_p, votes, cfg, heads, chaps), log_p)
    full = small_index(cfg)
    nb = full.neighbours(torch.zeros(2, 3), ["", ""])  # no text: zero vectors
    votes, *_ = full.vote(nb, TABLES)
    assert torch.equal(fuse_log_probs(log_p, votes, cfg, heads, chaps), log_p)


def test_a_long_description_ranks_its_neighbours_with_the_long_lexical_weight():
    """A ruling's full text: the words decide its neighbours (the text tower reads only its first 128 tokens)."""
    long_text = "bicycle helmet of plastics " + " ".join(["merchandise"] * 40)
    q = unit([0, 0, 1])  # the embedding points at the laptops; the words at the helmet
    cfg = VoteConfig(k=1, lexical_weight=0.0, min_similarity=0.0, long_words=40, long_lexical_weight=1.0)
    index = small_index(cfg)
    nb = index.neighbours(q, [long_text])
    assert list(nb.words) == [44] and nb.long_rows(cfg).tolist() == [True]
    _, chosen, _, _ = index.vote(nb, TABLES)
    assert CODES[int(chosen[0, 0])] == "650610"
    short = VoteConfig(k=1, lexical_weight=0.0, min_similarity=0.0, long_words=0, long_lexical_weight=1.0)
    assert nb.long_rows(short).tolist() == [False]  # long_words 0: one regime for every description
    _, chosen, _, _ = index.vote(nb, TABLES, short)
    assert CODES[int(chosen[0, 0])] == "847130"


def test_the_long_regime_scales_only_long_voted_rows_and_leaves_the_rest_bit_for_bit():
    cfg = VoteConfig(k=3, lexical_weight=0.0, min_similarity=0.5, beta6=1.0, long_words=3, long_model_weight=0.5)
    index = small_index(cfg)
    texts = ["helmet", "bicycle helmet of plastics", ""]
    nb = index.neighbours(unit([1, 0, 0], [1, 0, 0], [0, 0, 0]), texts)
    long_rows = nb.long_rows(cfg)
    assert long_rows.tolist() == [False, True, False]
    votes, *_ = index.vote(nb, TABLES)
    heads, chaps = SPACE.parent_index(4), SPACE.parent_index(2)
    log_p = torch.log_softmax(torch.randn(3, len(SUBS), generator=torch.Generator().manual_seed(0)), dim=-1)
    fused = fuse_log_probs(log_p, votes, cfg, heads, chaps, long_rows=long_rows)
    same = fuse_log_probs(log_p, votes, cfg, heads, chaps)
    assert torch.equal(fused[0], same[0])  # a short row: as without the regime
    assert torch.equal(fused[2], log_p[2])  # no text, no vote: the model's own distribution
    halved = fuse_log_probs(0.5 * log_p, votes, cfg, heads, chaps)  # the long row's model term counts half
    assert torch.allclose(fused[1], halved[1], atol=1e-6)
    assert not torch.allclose(fused[1], same[1])


def test_vote_config_reads_older_cards_without_the_long_regime():
    old = {"k": 5, "lexical_weight": 0.5, "beta6": 1.0}
    cfg = VoteConfig.from_dict(old)
    assert cfg.long_words == 0 and cfg.long_model_weight == 1.0


def test_fusion_raises_the_voted_codes_and_keeps_a_distribution():
    index = small_index(VoteConfig(k=3, lexical_weight=0.0, min_similarity=0.5, beta6=3.0, beta4=1.0))
    log_p = torch.log_softmax(torch.zeros(1, len(SUBS)), dim=-1)  # the model has no idea
    votes, *_ = index.vote(index.neighbours(unit([1, -0.1, 0]), ["helmet"]), TABLES)  # nearest: 650610
    fused = fuse_log_probs(log_p, votes, index.config, SPACE.parent_index(4), SPACE.parent_index(2))
    assert SPACE.subheadings[int(fused.argmax())] == "650610"
    assert float(fused.exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_invalid_codes_and_empty_texts_are_skipped_with_a_count(caplog):
    index = PrecedentIndex("toy", 3)
    report = index.add(
        ["ok", "bad code", "gone", "", "short"],
        unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1]),
        ["650610", "999999", "12", "650610", "6506"],
        [("t", str(i), "") for i in range(5)],
        VALID,
    )
    assert (report.added, report.skipped_invalid_code, report.skipped_empty_text) == (2, 2, 1)
    assert report.invalid_codes == ("12", "999999")
    assert index.codes == ["650610", "6506"] and "2 skipped" in caplog.text


def test_junk_or_empty_description_retrieves_nothing():
    index = small_index(VoteConfig(k=3, lexical_weight=0.3, min_similarity=0.5))
    junk = unit([-1, -1, -1])  # far from everything
    nb = index.neighbours(torch.cat([junk, torch.zeros(1, 3)]), ["qwzx vbnm", ""])
    votes, chosen, sims, weights = index.vote(nb, TABLES)
    assert all(len(votes[lv][0]) == 0 for lv in (2, 4, 6))
    assert not (weights > 0).any()
    assert index.evidence(chosen, sims, weights, 1) == ()  # the empty text has no neighbour at all
    assert summary("650610", index.evidence(chosen, sims, weights, 0)) is None


def test_incremental_add_equals_one_build():
    one = small_index()
    inc = PrecedentIndex("toy", 3, config=one.config)
    emb = one.matrix.float()
    for lo, hi in ((0, 1), (1, 4), (4, 6)):
        inc.add(DOCS[lo:hi], emb[lo:hi], CODES[lo:hi], one.provenance[lo:hi], VALID)
    assert len(inc) == 6 and inc.codes == one.codes
    q = unit([0, 0.3, 1])
    a = one.neighbours(q, ["laptop computer"], VoteConfig(lexical_weight=0.4))
    b = inc.neighbours(q, ["laptop computer"], VoteConfig(lexical_weight=0.4))
    assert np.array_equal(a.idx, b.idx) and np.allclose(a.cos, b.cos) and np.allclose(a.lex, b.lex)


def test_save_load_roundtrip_and_evidence(tmp_path):
    index = small_index(VoteConfig(k=2, lexical_weight=0.2, min_similarity=0.3, beta6=1.5))
    index.save(tmp_path)
    back = PrecedentIndex.load(tmp_path, VALID)
    assert back is not None and back.codes == index.codes and back.config == index.config
    assert torch.equal(back.matrix, index.matrix)
    nb = back.neighbours(unit([1, 0, 0]), ["bicycle helmet"])
    votes, chosen, sims, weights = back.vote(nb, TABLES)
    ev = back.evidence(chosen, sims, weights, 0)
    assert ev[0].code == "650610" and ev[0].dataset == "cbp_rulings" and ev[0].date == "2026-01-01"
    assert summary("650610", ev) == "1 earlier ruling on similar goods: 6506.10"
    assert PrecedentIndex.load(tmp_path / "none", VALID) is None
    data = bytearray((tmp_path / INDEX_FILE).read_bytes())
    data[-1] ^= 1  # one bit of one vector changed
    (tmp_path / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="was changed"):
        PrecedentIndex.load(tmp_path, VALID)


def test_shipped_index_codes_are_valid_hs2022():
    if not (DEFAULT_MODEL_DIR / INDEX_FILE).is_file():
        pytest.skip("no precedent index shipped in assets/model")
    index = PrecedentIndex.load(DEFAULT_MODEL_DIR)
    valid = valid_code_set()
    assert index is not None and len(index) > 0
    assert all(c in valid for c in index.codes)
    assert index.matrix.dtype == torch.float16
    assert index.config.beta4 != 0 or index.config.beta6 != 0


def test_ivf_search_finds_the_exact_neighbours_of_clustered_vectors():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=-1)
    emb = torch.nn.functional.normalize(centres.repeat(50, 1) + 0.05 * torch.randn(1000, 16, generator=g), dim=-1)
    codes = [SUBS[i % len(SUBS)] for i in range(1000)]
    exact_cfg = VoteConfig(k=5, lexical_weight=0.0, candidates=5)
    index = PrecedentIndex("toy", 16, config=exact_cfg)
    index.add(["x"] * 1000, emb, codes, [("t", str(i), "") for i in range(1000)], VALID)
    q = emb[:3] + 0.01
    a = index.neighbours(q, ["", "", ""], exact_cfg)
    b = index.neighbours(q, ["", "", ""], VoteConfig(k=5, lexical_weight=0.0, candidates=5, exact_up_to=100, nprobe=8))
    # 50 near-copies per cluster: the same neighbours up to float16 ties, so compare how near they are
    assert (b.idx[:, :5] >= 0).all() and np.allclose(np.sort(a.cos, 1), np.sort(b.cos, 1), atol=3e-3)
    assert all({i % 20 for i in b.idx[r, :5]} == {r % 20} for r in range(3))  # all from the query's own cluster


def test_batch_results_carry_the_precedents_line_of_the_top_code():
    from hs_model.batch import BatchRow, result_record
    from hs_model.predict import Candidate, Precedent, Prediction

    levels = {
        6: [Candidate("650610", 6, "Headgear; safety", 0.8)],
        4: [Candidate("6506", 4, "Headgear", 0.8)],
        2: [Candidate("65", 2, "Headgear", 0.9)],
    }
    voted = (Precedent("bicycle helmets", "650610", "cbp_rulings", "N1", "2026-04-01", 0.9, 0.9),) * 4
    pred = Prediction("v", "HS2022", levels, False, 0.6, 1.0, "text", (1.0, 0.0), precedents=voted)
    rec = result_record(BatchRow(2, "a", "bicycle helmets"), pred)
    assert rec["precedents"] == "4 earlier rulings on similar goods: 6506.10"
    assert (
        result_record(BatchRow(2, "a", "x"), Prediction("v", "HS2022", levels, False, 0.6, 1.0, "text", (1.0, 0.0)))[
            "precedents"
        ]
        is None
    )
    assert pred.to_json()["precedents"]["candidates"] == {
        "650610": "4 earlier rulings on similar goods: 6506.10",
        "6506": "4 earlier rulings on similar goods: 6506",
        "65": "4 earlier rulings on similar goods: 65",
    }


def test_a_summary_names_the_level_a_coarse_precedent_voted_for():
    from hs_model.precedents import Precedent

    heading_only = [Precedent(f"men sweater {i}", "6110", "myntra", str(i), "", 0.8, 0.3) for i in range(5)]
    exact = Precedent("cotton pullover", "611020", "cbp_rulings", "N1:short", "2026-02-01", 0.9, 0.4)
    assert summary("611020", heading_only) == "5 labelled precedents on similar goods: heading 6110"
    assert summary("6110", heading_only) == "5 labelled precedents on similar goods: 6110"
    assert summary("611020", [*heading_only, exact]) == "1 earlier ruling on similar goods: 6110.20"
    assert summary("610910", heading_only) is None
