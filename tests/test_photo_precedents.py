"""Photo precedents: the nearest catalogue photos vote for their heading; storage, bad codes, the classifier's hook,
the model store, and (slow) the real towers."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from hs_core.nomenclature import EDITION, get_nomenclature
from hs_core.settings import DEFAULT_MODEL_DIR
from hs_model import model_store
from hs_model.photo_precedents import (
    INDEX_CARD,
    INDEX_FILE,
    PHOTO_DATASET,
    PhotoIndex,
    PhotoNeighbours,
    PhotoVoteConfig,
    fuse_photo_vote,
)
from hs_model.precedents import Precedent, code_tables, summary, valid_code_set
from hs_model.predict import Classifier, Features
from tests.test_model import CODES, C, E

VALID = frozenset(CODES) | {c[:4] for c in CODES}
HEADS = code_tables(CODES)[4]  # heading -> column, in the label space's order


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def photos(n_per: int = 4, seed: int = 0) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Photo vectors in C dimensions clustered around one direction per heading: shoes (6404) near centre 0,
    shirts (6109) near centre 1, bags (4202) near centre 2. Returns vectors, codes, centres."""
    g = torch.Generator().manual_seed(seed)
    centres = unit(torch.randn(3, C, generator=g))
    codes = ["6404", "6109", "4202"]
    vecs = torch.cat([centres[i] + 0.1 * torch.randn(n_per, C, generator=g) for i in range(3)])
    return vecs, [c for c in codes for _ in range(n_per)], centres


def small_index(cfg: PhotoVoteConfig | None = None) -> tuple[PhotoIndex, torch.Tensor]:
    vecs, codes, centres = photos()
    index = PhotoIndex("tiny-image", C, config=cfg or PhotoVoteConfig(k=3, tau=0.05, beta=3.0))
    prov = [(PHOTO_DATASET, str(100 + i), "") for i in range(len(codes))]
    report = index.add(vecs, codes, [f"product {i}" for i in range(len(codes))], prov, VALID)
    assert report.added == len(codes) and report.skipped_invalid_code == 0
    return index, centres


# -- the vote ----------------------------------------------------------------------------------------------------
def test_the_vote_goes_to_the_heading_of_the_nearest_photos_and_raises_it():
    index, centres = small_index()
    nb = index.search(centres[[0, 2]])  # a shoe-like and a bag-like photo
    v4 = index.vote(nb, HEADS)  # [2, H]
    assert v4.shape == (2, len(HEADS))
    assert v4[0].argmax().item() == HEADS["6404"] and v4[1].argmax().item() == HEADS["4202"]
    assert torch.allclose(v4.sum(1), torch.ones(2))  # the k shares of a row sum to 1
    assert {index.codes[i] for i in nb.idx[0].tolist()} == {"6404"}

    from hs_model.model import LabelSpace

    space = LabelSpace.from_codes(CODES)
    s2h = space.parent_index(4)
    log_p6 = torch.log_softmax(torch.zeros(2, len(CODES)), dim=-1)  # a flat model: every subheading equal
    fused = fuse_photo_vote(log_p6, v4, torch.tensor([1.0, 0.5]), 3.0, s2h)
    shoes = [j for j, c in enumerate(space.subheadings) if c.startswith("6404")]
    assert fused[0].exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert fused[0, shoes].exp().sum() > 0.8 > log_p6[0, shoes].exp().sum()  # from 2/7 to most of the mass
    # a lower image gate (the model trusts the photo less) gives the vote less weight
    bags = [j for j, c in enumerate(space.subheadings) if c.startswith("4202")]
    half = fuse_photo_vote(log_p6[1:], v4[1:], torch.tensor([1.0]), 3.0, s2h)
    assert log_p6[1, bags].exp().sum() < fused[1, bags].exp().sum() < half[0, bags].exp().sum()


