"""Shared resources of the screens: the cached classifier and session factory, the signed-in actor."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from db.engine import default_db_url, make_engine, make_session_factory, run_transaction, upgrade
from db.models import utcnow
from db.photos import default_photo_root
from services.auth import Actor
from services.classify import format_code, load_classifier, resolve_model_dir
from services.comments import MAX_COMMENT_CHARS, add_comment, item_comments
from services.errors import ServiceError
from services.models import active_model_dir
from services.review import item_detail

log = logging.getLogger(__name__)

T = TypeVar("T")

ACTOR_KEY = "auth_actor"
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_{}[]()#+-.!|<>~$:"})
SIGNED_IN_AT_KEY = "auth_signed_in_at"
TOKEN_KEY = "auth_token"  # this browser's server-side session (services.sessions)


@st.cache_resource(show_spinner="Loading the HS model…")
def get_base_classifier() -> Any:
    """The towers and the official label texts, loaded once; every model version is a small head on top."""
    return load_classifier(None)


@st.cache_resource(show_spinner="Loading the model version…")
def get_classifier(model_dir: str | None) -> Any:
    """One classifier per model folder, shared read-only by every session (``None``: zero-shot)."""
    base = get_base_classifier()
    return load_classifier(Path(model_dir), base) if model_dir else base


def classifier() -> tuple[Any, str | None]:
    """The active model version from the registry (no restart needed after an activation), else the shipped
    model folder; when the zero-shot fallback is used, or the active version is refused, why."""
    refused = None
    try:
        active = in_transaction(active_model_dir)
    except ServiceError as exc:
        log.error("active model version refused: %s", exc)
        active, refused = None, f"The active model version was refused: {exc}"
    if active is not None:
        return get_classifier(str(active)), None
    folder, fallback_reason = resolve_model_dir()
    return get_classifier(str(folder) if folder else None), refused or fallback_reason


@st.cache_resource(show_spinner="Opening the database…")
def get_session_factory(url: str) -> Any:
    """Migrate the database to the latest schema once, then hand out one session factory per URL."""
    upgrade(url)
    return make_session_factory(make_engine(url))


def session_factory() -> Any:
    """The session factory of the configured database (env ``HS_DB_URL``)."""
    return get_session_factory(default_db_url())


def in_transaction(fn: Callable[[Any], T]) -> T:
    """Run ``fn(session)`` as one transaction (one user action), retried when the database is busy."""
    return run_transaction(session_factory(), fn)


def load_or_stop(fn: Callable[[Any], T]) -> T:
    """What a screen needs before it can draw anything: ``fn(session)``, or the service's refusal shown and the
    script stopped (nothing else of the screen is drawn)."""
    try:
        return in_transaction(fn)
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        st.stop()
        raise  # st.stop() raises; this line is for type checkers


def item_detail_or_error(item_id: int) -> Any:
    """One line item as the reviewer and broker screens show it (photos, candidates, history), or the service's
    refusal shown in place (returns None)."""
    actor = current_actor()
    try:
        return in_transaction(lambda session: item_detail(session, actor, item_id, photo_root=photo_root()))
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return None


LONG_TEXT_CHARS = 600  # longer descriptions scroll in a box instead of making the page thousands of pixels tall


def long_text(text: str, height: int = 220) -> None:
    """A stored description as plain text; a long one scrolls inside a box of ``height`` pixels."""
    if len(text) <= LONG_TEXT_CHARS:
        st.text(text)
        return
    with st.container(height=height):
        st.text(text)
    st.caption(f"{len(text):,} characters; scroll the box to read all of it.")


def follow_item_link(key: str, options) -> None:
    """Open the item a link asked for (``?item=12``) in the pick list ``key``, once, if it is offered there.

    Only items of ``options`` (what the service already let this user see) can be opened; another number is
    named and ignored.
    """
    wanted = st.query_params.get("item")
    if wanted is None or st.session_state.get(f"{key}_linked") == wanted:
        return
    st.session_state[f"{key}_linked"] = wanted
    item_id = int(wanted) if wanted.isdigit() else None
    if item_id in options:
        st.session_state[key] = item_id
    else:
        st.caption(f":orange[:material/link_off: Item {md(wanted[:12])} from the link is not in this list.]")


def link_to_item(key: str, item_id: int | None) -> None:
    """Keep the address bar on the item open in pick list ``key``, so a refresh or a bookmark comes back to it."""
    if item_id is not None and st.query_params.get("item") != str(item_id):
        st.query_params["item"] = str(item_id)
        st.session_state[f"{key}_linked"] = str(item_id)


def _on_comment(item_id: int, key: str) -> None:
    actor = current_actor()
    body = st.session_state.get(key, "")
    try:
        in_transaction(lambda session: add_comment(session, actor, item_id, body))
    except ServiceError as exc:
        st.session_state[f"{key}_error"] = str(exc)
        return
    st.session_state[key] = ""


def comment_thread(item_id: int) -> None:
    """An item's comment thread between its broker and the reviewers, and a box to add to it."""
    st.markdown("**Comments**")
    try:
        thread = in_transaction(lambda session: item_comments(session, current_actor(), item_id))
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return
    for c in thread:
        st.markdown(f"{c.at:%Y-%m-%d %H:%M} UTC · **{md(c.username)}** ({c.role})  \n{md(' '.join(c.body.split()))}")
    if not thread:
        st.caption("No comments yet. Ask or answer here instead of rejecting and guessing.")
    key = f"comment_body_{item_id}"
    error = st.session_state.pop(f"{key}_error", None)
    if error:
        st.error(md(error), icon=":material/error:")
    with st.form(f"comment_form_{item_id}", border=False):
        st.text_area("Add a comment", key=key, height=80, max_chars=MAX_COMMENT_CHARS)
        st.form_submit_button("Post comment", key=f"comment_post_{item_id}", on_click=_on_comment, args=(item_id, key))


