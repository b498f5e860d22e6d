"""Decision log screen: admins export every decision (filtered) as CSV, JSONL or Parquet."""

from __future__ import annotations

import streamlit as st

from db.models import DECISION_KINDS
from pages import common
from services.errors import ServiceError
from services.export import CONTENT_TYPES, FORMATS, DecisionFilter, export_decisions, export_filename

st.title("Decision log")
st.caption("Every submission and review, with who, when, the model version and the model's own top code.")

with st.form("log_filters"):
    since_col, until_col, kinds_col = st.columns(3)
    since = since_col.date_input("From (UTC)", value=None, key="log_since")
    until = until_col.date_input("Until (UTC, inclusive)", value=None, key="log_until")
    kinds = kinds_col.multiselect("Kinds", DECISION_KINDS, key="log_kinds")
    user_col, prefix_col, ship_col, fmt_col = st.columns(4)
    username = user_col.text_input("Username", key="log_user")
    prefix = prefix_col.text_input("Code starts with", key="log_prefix", placeholder="e.g. 6109")
    shipment = ship_col.text_input("Shipment reference", key="log_shipment")
    fmt = fmt_col.selectbox("Format", FORMATS, key="log_format")
    prepared = st.form_submit_button("Prepare export", type="primary")

if prepared:
    st.session_state.pop("log_export", None)
    actor = common.current_actor()
    try:
        filters = DecisionFilter(
            since=since,
            until=until,
            kinds=tuple(kinds),
            username=username.strip() or None,
            code_prefix=prefix.replace(".", "").strip() or None,
            shipment_reference=shipment.strip() or None,
        )
        data = common.in_transaction(lambda session: export_decisions(session, actor, filters, fmt))
    except (ServiceError, ValueError) as exc:
        st.error(str(exc), icon=":material/error:")
    else:
        st.session_state["log_export"] = (data, fmt, export_filename(fmt))

export = st.session_state.get("log_export")
if export is not None:
    data, fmt, name = export
    st.download_button(
        f"Download {name} ({len(data):,} bytes)",
        data,
        file_name=name,
        mime=CONTENT_TYPES[fmt],
        icon=":material/download:",
    )