def test_rows_without_a_photo_are_unchanged_bit_for_bit():
    index, centres = small_index()
    pooled = torch.stack([centres[0], torch.zeros(C), centres[1]])
    nb = index.search(pooled, has_photo=torch.tensor([True, True, False]))  # row 1: zero vector; row 2: no photo
    assert (nb.idx[1:] == -1).all() and (nb.share[1:] == 0).all()
    v4 = index.vote(nb, HEADS)
    g = torch.Generator().manual_seed(1)
    log_p6 = torch.log_softmax(torch.randn(3, len(CODES), generator=g), dim=-1)
    s2h = torch.tensor([HEADS[c[:4]] for c in sorted(CODES)])
    fused = fuse_photo_vote(log_p6, v4, torch.ones(3), 3.0, s2h)
    assert torch.equal(fused[1:], log_p6[1:]) and not torch.equal(fused[0], log_p6[0])
    empty = PhotoIndex("tiny-image", C)  # an empty index votes for nothing: every row as it was
    assert torch.equal(
        fuse_photo_vote(log_p6, empty.vote(empty.search(pooled), HEADS), torch.ones(3), 3.0, s2h), log_p6
    )


def test_evidence_names_the_photos_with_cosine_and_their_share_of_the_vote():
    index, centres = small_index(PhotoVoteConfig(k=3, tau=0.05, beta=2.0))
    nb = index.search(centres[:1])
    ev = index.evidence(nb, 0, scale=2.0 * 0.5)  # beta * image gate
    assert len(ev) == 3 and all(p.dataset == PHOTO_DATASET and p.code == "6404" and p.weight > 0 for p in ev)
    assert sum(p.weight for p in ev) == pytest.approx(1.0, abs=1e-5)  # shares sum to 1, times beta * gate
    cos = unit(index.emb[[int(p.id) - 100 for p in ev]]) @ unit(centres[0])
    assert [round(p.similarity, 2) for p in ev] == [round(v, 2) for v in cos.tolist()]
    assert ev[0].text.startswith("product ")


def test_photos_with_a_negligible_share_of_the_vote_are_not_listed():
    index, centres = small_index(PhotoVoteConfig(k=3, tau=0.05, beta=2.0))
    nb = index.search(centres[:1])
    share = torch.tensor([[0.9, 0.07, 0.03]])
    ev = index.evidence(PhotoNeighbours(nb.idx, nb.sims, share), 0, scale=1.0)
    assert [round(p.weight, 2) for p in ev] == [0.9, 0.07]  # the 3 % photo voted, but is not named as evidence


def test_invalid_codes_and_unreadable_photos_are_skipped_and_counted(caplog):
    index = PhotoIndex("tiny-image", C)
    vecs = unit(torch.randn(4, C))
    vecs[3] = 0  # a photo that could not be read
    with caplog.at_level(logging.WARNING):
        report = index.add(vecs, ["6404", "9999", "640499", "6109"], ["a", "b", "c", "d"], [("x", str(i), "") for i in range(4)], VALID)  # fmt: skip
    assert (report.added, report.skipped_invalid_code, report.skipped_no_vector) == (1, 2, 1)
    assert report.invalid_codes == ("640499", "9999") and index.codes == ["6404"]
    assert "2 skipped, code not in HS 2022" in caplog.text


# -- storage -----------------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    index, centres = small_index(PhotoVoteConfig(k=4, tau=0.1, beta=2.5))
    index.save(tmp_path)
    back = PhotoIndex.load(tmp_path, VALID)
    assert back is not None and back.config == index.config and (back.tower, back.dim) == ("tiny-image", C)
    assert torch.equal(back.emb, index.emb) and back.emb.dtype == torch.float16
    assert (back.codes, back.texts, back.provenance) == (index.codes, index.texts, index.provenance)
    assert torch.equal(back.vote(back.search(centres), HEADS), index.vote(index.search(centres), HEADS))
    assert PhotoIndex.load(tmp_path / "none", VALID) is None
    # a code the nomenclature no longer has is dropped at load, the others kept
    fewer = PhotoIndex.load(tmp_path, VALID - {"4202"})
    assert fewer is not None and "4202" not in fewer.codes and len(fewer) == len(index) - 4


def test_a_tampered_file_is_refused(tmp_path):
    index, _ = small_index()
    index.save(tmp_path)
    data = bytearray((tmp_path / INDEX_FILE).read_bytes())
    data[-1] ^= 1  # one bit of one vector changed
    (tmp_path / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="was changed"):
        PhotoIndex.load(tmp_path, VALID)


# -- the classifier's hook (a tiny model in place of the towers) ------------------------------------------------
def tiny_classifier(index: PhotoIndex | None) -> Classifier:
    from tests.test_finetune import TinyClassifier

    tiny = TinyClassifier()
    clf = object.__new__(Classifier)  # no towers: predict_features needs only the head and the tables
    clf.model, clf.space, clf.card, clf.device = tiny.model, tiny.space, tiny.card, tiny.device
    clf.nomenclature, clf.edition = get_nomenclature(), EDITION
    clf.image_tower = SimpleNamespace(name="tiny-image", dim=C)  # type: ignore[assignment]
    clf.precedents, clf.photo_precedents = None, index
    return clf


