"""Why the model scores a code: Captum attributions over the photo's pixels and the description's words.

Target. The explained quantity is the candidate's log-probability at its level, `model.level_log_probs(...)`
on the fused output (temperature included), with the other modality held at its real value. Not the raw
subheading logit, because the log-probability is the number the broker sees (score = exp of it), it exists at
2, 4 and 6 digits and agrees with the roll-up (evidence for any 6109xx counts towards 6109), and the softmax
normaliser makes it relative to every other code, so evidence that all codes share cancels. Its drawback: near
p = 1 the gradient vanishes (d log p / d logit = 1 - p), which hurts Grad-CAM (a local gradient) more than
Integrated Gradients (integrated along a path). The contrast "why A rather than B" explains
log p(A) - log p(B), which at 6 digits is a plain logit difference and does not saturate.

Photo. Integrated Gradients over the normalised pixels from a *blurred* copy of the photo (Gaussian, sigma 8 %
of the crop side): it keeps the photo's colours and its white studio background, so attribution goes to the
product's shape and texture rather than to "not black"; 16 Gauss-Legendre steps, redone once with 64 when
completeness is missed (see `ExplainConfig`). Noise handling: channels summed, the *signed* map smoothed
(Gaussian, sigma 2 % of the side: IG's pixel-level +/- noise cancels), its positive part kept (evidence for the
target), clipped at the 99th percentile, scaled to [0, 1]. Grad-CAM: ReLU of the channel-weighted last
convolution (7x7 for EfficientNet-Lite0), bilinearly upsampled to the crop, scaled by its maximum. Both maps are
then placed back where the timm transform took its centre crop (shorter side resized, centre cropped), so they
lie over the photo as uploaded; the parts the model never saw stay at 0.

Words. Layer Integrated Gradients over the word-embedding layer, from a baseline of PAD tokens that keeps
[CLS] and [SEP]; word pieces are summed into the whitespace-separated words of the description (via the fast
tokenizer's offsets), signed: > 0 pushes towards the target.

Sharing. Captum's layer methods hook a module, and the towers are shared with every session's
`Classifier.predict`, which does not take `classifier.lock`. So Captum never hooks them here: while an
explanation runs, the shared module's output is relayed through a private identity layer (`_relay`) for
forwards in the explaining thread only, and Captum hooks that private layer: the same attribution, and other
threads' forwards pass untouched. Every explanation also takes `classifier.lock` (one Captum run at a time).
Nothing of the shared model changes: no `.train()`, no parameter or `requires_grad` change; gradients are
enabled on the inputs only, under `torch.enable_grad()`.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from hs_model.errors import InputError
from hs_model.model import HsJointModel
from hs_model.predict import LEVELS, Candidate, Classifier, Query, clean_text

log = logging.getLogger(__name__)

Method = Literal["integrated_gradients", "grad_cam"]
Baseline = Literal["blur", "black"]
METHODS: tuple[Method, ...] = ("integrated_gradients", "grad_cam")
Box = tuple[int, int, int, int]  # left, top, right, bottom in the photo's pixels
# f(text [B, E], pooled [B, C], probs [B, 1000], has_text, has_image) -> [B] the explained value
Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, bool], torch.Tensor]


@dataclass(frozen=True)
class ExplainConfig:
    """Attribution settings, validated once.

    Attributes:
        image_steps: Integrated Gradients steps over the pixels (Gauss-Legendre; each step is one forward and
            one backward pass of the image tower, the bulk of the time on CPU).
        max_image_steps: when the first run misses completeness (below), it is redone once with 4x the steps,
            up to this many. The zero-shot photo path goes through a softmax over ImageNet classes, which can
            flip within a few percent of the path (measured: a wrist-watch photo's delta is 74 % of its score
            change at 16 steps, 4 % at 64); most photos pass at 16 steps.
        rel_tolerance, abs_tolerance: completeness is met when |delta| <= rel * |f(x) - f(baseline)| + abs
            (nats); an explanation that still misses it after `max_image_steps` carries a note saying so.
        text_steps: Layer Integrated Gradients steps over the word embeddings (cheap: short sequences).
        internal_batch_size: steps per forward/backward batch. It bounds memory: the app process peaks 1.6 GB
            above the loaded model at 16, 0.85 GB at 8, 0.45 GB at 4 (measured on a 240 x 320 photo); 8 costs
            about 10 % more time than 16 on the 2-core CPU.
        baseline: pixel baseline in normalised space. `blur`: the photo under a heavy Gaussian blur (keeps its
            colours and a white studio background, removes shape and texture, so attribution goes to the
            product's form rather than to "not black"); `black`: the normalised value of a black image.
        blur_sigma: sigma of the blur baseline, as a fraction of the crop side.
        smooth_sigma: sigma of the Gaussian smoothing of the signed IG map, as a fraction of the crop side.
        clip_percentile: IG map values above this percentile are clipped before scaling to [0, 1].
        max_heatmap_side: photo-space heatmaps are at most this many pixels on their long side.
    """

    image_steps: int = 16
    max_image_steps: int = 64
    rel_tolerance: float = 0.1
    abs_tolerance: float = 0.1
    text_steps: int = 32
    internal_batch_size: int = 8
    baseline: Baseline = "blur"
    blur_sigma: float = 0.08
    smooth_sigma: float = 0.02
    clip_percentile: float = 99.0
    max_heatmap_side: int = 1024

    def __post_init__(self) -> None:
        if self.baseline not in ("blur", "black"):
            raise ValueError(f"baseline must be blur or black, not {self.baseline!r}")
        if not (2 <= self.image_steps <= self.max_image_steps <= 512 and 2 <= self.text_steps <= 512):
            raise ValueError("need 2 <= image_steps <= max_image_steps <= 512 and 2 <= text_steps <= 512")
        if self.rel_tolerance < 0 or self.abs_tolerance < 0:
            raise ValueError("completeness tolerances must be >= 0")
        if self.internal_batch_size < 1 or not 50.0 <= self.clip_percentile <= 100.0:
            raise ValueError("internal_batch_size must be >= 1 and clip_percentile within [50, 100]")


@dataclass(frozen=True)
class WordScore:
    """One whitespace-separated word of the (cleaned) description and its summed word-piece attribution."""

    word: str
    score: float  # > 0: pushes towards the code (or towards A over B in a contrast); < 0: against
    start: int = 0  # character span in the cleaned description
    end: int = 0

    def to_dict(self) -> dict[str, str | float]:
        return {"word": self.word, "score": round(self.score, 6)}


@dataclass(frozen=True)
class Explanation:
    """One attribution of one target (a code's log-probability, or a contrast) by one photo method.

    The photo method is Integrated Gradients over the pixels or Grad-CAM on the last convolution; the words are
    always Layer Integrated Gradients over the word embeddings (there is no Grad-CAM for text).
    `image_heatmaps[i]` lies over photo i as uploaded (its aspect ratio, at most `max_heatmap_side` px long; 0
    outside the centre crop the model saw); `crop_heatmaps[i]` over the model's own crop, whose place in the
    photo is `crop_boxes[i]` (None when the transform is not a resize + centre crop: then `image_heatmaps` holds
    the crop maps). All maps are float32 in [0, 1] and show evidence *for* the target (for A over B in a contrast).
    `convergence_delta` is the largest |delta| over the IG attributions present (photo for IG, and text), in the
    target's units (nats); None when there are none (Grad-CAM on a photo without a description).
    """

    code: str
    level: int
    method: Method
    image_heatmaps: list[np.ndarray]
    words: list[WordScore]
    convergence_delta: float | None  # largest |sum of attributions - (f(input) - f(baseline))|
    seconds: float
    contrast_code: str | None = None
    target: float = 0.0  # the explained value at the real input: log p(code), or log p(code) - log p(contrast)
    deltas: dict[str, float] = field(default_factory=dict)  # per modality: "image 1", "text"
    score_changes: dict[str, float] = field(default_factory=dict)  # f(input) - f(baseline): what attributions sum to
    steps: dict[str, int] = field(default_factory=dict)  # IG steps used per modality
    crop_heatmaps: list[np.ndarray] = field(default_factory=list)
    crop_boxes: list[Box | None] = field(default_factory=list)
    notes: tuple[str, ...] = ()

    def to_json(self, heatmap_paths: Sequence[str] = ()) -> dict[str, Any]:
        return {
            "code": self.code,
            "level": self.level,
            "method": self.method,
            "contrast_code": self.contrast_code,
            "target": round(self.target, 6),
            "image_heatmaps": list(heatmap_paths),
            "words": [w.to_dict() for w in self.words],
            "convergence_delta": None if self.convergence_delta is None else round(self.convergence_delta, 6),
            "deltas": {k: round(v, 6) for k, v in self.deltas.items()},
            "score_changes": {k: round(v, 6) for k, v in self.score_changes.items()},
            "steps": dict(self.steps),
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ExplanationSet:
    """What a review screen shows for one code: IG (photo and words), Grad-CAM (photo, same words) and the
    contrast against the best other candidate at the same level (IG, both modalities)."""

    integrated_gradients: Explanation
    grad_cam: Explanation | None  # None without a photo
    contrast: Explanation | None  # None when there is no other candidate
    candidates: list[Candidate]
    seconds: float


@dataclass
class _Context:
    """One query's inputs, prepared once for every explanation of it."""

    text: str
    text_emb: torch.Tensor  # [1, E] the real text vector (zeros without text)
    photos: tuple[Image.Image, ...]
    pixels: torch.Tensor | None  # [N, 3, H, W] normalised crops
    pooled: torch.Tensor  # [N, C] per photo
    probs: torch.Tensor  # [N, 1000] per photo
    candidates: dict[int, list[Candidate]]
    notes: tuple[str, ...]

    @property
    def has_text(self) -> bool:
        return bool(self.text)


class Explainer:
    """Attributions for a `Classifier`, through exactly its towers and joint model (never modified)."""

    def __init__(self, classifier: Classifier, config: ExplainConfig | None = None) -> None:
        self.classifier = classifier
        self.config = config or ExplainConfig()
        self._text_tap = nn.Identity()  # Captum hooks these private layers, never the shared towers
        self._image_tap = nn.Identity()

    # -- public API ----------------------------------------------------------------------------------------
    def explain(
        self,
        query: Query,
        code: str | None = None,
        level: int | None = None,
        *,
        method: Method = "integrated_gradients",
        versus: str | None = None,
        require_candidate: bool = False,
        top_k: int = 5,
    ) -> Explanation:
        """Attribute one code's score to the photo(s) and the words.

        Args:
            query: the product as the classifier saw it.
            code: HS 2022 code in any spelling `HsCode.parse` accepts; default the top candidate at `level`.
            level: 2, 4 or 6; default the code's own level (6 without a code). Must agree with the code.
            method: the photo method: `integrated_gradients` (pixels; 3-4x the time, more on a retry) or `grad_cam`.
            versus: explain log p(code) - log p(versus) instead: "why code rather than versus".
            require_candidate: refuse a code (or `versus`) that is not among the top `top_k` at its level.
            top_k: how many candidates count as "the candidates".

        Raises:
            InputError: no usable input, an invalid HS 2022 code, a level that does not match the code, or a code
                that is not a candidate when `require_candidate` is set.
        """
        if method not in METHODS:
            raise InputError(f"Unknown explanation method {method!r}; use one of {', '.join(METHODS)}.")
        digits, level = self._validate(code, level)
        other = self._validate(versus, level)[0] if versus is not None else None
        if other is not None and other == digits:
            raise InputError(f"A contrast needs two different codes; both are {other}.")
        with self.classifier.lock:
            ctx = self._prepare(query, top_k)
            digits = self._choose(ctx, digits, level, require_candidate, top_k)
            if other is not None:
                other = self._choose(ctx, other, level, require_candidate, top_k)
                if other == digits:
                    raise InputError(f"A contrast needs two different codes; {other} is the top candidate itself.")
            return self._explain(ctx, digits, level, method, other)

    def explain_all(
        self,
        query: Query,
        code: str | None = None,
        level: int | None = None,
        *,
        require_candidate: bool = False,
        top_k: int = 5,
    ) -> ExplanationSet:
        """IG and Grad-CAM for one code (default the top one), plus its contrast against the best other candidate.

        Raises:
            InputError: as `explain`.
        """
        t0 = time.perf_counter()
        digits, level = self._validate(code, level)
        with self.classifier.lock:
            ctx = self._prepare(query, top_k)
            code = self._choose(ctx, digits, level, require_candidate, top_k)
            ig = self._explain(ctx, code, level, "integrated_gradients", None)
            cam = self._explain(ctx, code, level, "grad_cam", None, ig) if ctx.pixels is not None else None
            other = next((c.code for c in ctx.candidates[level] if c.code != code), None)
            contrast = self._explain(ctx, code, level, "integrated_gradients", other) if other else None
        return ExplanationSet(ig, cam, contrast, ctx.candidates[level], time.perf_counter() - t0)

    # -- preparation ---------------------------------------------------------------------------------------
    def _prepare(self, query: Query, top_k: int) -> _Context:
        clf = self.classifier
        feats = clf.encode([query])  # raises InputError for an empty query or an over-long text
        pred = clf.predict_features(feats, top_k)[0]
        text = clean_text(query.text)
        it = clf.image_tower
        pixels, pooled, probs = None, torch.zeros(0, it.dim), torch.zeros(0, 1000)
        if query.images:
            with torch.no_grad():
                pixels = it.preprocess(list(query.images))
                f = it.forward_pixels(pixels)
            pooled, probs = f.pooled, f.probs
        # .clone() outside inference mode: encode() returns inference tensors, which autograd cannot save
        text_emb = feats.text[:1].clone().to(clf.device)
        return _Context(text, text_emb, query.images, pixels, pooled, probs, pred.levels, pred.notes)

    def _validate(self, code: str | None, level: int | None) -> tuple[str | None, int]:
        """The code's digits and level, checked before any model work (no candidates needed)."""
        from hs_core.nomenclature import HsCode, InvalidCode

        if level is not None and level not in LEVELS:
            raise InputError(f"Level must be 2, 4 or 6 digits, not {level}.")
        if code is None:
            return None, level or 6
        try:
            hs = HsCode.parse(code)
        except InvalidCode as exc:
            raise InputError(str(exc)) from None
        if level is not None and level != hs.level:
            raise InputError(f"{hs.formatted} is a {hs.level}-digit code; it cannot be explained at {level} digits.")
        if hs.digits not in self.classifier.space.codes(hs.level):
            raise InputError(f"{hs.formatted} is not among the codes this model scores.")
        return hs.digits, hs.level

    @staticmethod
    def _choose(ctx: _Context, code: str | None, level: int, require_candidate: bool, top_k: int) -> str:
        """The code itself (checked against the candidates if asked), or the top candidate at `level`."""
        ranked = [c.code for c in ctx.candidates[level]]
        if code is None:
            return ranked[0]
        if require_candidate and code not in ranked:
            raise InputError(
                f"{code} is not among the top {top_k} candidates at {level} digits "
                f"({', '.join(ranked)}); pick one of them or explain without requiring a candidate."
            )
        return code

    # -- the target ----------------------------------------------------------------------------------------
    def _scorer(self, level: int, code: str, versus: str | None) -> Scorer:
        """f(text [B, E], pooled [B, C], probs [B, 1000], has_text, has_image) -> [B] the explained value."""
        model = _scoring_view(self.classifier.model)
        codes = self.classifier.space.codes(level)
        a, b = codes.index(code), (codes.index(versus) if versus else None)

        def score(
            text: torch.Tensor, pooled: torch.Tensor, probs: torch.Tensor, has_text: bool, has_image: bool
        ) -> torch.Tensor:
            n = text.shape[0]
            ht = torch.full((n,), has_text, dtype=torch.bool, device=text.device)
            hi = torch.full((n,), has_image, dtype=torch.bool, device=text.device)
            out = model(text.float(), pooled.float(), probs.float(), ht, hi)
            logp = model.level_log_probs(out.logits, level)  # [B, n_level]
            return logp[:, a] - logp[:, b] if b is not None else logp[:, a]

        return score

    def _explain(
        self,
        ctx: _Context,
        code: str,
        level: int,
        method: Method,
        versus: str | None,
        same_words: Explanation | None = None,
    ) -> Explanation:
        """`same_words`: an explanation of the same target whose word attributions can be reused."""
        t0 = time.perf_counter()
        score = self._scorer(level, code, versus)
        crops, deltas, changes, steps = [], {}, {}, {}
        with torch.enable_grad():
            for i in range(0 if ctx.pixels is None else len(ctx.pixels)):
                if method == "grad_cam":
                    crops.append(self._photo_grad_cam(ctx, i, score))
                else:
                    key = f"image {i + 1}"
                    crop, deltas[key], changes[key], steps[key] = self._photo_ig(ctx, i, score)
                    crops.append(crop)
            words: list[WordScore] = []
            if same_words is not None and "text" in same_words.deltas:
                words, deltas["text"], changes["text"] = (
                    same_words.words,
                    same_words.deltas["text"],
                    same_words.score_changes["text"],
                )
            elif ctx.has_text:
                words, deltas["text"], changes["text"] = self._text_ig(ctx, score)
            if "text" in deltas:
                steps["text"] = self.config.text_steps
            with torch.no_grad():
                target = float(score(ctx.text_emb, *self._pooled_inputs(ctx), ctx.has_text, bool(ctx.photos))[0])
        boxes = [crop_box(self.classifier.image_tower.transform, p.size) for p in ctx.photos]
        on_photo = [self._to_photo(h, p.size, b) for h, p, b in zip(crops, ctx.photos, boxes, strict=True)]
        notes = ctx.notes + (("Heatmaps are drawn on the model's crop of the photo.",) if None in boxes else ())
        notes += tuple(
            f"{key}: the attributions add up to {changes[key] + d:.2f} but the score moved by {changes[key]:.2f} "
            f"(after {steps[key]} steps): read this heatmap as approximate."
            for key, d in deltas.items()
            if not self._complete(d, changes[key])
        )
        seconds = time.perf_counter() - t0
        log.debug("%s of %s vs %s: %.2f s, steps %s, deltas %s", method, code, versus, seconds, steps, deltas)
        return Explanation(
            code=code,
            level=level,
            method=method,
            image_heatmaps=on_photo,
            words=words,
            convergence_delta=max((abs(d) for d in deltas.values()), default=None),
            seconds=seconds,
            contrast_code=versus,
            target=target,
            deltas=deltas,
            score_changes=changes,
            steps=steps,
            crop_heatmaps=crops,
            crop_boxes=boxes,
            notes=notes,
        )

    def _pooled_inputs(self, ctx: _Context) -> tuple[torch.Tensor, torch.Tensor]:
        """The product's photo features as `Classifier.encode` pools them (mean over photos). [1, C], [1, 1000]."""
        if not len(ctx.pooled):
            device = self.classifier.device
            return torch.zeros(1, self.classifier.image_tower.dim, device=device), torch.zeros(1, 1000, device=device)
        return ctx.pooled.mean(0, keepdim=True), ctx.probs.mean(0, keepdim=True)

    # -- photo ---------------------------------------------------------------------------------------------
    def _photo_forward(self, ctx: _Context, i: int, score: Scorer) -> Callable[[torch.Tensor], torch.Tensor]:
        """Pixels of photo i [B, 3, H, W] -> [B] score; the text and the other photos stay at their real values."""
        tower, n = self.classifier.image_tower, len(ctx.pooled)
        others_pooled = (ctx.pooled.sum(0) - ctx.pooled[i])[None]  # [1, C]
        others_probs = (ctx.probs.sum(0) - ctx.probs[i])[None]

        def forward(x: torch.Tensor) -> torch.Tensor:
            x = x.contiguous(memory_format=torch.channels_last)  # about 2x faster backward on CPU
            f = tower.forward_pixels(x)
            pooled, probs = (f.pooled + others_pooled) / n, (f.probs + others_probs) / n
            return score(ctx.text_emb.expand(len(x), -1), pooled, probs, ctx.has_text, True)

        return forward

    def _photo_ig(self, ctx: _Context, i: int, score: Scorer) -> tuple[np.ndarray, float, float, int]:
        """Evidence for the target over the crop: IG summed over channels, smoothed, positive part, clipped, scaled.

        Smoothing the *signed* map first cancels IG's pixel-level +/- noise; keeping the positive part shows
        where the photo supports the target (as Grad-CAM's ReLU does). |IG| maps were tried and dropped: with the
        blur baseline they are an edge map of the photo, barely changed by a randomly initialised image tower
        (Spearman 0.92-0.97 to the real tower's map; the positive part: about 0.0-0.05).
        """
        from captum.attr import IntegratedGradients

        assert ctx.pixels is not None  # photo methods run only for a query with photos
        cfg, x = self.config, ctx.pixels[i : i + 1]
        side = min(x.shape[-2:])
        baseline = _blur(x, cfg.blur_sigma * side) if cfg.baseline == "blur" else _black(x, self.classifier)
        ig = IntegratedGradients(self._photo_forward(ctx, i, score))
        n_steps = cfg.image_steps
        while True:
            attr, delta = ig.attribute(
                x,
                baselines=baseline,
                n_steps=n_steps,
                internal_batch_size=cfg.internal_batch_size,
                return_convergence_delta=True,
            )
            attr, delta = attr.detach().float(), float(delta.sum())
            change = float(attr.sum()) - delta
            if self._complete(delta, change) or n_steps >= cfg.max_image_steps:
                break
            n_steps = min(4 * n_steps, cfg.max_image_steps)
        heat = _blur(attr.sum(1, keepdim=True), cfg.smooth_sigma * side)[0, 0].clamp(min=0)  # [H, W]
        return _unit(heat.cpu().numpy(), cfg.clip_percentile), delta, change, n_steps

    def _complete(self, delta: float, change: float) -> bool:
        return abs(delta) <= self.config.rel_tolerance * abs(change) + self.config.abs_tolerance

    def _photo_grad_cam(self, ctx: _Context, i: int, score: Scorer) -> np.ndarray:
        """ReLU Grad-CAM on the image tower's last convolution, bilinearly upsampled to the crop."""
        from captum.attr import LayerAttribution, LayerGradCam

        assert ctx.pixels is not None  # photo methods run only for a query with photos
        x = ctx.pixels[i : i + 1].detach().clone().requires_grad_(True)  # gives the layer output a grad path
        cam = LayerGradCam(self._photo_forward(ctx, i, score), self._image_tap)
        with _relay(self.classifier.image_tower.last_conv, self._image_tap):
            attr = cam.attribute(x, relu_attributions=True)  # [1, 1, h, w]
        up = LayerAttribution.interpolate(attr.detach().float(), tuple(x.shape[-2:]), "bilinear")
        return _unit(up[0, 0].cpu().numpy(), 100.0)

    def _to_photo(self, crop: np.ndarray, size: tuple[int, int], box: Box | None) -> np.ndarray:
        """A crop heatmap placed where the crop lies in the photo (scaled down to max_heatmap_side)."""
        if box is None:
            return crop
        w, h = size
        s = min(1.0, self.config.max_heatmap_side / max(w, h))
        out = np.zeros((max(1, round(h * s)), max(1, round(w * s))), dtype=np.float32)
        left, top, right, bottom = (round(v * s) for v in box)
        cl, ct = max(left, 0), max(top, 0)
        cr, cb = min(right, out.shape[1]), min(bottom, out.shape[0])
        if cr <= cl or cb <= ct:
            return out
        scaled = F.interpolate(torch.from_numpy(crop)[None, None], size=(bottom - top, right - left), mode="bilinear")
        out[ct:cb, cl:cr] = scaled[0, 0, ct - top : cb - top, cl - left : cr - left].clamp(0, 1).numpy()
        return out

    # -- text ----------------------------------------------------------------------------------------------
    def _text_ig(self, ctx: _Context, score: Scorer) -> tuple[list[WordScore], float, float]:
        """LIG over the word embeddings; baseline = PAD everywhere but the special tokens; pieces summed per word."""
        from captum.attr import LayerIntegratedGradients

        tt = self.classifier.text_tower
        tok = tt.tokenizer
        enc = tok(
            [ctx.text],
            truncation=True,
            max_length=tt.max_length,
            return_tensors="pt",
            return_offsets_mapping=tok.is_fast,
            return_special_tokens_mask=True,
        )
        ids, mask = enc["input_ids"].to(tt.device), enc["attention_mask"].to(tt.device)
        special = enc["special_tokens_mask"].bool().to(tt.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        baseline = torch.where(special, ids, torch.full_like(ids, pad))
        pooled, probs = self._pooled_inputs(ctx)
        has_image = bool(ctx.photos)

        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            t = tt.forward_tokens(input_ids, attention_mask)  # [B, E]
            n = len(t)
            return score(t, pooled.expand(n, -1), probs.expand(n, -1), True, has_image)

        lig = LayerIntegratedGradients(forward, self._text_tap)
        with _relay(tt.word_embeddings, self._text_tap):
            attr, delta = lig.attribute(
                ids,
                baselines=baseline,
                additional_forward_args=(mask,),
                n_steps=self.config.text_steps,
                internal_batch_size=max(self.config.text_steps, 1),
                return_convergence_delta=True,
            )
        per_piece = attr.detach().float().sum(-1)[0].cpu()  # [L] signed
        keep = ~special[0].cpu()
        if tok.is_fast:
            words = merge_word_pieces(ctx.text, enc["offset_mapping"][0].tolist(), per_piece.tolist(), keep.tolist())
        else:
            pieces = tok.convert_ids_to_tokens(ids[0].tolist())
            words = merge_hash_pieces(pieces, per_piece.tolist(), keep.tolist())
        delta = float(delta.sum())
        return words, delta, float(per_piece.sum()) - delta


# -- helpers (pure functions, tested on their own) ----------------------------------------------------------
_WORD = re.compile(r"\S+")


def merge_word_pieces(
    text: str, offsets: Sequence[Sequence[int]], scores: Sequence[float], keep: Sequence[bool]
) -> list[WordScore]:
    """Sum word-piece scores into the whitespace-separated words they come from ("T-shirt" stays one word).

    Args:
        text: the text the tokenizer saw.
        offsets: per piece, its (start, end) character span (a fast tokenizer's offset mapping).
        scores: per piece, its attribution.
        keep: per piece, False for special tokens.

    Returns:
        The words the model read (words cut off by truncation are left out), in text order.
    """
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    totals: dict[int, float] = {}
    w = 0
    for (start, end), s, k in zip(offsets, scores, keep, strict=True):
        if not k or end <= start:
            continue
        while w < len(spans) and spans[w][1] <= start:
            w += 1
        if w == len(spans):
            break
        totals[w] = totals.get(w, 0.0) + float(s)
    return [WordScore(text[spans[j][0] : spans[j][1]], v, *spans[j]) for j, v in sorted(totals.items())]


def merge_hash_pieces(pieces: Sequence[str], scores: Sequence[float], keep: Sequence[bool]) -> list[WordScore]:
    """Fallback for slow tokenizers: "##" continuation pieces are summed into the piece before them."""
    words: list[list[Any]] = []  # [word, score], grown in place
    for p, s, k in zip(pieces, scores, keep, strict=True):
        if not k:
            continue
        if p.startswith("##") and words:
            words[-1][0] += p[2:]
            words[-1][1] += float(s)
        else:
            words.append([p, float(s)])
    return [WordScore(word, score) for word, score in words]


def crop_box(transform: object, size: tuple[int, int]) -> Box | None:
    """Where the eval transform's crop lies in a photo of `size` (w, h), or None for other transforms.

    timm's eval transform resizes the shorter side to `scale_size` and centre-crops `input_size`; this reads
    both from the transform itself (nothing hard-coded) and maps the crop back to the photo's pixels.
    """
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", [])
    resize = next((t for t in steps if isinstance(t, T.Resize)), None)
    crop = next((t for t in steps if isinstance(t, T.CenterCrop)), None)
    if resize is None or crop is None:
        return None
    rs = resize.size[0] if isinstance(resize.size, Sequence) and len(resize.size) == 1 else resize.size
    if not isinstance(rs, int):
        return None  # fixed (h, w) resize squashes the photo: not a box
    w, h = size
    scale = rs / min(w, h)
    rw, rh = (rs, int(rs * h / w)) if w <= h else (int(rs * w / h), rs)  # torchvision's rounding
    ch, cw = crop.size
    left, top = int(round((rw - cw) / 2.0)), int(round((rh - ch) / 2.0))
    return (
        round(left / scale),
        round(top / scale),
        round((left + cw) / scale),
        round((top + ch) / scale),
    )


def _unit(a: np.ndarray, percentile: float) -> np.ndarray:
    """Clip at a percentile and scale to [0, 1] (all zeros stays all zeros). float32."""
    a = np.nan_to_num(np.asarray(a, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.percentile(a, percentile)) if a.size else 0.0
    if top <= 0:
        top = float(a.max()) if a.size else 0.0
    if top <= 0:
        return np.zeros_like(a)
    return np.clip(a / top, 0.0, 1.0).astype(np.float32)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders. [N, C, H, W] -> same."""
    if sigma <= 0:
        return x
    radius = min(int(math.ceil(3 * sigma)), min(x.shape[-2:]) - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _black(x: torch.Tensor, classifier: Classifier) -> torch.Tensor:
    """A black image in the tower's normalised space: (0 - mean) / std per channel, from the data config."""
    cfg = classifier.image_tower.data_config
    mean = torch.tensor(cfg["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((0 - mean) / std).expand_as(x).clone()


def _scoring_view(model: HsJointModel) -> HsJointModel:
    """The classifier's own joint model (same parameters and buffers, shared, unchanged) with a private
    prototype cache of ordinary tensors.

    `predict` fills the model's prototype cache under `torch.inference_mode()`, and autograd cannot save
    inference tensors for the backward pass through `score()`; cloning the cache outside inference mode fixes
    that without touching the shared model. (A hook for the model's owner: let `score()` take the prototypes.)
    """
    view = copy.copy(model)  # shallow: _parameters, _buffers and _modules are the very same dicts
    cache = model._proto_cache
    with torch.no_grad():
        if cache is None:
            view._proto_cache = None
            cache = view.prototypes()  # eval mode: computed once and stored on the view only
        view._proto_cache = tuple(p.clone() for p in cache)  # type: ignore[assignment]
    return view


@contextmanager
def _relay(module: nn.Module, tap: nn.Module) -> Iterator[None]:
    """Pass `module`'s output through `tap` for forwards run by this thread only (others are untouched)."""
    owner = threading.get_ident()

    def hook(_module: nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor | None:
        return tap(output) if threading.get_ident() == owner else None

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
