"""Decision log screen (admins): every decision in a filterable table, and the same rows as CSV, JSONL or Parquet."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from db.decision_log import LOG_KINDS
from screens import common
from screens.common import md
from services.classify import format_code
from services.export import CONTENT_TYPES, FORMATS, DecisionFilter, export_decisions, export_filename
from services.review import list_decisions, log_choices

ANY = ""
FORMAT_LABELS = {"csv": "CSV", "jsonl": "JSONL", "parquet": "Parquet"}


def filter_form(choices) -> DecisionFilter:
    """Draw the filters; returns the ones last applied.

    Raises:
        ValueError: A filter the log cannot use (its message says which).
    """
    users, versions = (ANY, *choices.usernames), (ANY, *choices.model_versions)
    for key, options in (("log_user", users), ("log_model", versions)):
        if st.session_state.get(key) not in (None, *options):
            st.session_state.pop(key)
    with st.form("log_filters"):
        since_col, until_col, kinds_col, user_col = st.columns([2, 2, 4, 2])
        since = since_col.date_input("From (UTC)", value=None, key="log_since", format="YYYY-MM-DD")
        until = until_col.date_input("Until (UTC, inclusive)", value=None, key="log_until", format="YYYY-MM-DD")
        kinds = kinds_col.multiselect("Kinds", LOG_KINDS, key="log_kinds", placeholder="All kinds")
        username = user_col.selectbox("User", users, key="log_user", format_func=lambda u: u or "Anyone")
        prefix_col, ship_col, model_col, button_col = st.columns([2, 2, 4, 2], vertical_alignment="bottom")
        prefix = prefix_col.text_input("Code starts with", key="log_prefix", placeholder="e.g. 6109 or 61")
        shipment = ship_col.text_input("Shipment reference", key="log_shipment")
        version = model_col.selectbox(
            "Model version", versions, key="log_model", format_func=lambda v: v or "Any model"
        )
        button_col.form_submit_button("Apply filters", type="primary", icon=":material/filter_list:")
    prefix = "".join(prefix.replace(".", "").split())
    if prefix and not (prefix.isascii() and prefix.isdigit()):
        raise ValueError("“Code starts with” takes digits only, e.g. 6109 or 6109.10.")
    return DecisionFilter(
        since=since,
        until=until,
        kinds=tuple(kinds),
        username=username or None,
        code_prefix=prefix or None,
        shipment_reference=shipment.strip() or None,
        model_version=version or None,
    )


def log_table(rows) -> None:
    frame = pd.DataFrame(
        {
            "Decided (UTC)": [r["decided_at"] for r in rows],
            "Kind": [r["kind"] for r in rows],
            "Code": [format_code(r["code"]) if r["code"] else "" for r in rows],
            "Model's code": [format_code(r["model_top_code"]) if r["model_top_code"] else "" for r in rows],
            "Score": [100 * r["model_top_score"] if r["model_top_score"] is not None else None for r in rows],
            "User": [f"{r['username']} ({r['role']})" for r in rows],
            "Item": [r["line_item_id"] for r in rows],
            "Shipment": [r["shipment_reference"] or "" for r in rows],
            "Comment": [r["comment"] for r in rows],
            "Imported": [r.get("history_import") or "" for r in rows],  # imported decisions: which file, line
            "Description": [r["description"] for r in rows],
            "Model": [r["model_version"] or "" for r in rows],
            "Decision": [r["decision_id"] for r in rows],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "Decided (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
            "Item": st.column_config.NumberColumn(format="#%d", width="small"),
            "Decision": st.column_config.NumberColumn(format="#%d", width="small"),
            "Description": st.column_config.TextColumn(width="medium"),
            "Comment": st.column_config.TextColumn(width="medium"),
            "Score": st.column_config.NumberColumn(
                format="%.0f%%", width="small", help="The model's probability for its code"
            ),
        },
        key="log_table",
    )


def downloads(filters: DecisionFilter, count: int) -> None:
    """One button per format; each click builds the file then and records its own export audit event."""
    actor = common.current_actor()
    st.markdown(f"**Export these {count:,} decisions**")
    for column, fmt in zip(st.columns(len(FORMATS) + 3), FORMATS, strict=False):
        column.download_button(
            FORMAT_LABELS.get(fmt, fmt),
            common.deferred(lambda session, fmt=fmt: export_decisions(session, actor, filters, fmt)),
            file_name=export_filename(fmt),
            mime=CONTENT_TYPES[fmt],
            icon=":material/download:",
            on_click="ignore",
            key=f"log_download_{fmt}",
            width="stretch",
        )
    st.caption("Every download is recorded in the audit trail, with the filters above.")


st.title("Decision log")
st.caption(
    "Every submission and review, with who, when, the model version and the model's own top code. "
    "Newest first; times are UTC."
)
actor = common.current_actor()
choices = common.load_or_stop(lambda session: log_choices(session, actor))
try:
    filters = filter_form(choices)
except ValueError as exc:
    st.error(md(str(exc)), icon=":material/error:")
    st.stop()

listed = common.in_transaction(lambda session: list_decisions(session, actor, filters))
if listed.total == 0:
    st.info("No decisions match these filters.", icon=":material/filter_list_off:")
else:
    shown = len(listed.rows)
    more = f"; the newest {shown:,} are shown, the export has them all" if shown < listed.total else ""
    st.caption(f"{listed.total:,} decision(s) match{more}.")
    log_table(listed.rows)
downloads(listed.filters, listed.total)
