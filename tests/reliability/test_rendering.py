"""Injected markup shows as text on the rendered screens (Streamlit AppTest on app.py, the classifier faked).

Streamlit never renders raw HTML unless ``unsafe_allow_html``; the pages also escape Markdown
(``screens.common.md``) so a description cannot turn into a link, an image or a coloured directive.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from db.queries import find_user
from screens import common
from services.auth import Actor
from services.classify import classify_and_record, submit_decision
from tests.reliability.conftest import FakeClassifier

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PASSWORD = "correct horse battery staple"
SCRIPT = "<script>alert('xss')</script>"
IMG = '<img src=x onerror="alert(document.cookie)">'
MARKDOWN = "[click](javascript:alert(1)) ![x](http://evil/x.png) :red[ALARM] **bold**"


TRIGGERS = ("<script", "<img", "<b>", "<i>", "](javascript", "![x](", ":red[", "**bold**")
ESCAPED_PAIR = re.compile(r"\\.")


def unescape(text: str) -> str:
    return text.replace("\\", "")


def rendered_markdown(at: AppTest) -> list:
    """Every element Streamlit renders as Markdown (titles, captions, alerts...), main area and sidebar."""
    kinds = ("title", "header", "subheader", "markdown", "caption", "success", "info", "warning", "error")
    return [element for kind in kinds for element in getattr(at, kind)]


def assert_shown_as_text(at: AppTest, text: str) -> None:
    """``text`` is on the screen, as plain text (st.text) or as escaped Markdown that reads as ``text``."""
    plain = [t.value for t in at.text]
    markdown = [unescape(m.value) for m in rendered_markdown(at)]
    assert any(text in v for v in plain) or any(unescape(text) in v for v in markdown), text


def assert_nothing_renders_as_markup(at: AppTest) -> None:
    for element in rendered_markdown(at):
        body = ESCAPED_PAIR.sub("", element.value)  # drop every backslash-escaped character
        assert not [t for t in TRIGGERS if t in body], element.value
        if element.type == "markdown":
            assert not element.proto.allow_html, element.value


def sign_in(app_db, username: str, role: str) -> AppTest:
    app_db.add_user(username, role, PASSWORD)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.text_input(key="auth_username").input(username)
    at.text_input(key="auth_password").input(PASSWORD)
    at.button[0].click().run().run()  # the page's next run (a browser reloads after sign-in)
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: FakeClassifier())


def test_reviewer_sees_stored_markup_as_text(app_db):
    app_db.add_user("bea", "broker", PASSWORD)
    description = f"cotton shirt {SCRIPT} {IMG}"
    justification = f"{MARKDOWN} {SCRIPT}"
    with app_db.factory.begin() as session:
        broker = Actor.from_user(find_user(session, "bea"))
        recorded = classify_and_record(
            session, FakeClassifier(), broker, text=description, photos=[], line_ref="<b>L1</b>",
            shipment_ref="S-<i>1</i>", photo_root=app_db.photo_dir,
        )  # fmt: skip
        submit_decision(
            session, broker, line_item_id=recorded.line_item_id, code="6109.10", justification=justification
        )
    at = sign_in(app_db, "rita", "reviewer")
    assert at.title[0].value == "Review submitted codes"
    for text in (description, justification, "S-<i>1</i>", "<b>L1</b>"):
        assert_shown_as_text(at, text)
    assert_nothing_renders_as_markup(at)


def test_classify_screen_echoes_a_search_as_text(app_db):
    at = sign_in(app_db, "bea", "broker")
    at.text_area(key="classify_text").input(f"shirt {SCRIPT}")
    at.button(key="classify_run").click().run()
    assert not at.exception and not at.error
    at.radio(key="classify_choice").set_value("other").run()
    query = f"{SCRIPT} {MARKDOWN}"
    at.text_input(key="classify_search").input(query).run()
    assert not at.exception
    assert_shown_as_text(at, query)
    assert_nothing_renders_as_markup(at)


@pytest.mark.parametrize("text", [SCRIPT, IMG, MARKDOWN, "# heading", "> quote", "`code`", "$x^2$", "~~strike~~"])
def test_md_escapes_every_markdown_trigger(text):
    escaped = common.md(text)
    assert unescape(escaped) == text.replace("\\", "")
    for special in "[]()<>*`#~$:":
        assert special not in escaped.replace("\\" + special, "")


# ------------------------------------------------------------------------------------------- raw HTML sinks

# Every place a page hands Streamlit raw HTML, with what makes it safe. A new one fails this test until reviewed.
RAW_HTML_SINKS = {
    ("screens/classify.py", "st.html(view.words_html)"): "hs_model.render.words_html escapes every word",
    ("app.py", "components.html("): "a fixed script; the only value in it is a session token checked to be "
    "URL-safe base64 (app.py set_cookie)",
    ("app.py", 'components.html("", height=0)'): "empty: the cookie component's place on other runs",
}


def test_raw_html_reaches_streamlit_only_through_reviewed_sinks():
    root = Path(APP).parent
    found = set()
    for path in [root / "app.py", *sorted((root / "screens").glob("*.py"))]:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "unsafe_allow_html" in line or "st.html(" in line or "components.html(" in line:
                found.add((path.relative_to(root).as_posix(), line.strip().split("#")[0].strip()))
    assert found <= set(RAW_HTML_SINKS), found - set(RAW_HTML_SINKS)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, tuple[str, ...]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, tuple(sorted(name for name, _ in attrs))))

    def handle_data(self, data):
        self.text.append(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), st.floats(-5, 5)), min_size=1, max_size=8))
def test_attributed_words_are_html_escaped(pairs):
    from hs_model.render import words_html

    words = [SimpleNamespace(word=w, score=s) for w, s in pairs]
    parser = _Tags()
    parser.feed(words_html(words))
    parser.close()
    assert parser.tags[0] == ("div", ("class", "style"))
    assert parser.tags[1:] == [("span", ("style", "title"))] * len(words)  # no tag but ours, whatever the words
    assert "".join(parser.text) == " ".join(w for w, _ in pairs)


def test_attributed_words_show_injected_markup_as_text():
    from hs_model.render import words_html

    out = words_html([SimpleNamespace(word=SCRIPT, score=1.0), SimpleNamespace(word=IMG, score=-0.5)])
    assert "<script" not in out and "<img" not in out
    assert "&lt;script&gt;" in out and "onerror=&quot;" in out
