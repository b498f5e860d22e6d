"""Review screen: reviewers approve, correct or reject the codes brokers submitted (oldest first)."""

from __future__ import annotations

import streamlit as st

from pages import common
from pages.common import md
from services.classify import describe_code, format_code, is_subheading, search_subheadings
from services.decisions import MAX_COMMENT_LENGTH, approve, correct, item_state, reject, review_queue
from services.errors import ServiceError

ACTIONS = ("Approve", "Correct", "Reject")


def describe(code: str | None) -> str:
    if not code:
        return "—"
    text = describe_code(code)
    return f"{format_code(code)} — {text}" if text else format_code(code)


def act(fn, *args, **kwargs) -> None:
    """Run one review action in its own transaction; report the outcome on the next run."""
    actor = common.current_actor()
    try:
        decision = common.in_transaction(lambda session: fn(session, actor, *args, **kwargs))
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return
    code = f" as {format_code(decision.code)}" if decision.code else ""
    st.session_state["review_notice"] = (
        f"Line item #{decision.line_item_id} {decision.kind}{code} (decision #{decision.id})."
    )
    st.rerun()


st.title("Review submitted codes")
notice = st.session_state.pop("review_notice", None)
if notice:
    st.success(notice, icon=":material/check_circle:")

actor = common.current_actor()
try:
    queue = common.in_transaction(lambda session: review_queue(session, actor))
except ServiceError as exc:
    st.error(str(exc))
    st.stop()
if not queue:
    st.info("Nothing is waiting for review.")
    st.stop()

queue_labels = {
    q.line_item_id: f"#{q.line_item_id} · {format_code(q.code or '')} · {q.description[:60] or '(photos only)'} · by {q.decided_by}"
    for q in queue
}
item_id = st.selectbox(
    f"{len(queue)} waiting (oldest first)", list(queue_labels), format_func=queue_labels.__getitem__, key="review_item"
)
item = next(q for q in queue if q.line_item_id == item_id)

left, right = st.columns([3, 2], gap="large")
with left:
    st.markdown("**Description**")
    st.text(item.description or "(no description: photos only)")
    st.markdown(f"**Submitted code:** {describe(item.code)}")
    score = f" ({item.model_top_score:.0%})" if item.model_top_score is not None else ""
    st.markdown(f"**Model's best subheading:** {describe(item.model_top_code)}{score}")
    if item.needs_review:
        st.warning("The model was unsure about this item (below its review threshold).", icon=":material/warning:")
    meta = [f"shipment {item.shipment_reference}" if item.shipment_reference else "", item.line_ref or ""]
    st.caption(md(" · ".join(m for m in [*meta, f"model {item.model_version}"] if m)))
with right:
    try:
        state = common.in_transaction(lambda session: item_state(session, actor, item_id))
    except ServiceError as exc:
        st.error(str(exc))
    else:
        st.markdown("**History**")
        for d in state.history:
            code = f" {format_code(d.code)}" if d.code else ""
            st.text(f"{d.created_at:%Y-%m-%d %H:%M} {d.user.username} ({d.role}): {d.kind}{code}")
            if d.comment:
                st.caption(md(d.comment))

st.divider()
action = st.segmented_control("Decision", ACTIONS, default="Approve", key="review_action")
if action == "Approve":
    comment = st.text_area("Comment (optional)", key="review_comment", max_chars=MAX_COMMENT_LENGTH)
    if st.button("Approve", type="primary", key="review_approve"):
        act(approve, item_id, comment)
elif action == "Correct":
    query = st.text_input("Search the correct subheading (code or words)", key="review_search")
    options = search_subheadings(query) if query.strip() else []
    code_labels = {o.code: f"{o.formatted} — {o.description}" for o in options}
    code = (
        st.selectbox("Subheading", list(code_labels), format_func=code_labels.__getitem__, key="review_pick")
        if code_labels
        else None
    )
    reason = st.text_area("Reason (required)", key="review_reason", max_chars=MAX_COMMENT_LENGTH)
    if st.button("Correct", type="primary", disabled=code is None, key="review_correct"):
        act(correct, item_id, code, reason, valid_code=is_subheading)
elif action == "Reject":
    reason = st.text_area("Reason (required)", key="review_reject_reason", max_chars=MAX_COMMENT_LENGTH)
    if st.button("Reject", type="primary", key="review_reject"):
        act(reject, item_id, reason)