def features(pooled: torch.Tensor, has_image: list[bool]) -> Features:
    n = len(pooled)
    g = torch.Generator().manual_seed(2)
    text = unit(torch.randn(n, E, generator=g))
    probs = torch.softmax(torch.randn(n, 1000, generator=g), dim=-1) * torch.tensor(has_image)[:, None]
    return Features(text, pooled, probs, torch.ones(n, dtype=torch.bool), torch.tensor(has_image), texts=("x",) * n)


def test_the_classifier_fuses_the_photo_vote_and_shows_the_photos_as_precedents():
    index, centres = small_index()
    feats = features(torch.stack([centres[0], torch.zeros(C)]), [True, False])  # a shoe photo; a text-only row
    with_vote = tiny_classifier(index).predict_features(feats, top_k=len(CODES))
    without = tiny_classifier(None).predict_features(feats, top_k=len(CODES))

    def heading(p, code):
        return next(c.score for c in p.levels[4] if c.code == code)

    assert heading(with_vote[0], "6404") > heading(without[0], "6404")
    assert with_vote[0].levels[4][0].code == "6404"
    photos_ = [p for p in with_vote[0].precedents if p.dataset == PHOTO_DATASET]
    assert len(photos_) == 3 and all(p.weight > 0 and p.code == "6404" for p in photos_)
    assert with_vote[0].precedent_summary("640411") == "3 similar catalogue photos: heading 6404"
    assert with_vote[0].to_json()["precedents"]["candidates"]["6404"] == "3 similar catalogue photos: 6404"
    # the row without a photo: the same scores to the last bit, no photo evidence
    assert [(c.code, c.score) for lv in (2, 4, 6) for c in with_vote[1].levels[lv]] == [
        (c.code, c.score) for lv in (2, 4, 6) for c in without[1].levels[lv]
    ]
    assert with_vote[1].precedents == ()


def test_the_classifier_loads_only_an_untampered_index_of_its_own_image_tower(tmp_path, caplog):
    index, _ = small_index()
    clf = tiny_classifier(None)
    index.save(tmp_path / "ok")
    loaded = clf._load_photo_precedents(tmp_path / "ok")
    assert loaded is not None and len(loaded) == len(index)
    other = PhotoIndex("another-image-tower", C)
    other.add(index.emb, index.codes, index.texts, index.provenance, VALID)
    other.save(tmp_path / "other")
    assert clf._load_photo_precedents(tmp_path / "other") is None
    shutil.copytree(tmp_path / "ok", tmp_path / "bad")
    data = bytearray((tmp_path / "bad" / INDEX_FILE).read_bytes())
    data[-1] ^= 1
    (tmp_path / "bad" / INDEX_FILE).write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        assert clf._load_photo_precedents(tmp_path / "bad") is None
    assert "photo precedent index" in caplog.text and "not used" in caplog.text


def test_summary_words_photos_and_mixed_precedents():
    def p(code: str, dataset: str) -> Precedent:
        return Precedent("t", code, dataset, "1", "", 0.9, 0.5)

    shots = [p("6109", PHOTO_DATASET)] * 5
    assert summary("610910", shots) == "5 similar catalogue photos: heading 6109"
    assert summary("610910", shots[:1]) == "1 similar catalogue photo: heading 6109"
    rulings = [p("610910", "cbp_rulings")] * 2
    assert (
        summary("6109", [*rulings, *shots]) == "2 earlier rulings on similar goods and 5 similar catalogue photos: 6109"
    )
    assert summary("610910", [*rulings, *shots]) == "2 earlier rulings on similar goods: 6109.10"  # photos: heading
    assert summary("6205", shots) is None


# -- the model store ---------------------------------------------------------------------------------------------
def _ship_photo_index(folder: Path) -> None:
    index, _ = small_index()
    index.save(folder)


