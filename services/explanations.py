"""Explanations for the Classify screen: photo heatmaps, highlighted words, "why A not B", path and precedents."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hs_core.nomenclature import PathNode
from hs_model.errors import InputError
from services.auth import Actor, require_role
from services.classify import UploadedPhoto, official_path
from services.errors import InvalidInput

if TYPE_CHECKING:  # torch and captum are imported only where an explanation is computed
    from PIL import Image

    from hs_model.explain import Explanation
    from hs_model.predict import Classifier

Method = Literal["integrated_gradients", "grad_cam"]
METHOD_LABELS: dict[str, str] = {
    "integrated_gradients": "Integrated gradients (pixels; finer, a few seconds)",
    "grad_cam": "Grad-CAM (last convolution; coarse, fast)",
}


@dataclass(frozen=True)
class PhotoView:
    """One uploaded photo beside its attribution overlay (PNG bytes)."""

    name: str
    original_png: bytes
    overlay_png: bytes


@dataclass(frozen=True)
class AttributionView:
    """One attribution (a code, or a code against another) ready to draw."""

    code: str
    versus: str | None
    method: str
    photos: tuple[PhotoView, ...]
    words_html: str  # every word HTML-escaped by hs_model.render.words_html
    top_words: tuple[tuple[str, float], ...]
    convergence_delta: float | None
    seconds: float
    notes: tuple[str, ...]


@dataclass(frozen=True)
class ExplanationView:
    """What the screen shows for one candidate."""

    code: str
    level: int
    path: tuple[PathNode, ...]
    main: AttributionView
    contrast: AttributionView | None  # against the best other candidate at the same level


def explain_candidate(
    classifier: Classifier,
    actor: Actor | None,
    *,
    text: str | None,
    photos: Sequence[UploadedPhoto],
    code: str,
    level: int = 6,
    method: Method = "integrated_gradients",
    with_contrast: bool = True,
    redo_missed_completeness: bool = True,
) -> ExplanationView:
    """Attribute a candidate's score to the photos and words, and contrast it with the runner-up.

    Args:
        with_contrast: Also explain "this code rather than the runner-up" (as long again; the app asks for it
            separately, on demand, so the first answer comes fast).
        redo_missed_completeness: Redo a photo's integrated gradients at 4x the steps when the first run misses
            completeness (`hs_model.explain.ExplainConfig.max_image_steps`). Off in the app: a heatmap that
            misses it carries a note saying "approximate" instead of taking four times as long.

    Raises:
        PermissionDenied: nobody signed in.
        InvalidInput: no usable input, an invalid code, or a code that is not among the candidates.
    """
    require_role(actor, "broker", "reviewer", "admin", action="see explanations")
    from hs_model.explain import ExplainConfig, Explainer
    from hs_model.predict import Query, decode_images

    try:
        images = decode_images([p.data for p in photos], [p.name for p in photos])
        query = Query(text, images)
        config = (
            ExplainConfig() if redo_missed_completeness else ExplainConfig(max_image_steps=ExplainConfig().image_steps)
        )
        explainer = Explainer(classifier, config)  # cheap: private identity taps; the classifier's lock serialises
        # The candidates the broker sees are the served ranking (the head, the precedents' vote, the evidence and
        # tempered splits); the explainer's own ranking is the head's alone, so a code on screen may be missing
        # from it. Check the code against what is served, then explain it as it is.
        ranked = [c.code for c in classifier.predict(text, images, top_k=5).levels[level]]
        if code not in ranked:
            raise InvalidInput(
                f"{code} is not among the {len(ranked)} candidates at {level} digits ({', '.join(ranked)}); "
                "pick one of them."
            )
        main = explainer.explain(query, code, level, method=method, require_candidate=False)
        contrast = None
        if with_contrast:
            runner_up = next((c for c in ranked if c != main.code), None)
            if runner_up is not None:
                contrast = explainer.explain(query, main.code, level, method=method, versus=runner_up)
    except InputError as exc:
        raise InvalidInput(str(exc)) from None

    return ExplanationView(
        code=main.code,
        level=level,
        path=tuple(official_path(main.code)),
        main=_view(main, photos, images),
        contrast=_view(contrast, photos, images) if contrast is not None else None,
    )


def explain_runner_up(
    classifier: Classifier,
    actor: Actor | None,
    *,
    text: str | None,
    photos: Sequence[UploadedPhoto],
    code: str,
    level: int = 6,
    method: Method = "integrated_gradients",
) -> AttributionView | None:
    """On demand: why ``code`` rather than the best other candidate at its level (None: there is no other).

    Raises:
        PermissionDenied: nobody signed in.
        InvalidInput: no usable input or an invalid code.
    """
    require_role(actor, "broker", "reviewer", "admin", action="see explanations")
    from hs_model.explain import ExplainConfig, Explainer
    from hs_model.predict import Query, decode_images

    try:
        images = decode_images([p.data for p in photos], [p.name for p in photos])
        ranked = [c.code for c in classifier.predict(text, images, top_k=5).levels[level]]
        runner_up = next((c for c in ranked if c != code), None)
        if runner_up is None:
            return None
        config = ExplainConfig(max_image_steps=ExplainConfig().image_steps)  # no 4x redo in the app
        contrast = Explainer(classifier, config).explain(
            Query(text, images), code, level, method=method, versus=runner_up
        )
    except InputError as exc:
        raise InvalidInput(str(exc)) from None
    return _view(contrast, photos, images)


def _view(e: Explanation, photos: Sequence[UploadedPhoto], images: Sequence[Image.Image]) -> AttributionView:
    """Plain data for the page: PNGs of each photo and its heatmap, the shaded words, the numbers."""
    from hs_model.render import overlay_png, words_html

    title = e.code + (f" rather than {e.contrast_code}" if e.contrast_code else "")
    views = tuple(
        PhotoView(p.name, _png(img), overlay_png(img, heat, title, box=box))
        for p, img, heat, box in zip(photos, images, e.image_heatmaps, e.crop_boxes, strict=True)
    )
    top = sorted(e.words, key=lambda w: -w.score)[:5]
    return AttributionView(
        code=e.code,
        versus=e.contrast_code,
        method=e.method,
        photos=views,
        words_html=words_html(e.words) if e.words else "",
        top_words=tuple((w.word, float(w.score)) for w in top if w.score > 0),
        convergence_delta=e.convergence_delta,
        seconds=e.seconds,
        notes=tuple(e.notes),
    )


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
