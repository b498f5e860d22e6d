"""Classification history screen (admins): import past declarations (checked row by row first), list the imports,
retract one."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from screens import common
from screens.common import md
from services.errors import ServiceError
from services.history import check_upload, import_upload, list_imports, retract_import

NOTICE = "history_notice"
CHECKED = "history_checked"

st.session_state.setdefault("history_round", 0)  # bumped to empty the uploaders


def clear_check() -> None:
    st.session_state.pop(CHECKED, None)


def upload_form() -> None:
    st.subheader("Import a history")
    st.caption(
        "A CSV (UTF-8, comma or semicolon) or XLSX of past declarations: **description** and **code** (6, 8 or 10 "
        "digits; the first 6 must be an HS 2022 subheading), optionally **sku**, **importer**, **date** "
        "(YYYY-MM-DD) and **photos** (file names in the zip, separated by ;). Every line is checked first; a file "
        "with any problem is not imported at all: fix the lines listed and upload it again."
    )
    left, right = st.columns(2)
    key = st.session_state["history_round"]
    file = left.file_uploader("History file", type=["csv", "xlsx"], key=f"history_file_{key}", on_change=clear_check)
    photos = right.file_uploader(
        "Photos (zip, optional)", type=["zip"], key=f"history_zip_{key}", on_change=clear_check
    )
    if st.button("Check the file", disabled=file is None, key="history_check", icon=":material/rule:"):
        actor = common.current_actor()
        try:
            with st.spinner("Checking every line…"):
                st.session_state[CHECKED] = check_upload(
                    actor,
                    file.name,
                    file.getvalue(),
                    photos.name if photos else None,
                    photos.getvalue() if photos else None,
                )
        except ServiceError as exc:
            st.error(md(str(exc)), icon=":material/error:")
            clear_check()


def checked_result() -> None:
    upload = st.session_state.get(CHECKED)
    if upload is None:
        return
    checked = upload.file
    if checked.ignored_columns:
        st.caption(md(f"Columns not used: {', '.join(checked.ignored_columns)}."))
    if checked.total_problems:
        st.error(
            f"**{checked.total_problems:,} problem(s) in {md(checked.name)}**: nothing will be imported. "
            f"{len(checked.rows):,} line(s) are fine.",
            icon=":material/error:",
        )
        frame = pd.DataFrame(
            {"Line": [p.line for p in checked.problems], "Problem": [p.problem for p in checked.problems]}
        )
        st.dataframe(frame, hide_index=True, width="stretch", key="history_problems")
        if len(checked.problems) < checked.total_problems:
            st.caption(f"The first {len(checked.problems):,} are listed.")
        return
    st.success(f"{len(checked.rows):,} line(s) of {md(checked.name)} are ready to import.", icon=":material/check:")
    if st.button(f"Import {len(checked.rows):,} line(s)", type="primary", key="history_import"):
        actor = common.current_actor()
        try:
            classifier, _ = common.classifier()
            with st.spinner("Importing (the descriptions go through the text tower once)…"):
                result = common.in_transaction(
                    lambda session: import_upload(session, actor, upload, classifier, common.photo_root())
                )
        except ServiceError as exc:
            st.error(md(str(exc)), icon=":material/error:")
            return
        st.session_state[NOTICE] = (
            f"Imported {result.rows:,} line(s) of {result.file_name} as import #{result.import_id}."
        )
        st.session_state["history_round"] += 1
        clear_check()
        st.rerun()


def imports_table(imports) -> None:
    st.subheader("Imports")
    if not imports:
        st.caption("No history imported yet.")
        return
    frame = pd.DataFrame(
        {
            "Import": [f"#{i.id}" for i in imports],
            "File": [i.file_name for i in imports],
            "Rows": [i.row_count for i in imports],
            "By": [i.username or "" for i in imports],
            "When (UTC)": [i.created_at for i in imports],
            "SHA-256": [i.sha256[:16] for i in imports],
            "Retracted": [
                f"{i.retracted_at:%Y-%m-%d} by {i.retracted_by}: {i.retraction_reason}" if i.retracted_at else ""
                for i in imports
            ],
        }
    )
    st.dataframe(frame, hide_index=True, width="stretch", key="history_imports")


def retract_form(imports) -> None:
    live = {i.id: f"#{i.id} {i.file_name} ({i.row_count:,} rows)" for i in imports if i.retracted_at is None}
    if not live:
        return
    with st.form("history_retract_form"):
        st.markdown("**Retract an import**: its rows stop being the record (they stay, marked, for the auditors).")
        chosen = st.selectbox("Import", list(live), format_func=live.get, key="history_retract_id")
        reason = st.text_input("Reason (required)", key="history_retract_reason")
        submitted = st.form_submit_button("Retract", key="history_retract")
    if submitted:
        actor = common.current_actor()
        try:
            common.in_transaction(lambda session: retract_import(session, actor, chosen, reason))
        except ServiceError as exc:
            st.error(md(str(exc)), icon=":material/error:")
            return
        st.session_state[NOTICE] = f"Import #{chosen} retracted."
        st.rerun()


st.title("Classification history")
common.show_notice(NOTICE)
upload_form()
checked_result()
imports = common.load_or_stop(lambda session: list_imports(session, common.current_actor()))
imports_table(imports)
retract_form(imports)