def show_notice(key: str) -> None:
    """The confirmation a callback left in ``st.session_state[key]`` for the next run, shown once."""
    notice = st.session_state.pop(key, None)
    if notice:
        st.success(md(notice), icon=":material/check_circle:")


def deferred(fn: Callable[[Any], T]) -> Callable[[], T]:
    """``fn(session)`` as a no-argument callable run later in its own transaction, on any thread.

    For work done when a button is clicked rather than when the page is drawn (``st.download_button(data=...)``
    runs its callable off the script thread, where the cached factory cannot be looked up).
    """
    factory = session_factory()
    return lambda: run_transaction(factory, fn)


def photo_root() -> Path:
    """Where uploaded photos are stored (env ``HS_PHOTO_DIR``)."""
    return default_photo_root()


def current_actor() -> Actor | None:
    """The signed-in user of this browser session, or ``None``."""
    return st.session_state.get(ACTOR_KEY)


def md(text: str) -> str:
    """Escape Markdown (and Streamlit's :color[] / :icon: directives) so text renders literally."""
    return text.translate(_MD_SPECIAL)


def ago(at: datetime | None) -> str:
    """How long ago an aware UTC time was, roughly: "just now", "5 min ago", "3 h ago", "2 days ago"."""
    if at is None:
        return "—"
    seconds = max(0, int((utcnow() - at).total_seconds()))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    days = seconds // 86400
    return "1 day ago" if days == 1 else f"{days} days ago"


_KIND_ICONS = {
    "submitted": ":material/send:",
    "approved": ":material/check_circle:",
    "corrected": ":material/edit:",
    "rejected": ":material/undo:",
}


def history_markdown(history) -> str:
    """A line item's decisions (``services.review.HistoryEntry``), oldest first, as an escaped Markdown list."""
    lines = []
    for d in history:
        code = f" **{format_code(d.code)}**" if d.code else ""
        line = (
            f"- {_KIND_ICONS.get(d.kind, '')} {d.at:%Y-%m-%d %H:%M} UTC · {md(d.username)} ({d.role}): {d.kind}{code}"
        )
        if d.comment:
            line += f"  \n  _{md(' '.join(d.comment.split()))}_"
        lines.append(line)
    return "\n".join(lines) or "No decisions yet."
