"""Overlay PNGs and highlighted words: sizes, alignment, colours, escaping (no model needed)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from hs_model.render import overlay_png, words_html


@dataclass
class Word:
    word: str
    score: float


def decode(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    return img.convert("RGB")


@pytest.mark.parametrize("size", [(224, 224), (400, 250), (90, 300), (17, 40)])
def test_png_decodes_at_the_photos_size(size):
    photo = Image.new("RGB", size, (255, 255, 255))
    png = overlay_png(photo, np.random.default_rng(0).random((size[1] // 2 + 1, size[0] // 2 + 1)), "6109 (IG)")
    assert decode(png).size == size


def test_large_photos_are_scaled_down_keeping_their_shape():
    png = overlay_png(Image.new("RGB", (3000, 2000)), np.zeros((20, 30)), "big", max_side=1200)
    assert decode(png).size == (1200, 800)


def test_heat_lands_where_the_heatmap_says():
    """A hot square in the heatmap's top-left quarter colours that part of the photo, not the rest."""
    photo = Image.new("RGB", (300, 200), (128, 128, 128))
    heat = np.zeros((100, 150), np.float32)
    heat[10:40, 10:60] = 1.0  # photo pixels x 20..120, y 20..80
    out = np.asarray(decode(overlay_png(photo, heat, "")), dtype=np.int16)
    grey = np.array([128, 128, 128])
    assert np.abs(out[50, 70] - grey).sum() > 100  # inside the hot square: coloured
    assert np.abs(out[150, 150] - grey).sum() < 6  # cold and far from the title and legend: the photo as it is


def test_misshapen_heatmaps_are_refused():
    with pytest.raises(ValueError, match="shape"):
        overlay_png(Image.new("RGB", (400, 100)), np.zeros((100, 100)), "x")
    with pytest.raises(ValueError, match="2-D"):
        overlay_png(Image.new("RGB", (100, 100)), np.zeros((3, 10, 10)), "x")


def test_title_is_drawn_as_text_not_markup():
    png = overlay_png(Image.new("RGB", (224, 224)), np.zeros((7, 7)), "$\\alpha$ <b>6109</b> " * 4)
    assert decode(png).size == (224, 224)


def test_words_are_escaped():
    html = words_html([Word("<script>alert(1)</script>", 0.5), Word('"quoted"&', -0.2)])
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;quoted&quot;&amp;" in html
    assert html.count("<span") == 2


def test_word_colours_follow_sign_and_strength():
    html = words_html([Word("knitted", 2.0), Word("for", -1.0), Word("men", 0.0)])
    spans = re.findall(r"rgba\((\d+), (\d+), (\d+), ([\d.]+)\)[^>]*>(\w+)<", html)
    colour = {w: (int(r), int(g), float(a)) for r, g, _, a, w in spans}
    assert colour["knitted"][1] > colour["knitted"][0] and colour["knitted"][2] == pytest.approx(0.75)  # green
    assert colour["for"][0] > colour["for"][1] and colour["for"][2] == pytest.approx(0.375)  # red, half as strong
    assert colour["men"][2] == 0
    assert words_html([]) == '<div class="hs-words" style="line-height: 2"></div>'