def test_a_finetuned_version_keeps_the_photo_index(factory, model_env):
    from services import finetune as finetune_service
    from tests.test_finetune import TINY_CFG, seed_reviewed

    _ship_photo_index(model_env.shipped)
    seed_reviewed(factory, 30, kinds=("approved", "corrected"))
    result = finetune_service.run(factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None)
    new = model_env.root / result.version_id
    assert [(p.name, p.read_bytes()) for p in model_store.precedent_files(new)] == [
        (p.name, p.read_bytes()) for p in model_store.precedent_files(model_env.shipped)
    ]
    assert (new / INDEX_FILE).is_file() and (new / INDEX_CARD).is_file()
    assert PhotoIndex.load(new, VALID) is not None


def test_a_stored_copy_gets_the_photo_index_added_beside_its_text_index(model_env):
    from tests.test_registry import _ship_index

    _ship_index(model_env.shipped)
    stored = model_store.copy_into_store(model_env.shipped, "tiny-shipped", model_env.root)
    assert [p.name for p in model_store.precedent_files(stored)] == ["precedents.safetensors", "precedents.json"]
    _ship_photo_index(model_env.shipped)  # a later release ships a photo index with the same weights
    again = model_store.copy_into_store(model_env.shipped, "tiny-shipped", model_env.root)
    assert [p.name for p in model_store.precedent_files(again)] == [
        "precedents.safetensors",
        "precedents.json",
        INDEX_FILE,
        INDEX_CARD,
    ]
    assert not [p for p in again.iterdir() if p.name.startswith(".tmp-")]


# -- the real towers ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_classifier_a_known_photo_gets_the_photo_vote_as_evidence(tmp_path):
    """A synthetic 'catalogue photo' put in an index beside a copy of the shipped model: the same photo, classified
    with no text, finds itself (cosine 1) and its heading gets the vote."""
    for name in ("card.json", "weights.safetensors"):
        shutil.copy(DEFAULT_MODEL_DIR / name, tmp_path / name)
    plain = Classifier(tmp_path)
    shot = Image.new("RGB", (224, 224), (200, 30, 30))
    for x in range(0, 224, 28):
        shot.paste((20, 20, 220), (x, 0, x + 14, 224))  # stripes: a photo unlike a plain colour field
    other = Image.new("RGB", (224, 224), (30, 200, 30))
    pooled = plain.image_tower.encode_image([shot, other]).pooled
    index = PhotoIndex(plain.image_tower.name, plain.image_tower.dim, config=PhotoVoteConfig(k=2, tau=0.05, beta=3.0))
    index.add(pooled, ["4202", "6109"], ["striped bag", "green t-shirt"], [(PHOTO_DATASET, "1", ""), (PHOTO_DATASET, "2", "")], valid_code_set())  # fmt: skip
    index.save(tmp_path)
    clf = plain.with_model(tmp_path)
    assert clf.photo_precedents is not None and len(clf.photo_precedents) == 2
    before, after = plain.predict(None, [shot], top_k=5), clf.predict(None, [shot], top_k=5)
    shown = [p for p in after.precedents if p.dataset == PHOTO_DATASET]
    assert shown and shown[0].id == "1" and shown[0].similarity > 0.99 and shown[0].weight > 0
    bag = lambda p: next((c.score for c in p.levels[4] if c.code == "4202"), 0.0)  # noqa: E731
    assert bag(after) > bag(before)
    assert after.precedent_summary("4202") is not None and "catalogue photo" in (after.precedent_summary("4202") or "")


@pytest.mark.slow
@pytest.mark.data
def test_real_classifier_a_photo_of_the_shipped_index_finds_its_own_product():
    """The shipped model and index: a Myntra photo that the index holds is its own nearest neighbour, and its
    heading gets the vote (needs ../shared/data for the photo itself)."""
    images = Path(__file__).parents[1] / "../shared/data/products/images"
    if not (DEFAULT_MODEL_DIR / INDEX_FILE).is_file() or not images.is_dir():
        pytest.skip("needs the shipped photo index and ../shared/data/products/images")
    clf = Classifier(DEFAULT_MODEL_DIR)
    index = clf.photo_precedents
    assert index is not None and len(index) > 1000 and all(c in valid_code_set() for c in index.codes)
    row = len(index) // 2
    dataset, pid, _ = index.provenance[row]
    pred = clf.predict(None, [Image.open(images / f"{pid}.jpg").convert("RGB")], top_k=5)
    nearest = max((p for p in pred.precedents if p.dataset == dataset), key=lambda p: p.similarity)
    assert nearest.id == pid and nearest.similarity > 0.99 and nearest.code == index.codes[row]
    assert "catalogue photo" in (pred.precedent_summary(index.codes[row][:4]) or "")
