"""The Classify screen's explanation panel (AppTest): on demand, escaped words, contrast, path, precedents."""

from __future__ import annotations

import io

from PIL import Image

from services import explanations
from services.explanations import AttributionView, ExplanationView, PhotoView
from tests.test_app_classify import classify, signed_in


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="PNG")
    return buf.getvalue()


def attribution(code: str, versus: str | None) -> AttributionView:
    from hs_model.render import words_html

    class W:
        def __init__(self, word, score):
            self.word, self.score = word, score

    return AttributionView(
        code=code,
        versus=versus,
        method="integrated_gradients",
        photos=(PhotoView("shirt.jpg", png(), png()),),
        words_html=words_html([W("<script>alert(1)</script>", 0.5), W("T-shirt", 2.0)]),
        top_words=(("T-shirt", 2.0),),
        convergence_delta=0.01,
        seconds=0.4,
        notes=(),
    )


def test_explain_panel_shows_heatmaps_words_contrast_and_no_precedents(app_db, fake_classifier, monkeypatch):
    from hs_core.nomenclature import get_nomenclature

    calls = []

    def fake_explain(classifier, actor, *, text, photos, code, level=6, method="integrated_gradients", **kw):
        calls.append((code, method))
        assert kw == {"with_contrast": False, "redo_missed_completeness": False}  # fast first answer (point 7)
        return ExplanationView(
            code=code,
            level=level,
            path=tuple(get_nomenclature().path(code)),
            main=attribution(code, None),
            contrast=attribution(code, "610510"),
        )

    monkeypatch.setattr(explanations, "explain_candidate", fake_explain)  # the page imports it on every run
    monkeypatch.setattr(
        explanations,
        "explain_runner_up",
        lambda *a, code, **kw: calls.append(("versus", code)) or attribution(code, "610510"),
    )

    at = classify(signed_in(app_db), "men's knitted cotton T-shirt")
    assert not calls  # nothing computed until asked
    at.button(key="classify_explain_run").click().run()
    assert not at.exception and not at.error
    assert calls == [("610910", "integrated_gradients")]
    markdown = " ".join(m.value for m in at.markdown)
    assert "What points to **6109.10**" in markdown or "What points to 6109.10" in markdown
    assert "rather than 6105.10" not in markdown  # the comparison comes on demand
    at.button(key="classify_contrast_run").click().run()
    assert calls[-1] == ("versus", "610910")
    markdown = " ".join(m.value for m in at.markdown)
    assert "rather than 6105.10" in markdown
    assert "Heading **6109**" in markdown
    assert any("No precedents yet" in c.value for c in at.caption)
    html = " ".join(h.proto.body for h in at.get("html"))
    assert "&lt;script&gt;" in html and "<script>" not in html
