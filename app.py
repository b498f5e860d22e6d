"""HS desk entry point: sign-in, the role-based page list, and the sidebar (who, which model).

Run with ``streamlit run app.py``. Env: ``HS_DB_URL`` (database, migrated at start), ``HS_PHOTO_DIR``
(photo store), ``HS_MODEL_DIR`` (trained model folder; zero-shot when it has no card).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import streamlit as st
import streamlit.components.v1 as components

from db.engine import default_db_url, safe_db_url
from db.models import utcnow
from db.queries import count_users
from screens import common
from services.auth import SESSION_TTL, authenticate
from services.errors import ServiceError
from services.sessions import COOKIE_NAME, end_session, resume_session, start_session

log = logging.getLogger(__name__)

# name -> (script, title, icon, url path): the url paths are read from here, not from the st.Page objects, whose
# url_path exists only inside a running app (so `import app` in a bare interpreter, e.g. a spawned worker of a
# test process, does not fail).
PAGE_SPECS = {
    "classify": ("screens/classify.py", "Classify", ":material/search:", "classify"),
    "batch": ("screens/batch.py", "Batch", ":material/playlist_add_check:", "batch"),
    "my_items": ("screens/my_items.py", "My items", ":material/inbox:", "my-items"),
    "review": ("screens/review.py", "Review", ":material/fact_check:", "review"),
    "decision_log": ("screens/decision_log.py", "Decision log", ":material/table_view:", "decision-log"),
    "models": ("screens/models.py", "Model versions", ":material/model_training:", "models"),
    "history": ("screens/history.py", "Classification history", ":material/history:", "history"),
}
PAGES = {
    name: st.Page(script, title=title, icon=icon, url_path=url)
    for name, (script, title, icon, url) in PAGE_SPECS.items()
}
ROLE_PAGES = {
    "broker": ("classify", "batch", "my_items"),
    "reviewer": ("review",),
    "admin": ("classify", "batch", "my_items", "review", "decision_log", "models", "history"),
}
FIRST_ADMIN_COMMAND = "python -m db users create --username admin --role admin"
COOKIE_PENDING = "auth_cookie_pending"  # the token to store in the browser (None: to forget) on this run
SIGNED_OUT_KEY = "auth_signed_out"
WANTED_KEY = "auth_wanted_page"  # the page a signed-out deep link asked for
_TOKEN_CHARS = re.compile(r"(?:[A-Za-z0-9_-]{20,128})?")  # secrets.token_urlsafe output, or "" to forget it
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
        token = common.in_transaction(lambda session: start_session(session, actor))
        st.session_state[common.ACTOR_KEY] = actor
        st.session_state[common.SIGNED_IN_AT_KEY] = utcnow()
        st.session_state[common.TOKEN_KEY] = token
        # No rerun into the app here: the browser stores the token first and then reloads the page, whose new
        # session signs in from it. Drawing the app at once left a window in which a reconnect or an F5 (before
        # the cookie script had run) found no cookie and showed the sign-in form again, with no notice. (This
        # session is signed in too, so a browser that keeps no cookie still works in this tab until a refresh.)
        # A deep link opens after sign-in when the role has its page; any other address opens the role's first page.
        st.info("Signed in. Opening HS desk…", icon=":material/login:")
        wanted = st.session_state.get(WANTED_KEY)
        deep_link = wanted in ROLE_PAGES.get(actor.role, ())
        set_cookie(token, then="reload" if deep_link else "home")
        st.caption(
            "HS desk keeps you signed in with a cookie of this site. If the page does not open, your browser keeps "
            "no cookie for this site: allow cookies for it (without, a refresh signs you out)."
        )


def set_cookie(token: str | None, then: Literal["stay", "reload", "home"] = "stay") -> None:
    """Store the session token in this browser (``None``: forget it), from a zero-height same-origin frame.

    Path ``/``, ``SameSite=Strict`` (never sent by another site's links or forms), ``Secure`` when the app is
    served over HTTPS, and it lives no longer than the server-side session. A script sets it, so it is not
    HttpOnly: see SECURITY.md. ``then``: once the browser holds the cookie, reload the page (``reload``: a new
    session that signs in from it, on the address asked for) or open the app's first page (``home``: the address
    asked for is not one of the role's pages); ``stay``: nothing more.
    """
    value = token or ""
    if not _TOKEN_CHARS.fullmatch(value):  # the script below embeds it: URL-safe base64 only, never markup
        raise ValueError("not a session token")
    age = int(SESSION_TTL.total_seconds()) if token else 0
    # The frame is sandboxed without top navigation, so the navigation is a script of the page itself.
    navigate = {
        "stay": "",
        "reload": "location.reload()",
        "home": "location.replace(location.pathname.replace(/[^/]*$/,''))",
    }[then]
    after = (
        "if(w.document.cookie.indexOf(c)>=0){var s=w.document.createElement('script');"
        f's.textContent="{navigate}";w.document.head.appendChild(s);}}'
        if navigate
        else ""
    )
    components.html(
        "<script>(function(){var w=window.parent;"
        "var secure=w.location.protocol==='https:'?'; Secure':'';"
        f"var c='{COOKIE_NAME}={value}';"
        f"w.document.cookie=c+'; Path=/; Max-Age={age}; SameSite=Strict'+secure;"
        f"{after}"
        "})();</script>",
        height=0,
    )


def cookie_slot() -> None:
    """The cookie component's place on a run with nothing to store (see `main`)."""
    components.html("", height=0)


def wanted_page() -> str | None:
    """The app page (name) a signed-out browser's address asks for, so it opens after sign-in if the role has it
    (the reload after sign-in keeps the address, query included: ``/review?item=12``)."""
    try:
        parts = urlsplit(st.context.url or "")
    except Exception:  # noqa: BLE001 - no URL (tests) means no deep link
        return None
    path = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return {url: name for name, (_, _, _, url) in PAGE_SPECS.items()}.get(path)


def resume_from_cookie() -> None:
    """A new browser session (refresh, typed URL, bookmark): sign the user back in from the session cookie."""
    token = st.context.cookies.get(COOKIE_NAME) if st.context.cookies else None
    if not token:
        return
    actor = common.in_transaction(lambda session: resume_session(session, token))
    if actor is None:
        st.session_state[COOKIE_PENDING] = None  # ended or expired: forget it in the browser too
        return
    st.session_state[common.ACTOR_KEY] = actor
    st.session_state[common.SIGNED_IN_AT_KEY] = utcnow()
    st.session_state[common.TOKEN_KEY] = token


def do_sign_out(reason: str | None = None) -> None:
    """Record the sign-out and forget everything this browser session held."""
    actor = common.current_actor()
    token = st.session_state.get(common.TOKEN_KEY)
    try:
        if actor is not None or token:
            common.in_transaction(lambda session: end_session(session, token, actor))
    finally:
        st.session_state.clear()
        st.session_state[COOKIE_PENDING] = None  # forget the token in the browser as well
        st.session_state[SIGNED_OUT_KEY] = True  # a cookie the browser still sends must not sign in again
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


def signed_out_pages() -> list:
    """Before sign-in every address draws the sign-in screen: the default page, and one hidden page per app page's
    address, so a link to ``/review`` shows the sign-in screen instead of Streamlit's "Page not found" pop-up over it.

    They draw nothing but the sign-in form. After sign-in the navigation holds only the role's pages: a page with the
    same address opens when the role has it (Streamlit names a page by its address), otherwise the role's first page.
    """
    shims = [st.Page(sign_in_screen, title="Sign in", url_path=url) for _, _, _, url in PAGE_SPECS.values()]
    return [st.Page(sign_in_screen, title="Sign in", url_path="sign-in", default=True), *shims]


def main() -> None:
    st.set_page_config(page_title="HS desk", page_icon=str(PAGE_ICON), layout="wide")
    if common.current_actor() is None and not st.session_state.get(SIGNED_OUT_KEY):
        resume_from_cookie()
    actor = common.current_actor()
    signed_in_at: datetime | None = st.session_state.get(common.SIGNED_IN_AT_KEY)
    token = st.session_state.get(common.TOKEN_KEY)
    if actor is not None and (signed_in_at is None or utcnow() - signed_in_at > SESSION_TTL):
        do_sign_out("Your session expired; please sign in again.")
        actor = None
    elif actor is not None and token and common.in_transaction(lambda s: resume_session(s, token)) is None:
        do_sign_out("Your session has ended (signed out elsewhere, expired, or the account changed); please sign in.")
        actor = None
    # Always one component, first, at the same place: appearing on one run and gone on the next, it shifted every
    # element after it and Streamlit briefly showed the page's widgets twice (stale copies during the rerun).
    if COOKIE_PENDING in st.session_state:
        set_cookie(st.session_state.pop(COOKIE_PENDING))
    else:
        cookie_slot()
    if actor is None:
        notice = st.session_state.pop("auth_notice", None)
        if notice:
            st.info(notice)
        wanted = wanted_page()
        if wanted is not None:
            st.session_state[WANTED_KEY] = wanted
        # Just signed out (or ended) in this browser session: the sign-in page alone, so the page the user was on is
        # not found and Streamlit silently opens the default one. Its shim (same address) would be redrawn in place
        # instead, and the browser cleared the form while it moved to the page's address (a sign-in typed at that
        # moment arrived empty).
        pages = signed_out_pages() if not st.session_state.get(SIGNED_OUT_KEY) else signed_out_pages()[:1]
        st.navigation(pages, position="hidden").run()
        return
    sidebar(actor)
    st.navigation([PAGES[name] for name in ROLE_PAGES.get(actor.role, ())]).run()


main()
