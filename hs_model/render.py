"""Explanations as things a page can show: heatmap overlays as PNG bytes, attributed words as escaped HTML.

Plain numpy, Pillow and matplotlib (Agg, no pyplot state): no torch here, so a page may import this module.
"""

from __future__ import annotations

import html
import io
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # types only: this module never imports torch
    from hs_model.explain import Explanation, ExplanationSet

_RENDER_LOCK = threading.Lock()  # matplotlib's font and text caches are not thread-safe
_DPI = 100
_POSITIVE = (22, 163, 74)  # green: pushes towards the code
_NEGATIVE = (220, 38, 38)  # red: pushes away from it


class WordLike(Protocol):
    @property
    def word(self) -> str: ...
    @property
    def score(self) -> float: ...


def overlay_png(
    photo: Image.Image,
    heatmap: np.ndarray,
    title: str,
    *,
    box: tuple[int, int, int, int] | None = None,
    alpha: float = 0.6,
    cmap: str = "turbo",
    grey: bool = True,
    max_side: int = 1600,
) -> bytes:
    """The photo with the heatmap blended over it, a title and a colour-bar legend, as PNG bytes.

    The PNG has the photo's size (scaled down to `max_side` on its long side for very large photos); the
    title and the legend are drawn inside it. Opacity grows with the heat, so cold regions show the photo itself
    (in greyscale by default) instead of a blue wash.

    Args:
        photo: the photo the heatmap belongs to (any mode; drawn as RGB).
        heatmap: [h, w] values in [0, 1] with the photo's aspect ratio (any resolution; resized here).
        title: one line drawn at the top (plain text, not markup).
        box: (left, top, right, bottom) in the photo's pixels: drawn dashed (the crop the model saw).
        alpha: opacity of the colour at heat 1.
        cmap: a matplotlib colour map name.
        grey: draw the photo in greyscale under the colours, so the heat reads on a product of any colour.
        max_side: photos longer than this are scaled down first.

    Raises:
        ValueError: an empty heatmap, or one whose aspect ratio is not the photo's (it would be misaligned).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32)).clip(0.0, 1.0)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, not shape {heat.shape}")
    rgb = photo.convert("RGB")
    w0, h0 = rgb.size
    if abs((heat.shape[1] / heat.shape[0]) / (w0 / h0) - 1) > 0.05 and min(heat.shape) > 8:
        raise ValueError(f"heatmap {heat.shape[1]}x{heat.shape[0]} does not have the photo's shape ({w0}x{h0})")
    scale = min(1.0, max_side / max(w0, h0))
    if scale < 1.0:
        rgb = rgb.resize((max(1, round(w0 * scale)), max(1, round(h0 * scale))), Image.Resampling.LANCZOS)
    w, h = rgb.size
    heat = np.asarray(Image.fromarray(heat, mode="F").resize((w, h), Image.Resampling.BILINEAR)).clip(0.0, 1.0)
    colours = colormaps[cmap](heat)[..., :3]  # [h, w, 3] in 0..1
    a = (alpha * heat)[..., None]
    base = rgb.convert("L").convert("RGB") if grey else rgb  # a red product would hide red heat
    blended = (np.asarray(base, dtype=np.float32) / 255.0 * (1 - a) + colours * a).clip(0.0, 1.0)

    px = float(np.clip(0.05 * min(w, h), 7, 32))  # font size in pixels, readable from 224 px photos up
    title_px = min(px, (w - px) / (0.6 * max(len(title), 1)))  # shrink a long title to fit the width
    if title_px < 6:
        keep = max(1, int((w - px) / (0.6 * 6)) - 1)
        title, title_px = title[:keep] + "\u2026", 6.0
    pt = px * 72 / _DPI
    with _RENDER_LOCK:
        fig = Figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(blended, interpolation="nearest")
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_axis_off()
        if box is not None:
            left, top, right, bottom = (v * scale for v in box)
            ax.add_patch(
                Rectangle((left, top), right - left, bottom - top, fill=False, ec="white", lw=1, ls="--", alpha=0.9)
            )
        ax.text(
            px * 0.4,
            px * 0.4,
            title,
            fontsize=title_px * 72 / _DPI,
            va="top",
            ha="left",
            color="black",
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 2},
        )
        bar_w, bar_h = max(4.0, px * 0.6) / w, min(0.5, 6 * px / h)
        cax = fig.add_axes((1 - bar_w - 0.5 * px / w, 0.5 * px / h, bar_w, bar_h))
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps[cmap]), cax=cax, ticks=[0, 1])
        bar.ax.yaxis.set_ticks_position("left")  # labels inside the picture
        bar.ax.set_yticklabels(["low", "high"], fontsize=pt * 0.8, color="black")
        bar.ax.tick_params(length=0, pad=1)
        bar.outline.set_linewidth(0.5)
        for t in bar.ax.get_yticklabels():
            t.set_bbox({"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 0.5})
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def words_html(words: Iterable[WordLike]) -> str:
    """The description with each word shaded by its attribution: green for, red against, stronger = larger |score|.

    Every word is HTML-escaped (a description holding `<script>` shows as text); the score is in the title.
    """
    words = list(words)
    peak = max((abs(float(w.score)) for w in words), default=0.0)
    spans = []
    for w in words:
        s = float(w.score)
        strength = abs(s) / peak if peak > 0 else 0.0
        r, g, b = _POSITIVE if s >= 0 else _NEGATIVE
        style = f"background-color: rgba({r}, {g}, {b}, {0.75 * strength:.3f}); padding: 1px 3px; border-radius: 3px"
        spans.append(f'<span title="{s:+.4f}" style="{style}">{html.escape(str(w.word), quote=True)}</span>')
    return f'<div class="hs-words" style="line-height: 2">{" ".join(spans)}</div>'


def write_explanation_set(result: ExplanationSet, photos: Sequence[Image.Image], out: Path) -> dict[str, Any]:
    """Overlay PNGs (IG, Grad-CAM, contrast; one per photo) and words.html under `out`; the JSON summary.

    The summary is the IG explanation's `to_json` with `image_heatmaps` = its PNG paths, plus `grad_cam` and
    `contrast` (each with its own PNG paths), the candidates, and the total `seconds`.
    """
    out.mkdir(parents=True, exist_ok=True)

    def pngs(e: Explanation | None, tag: str) -> list[str]:
        if e is None:
            return []
        paths = []
        title = f"{e.code}" + (f" rather than {e.contrast_code}" if e.contrast_code else "") + f" ({tag})"
        for i, (p, heat, box) in enumerate(zip(photos, e.image_heatmaps, e.crop_boxes, strict=True)):
            path = out / f"photo{i + 1}-{tag}.png"
            path.write_bytes(overlay_png(p, heat, title, box=box))
            paths.append(str(path))
        return paths

    ig, cam, contrast = result.integrated_gradients, result.grad_cam, result.contrast
    summary = ig.to_json(pngs(ig, "integrated-gradients"))
    summary["seconds"] = round(result.seconds, 3)
    summary["grad_cam"] = cam.to_json(pngs(cam, "grad-cam")) if cam else None
    summary["contrast"] = contrast.to_json(pngs(contrast, "contrast")) if contrast else None
    summary["candidates"] = [c.to_dict() for c in result.candidates]
    if ig.words:
        (out / "words.html").write_text(words_html(ig.words), encoding="utf-8")
        summary["words_html"] = str(out / "words.html")
    return summary
