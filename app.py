"""HS desk entry point: sign-in, the role-based page list, and the sidebar (who, which model).

Run with ``streamlit run app.py``. Env: ``HS_DB_URL`` (database, migrated at start), ``HS_PHOTO_DIR``
(photo store), ``HS_MODEL_DIR`` (trained model folder; zero-shot when it has no card).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import streamlit as st

from db.engine import default_db_url, safe_db_url
from db.models import utcnow
from db.queries import count_users
from screens import common
from services.auth import SESSION_TTL, authenticate, sign_out
from services.errors import ServiceError

log = logging.getLogger(__name__)

PAGES = {
    "classify": st.Page("screens/classify.py", title="Classify", icon=":material/search:", url_path="classify"),
    "batch": st.Page("screens/batch.py", title="Batch", icon=":material/playlist_add_check:", url_path="batch"),
    "my_items": st.Page("screens/my_items.py", title="My items", icon=":material/inbox:", url_path="my-items"),
    "review": st.Page("screens/review.py", title="Review", icon=":material/fact_check:", url_path="review"),
    "decision_log": st.Page(
        "screens/decision_log.py", title="Decision log", icon=":material/table_view:", url_path="decision-log"
    ),
    "models": st.Page("screens/models.py", title="Model versions", icon=":material/model_training:", url_path="models"),
}
ROLE_PAGES = {
    "broker": ("classify", "batch", "my_items"),
    "reviewer": ("review",),
    "admin": ("classify", "batch", "my_items", "review", "decision_log", "models"),
}
FIRST_ADMIN_COMMAND = "python -m db users create --username admin --role admin"
# Bundled, so the browser fetches nothing from another host (a :material/...: page icon is loaded from a font CDN).
PAGE_ICON = Path(__file__).resolve().parent / "assets" / "page_icon.png"


def sign_in_screen() -> None:
    """Username/password form; with no users at all, how to create the first admin."""
    st.title("HS desk")
    if common.in_transaction(count_users) == 0:
        url = default_db_url()
        st.info(
            "There are no users yet. Create the first admin on the server, in this app's database (the command "
            "reads the same `HS_DB_URL`; run it in the app's folder with the same environment), then sign in here:"
        )
        st.code(f"HS_DB_URL='{safe_db_url(url)}' {FIRST_ADMIN_COMMAND}", language="bash")
        if "***" in safe_db_url(url):
            st.caption("The password in the URL is hidden here; use the real one.")
        return
    with st.form("auth_sign_in"):
        username = st.text_input("Username", key="auth_username", autocomplete="username")
        password = st.text_input("Password", key="auth_password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            actor = common.in_transaction(lambda session: authenticate(session, username, password))
        except ServiceError as exc:
            st.error(str(exc))
            return
        st.session_state[common.ACTOR_KEY] = actor
        st.session_state[common.SIGNED_IN_AT_KEY] = utcnow()
        st.rerun()


def do_sign_out(reason: str | None = None) -> None:
    """Record the sign-out and forget everything this browser session held."""
    actor = common.current_actor()
    try:
        if actor is not None:
            common.in_transaction(lambda session: sign_out(session, actor))
    finally:
        st.session_state.clear()
        if reason:
            st.session_state["auth_notice"] = reason


def sidebar(actor) -> None:
    """Who is signed in, which model and nomenclature answer, and the sign-out button."""
    with st.sidebar:
        st.markdown(
            f"Signed in as **{actor.username}** ({actor.role})", help="Your role decides which screens you see."
        )
        st.button("Sign out", key="auth_sign_out", on_click=do_sign_out)
        st.divider()
        try:
            classifier, fallback_reason = common.classifier()
        except Exception as exc:  # a broken model must not lock reviewers and admins out of their screens
            log.exception("model failed to load")
            st.error(f"The model could not be loaded: {exc}")
            return
        st.caption("Model")
        kind = "" if classifier.card.kind in classifier.version else f" · {classifier.card.kind}"
        st.markdown(f"`{classifier.version}`{kind}")
        st.caption("Nomenclature")
        st.markdown(f"`{classifier.edition}`")
        if fallback_reason:
            st.warning(
                "Zero-shot mode: no trained model is installed, so the candidates come from the untrained model.",
                icon=":material/info:",
            )
            st.caption(fallback_reason)


def main() -> None:
    st.set_page_config(page_title="HS desk", page_icon=str(PAGE_ICON), layout="wide")
    actor = common.current_actor()
    signed_in_at: datetime | None = st.session_state.get(common.SIGNED_IN_AT_KEY)
    if actor is not None and (signed_in_at is None or utcnow() - signed_in_at > SESSION_TTL):
        do_sign_out("Your session expired; please sign in again.")
        actor = None
    if actor is None:
        notice = st.session_state.pop("auth_notice", None)
        if notice:
            st.info(notice)
        st.navigation([st.Page(sign_in_screen, title="Sign in", url_path="sign-in")], position="hidden").run()
        return
    sidebar(actor)
    pages = [PAGES[name] for name in ROLE_PAGES.get(actor.role, ())]
    st.navigation(pages).run()


main()
