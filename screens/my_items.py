"""My items: the signed-in broker's recent line items and their status; a rejected item can be submitted again."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from screens import common
from screens.common import ago, md
from services.classify import (
    MAX_PHOTO_MB,
    UploadedPhoto,
    describe_code,
    format_code,
    search_subheadings,
    submit_decision,
)
from services.decisions import MAX_COMMENT_LENGTH
from services.errors import ServiceError
from services.review import my_items
from services.revisions import item_versions, revise_rejected_item

STATUS = {
    "new": "not submitted",
    "submitted": "waiting for review",
    "approved": "approved",
    "corrected": "corrected",
    "rejected": "rejected: resubmit",
}
NOTICE, ERROR = "mine_notice", "mine_error"


def on_submit(item_id: int, prediction_id: int | None) -> None:
    code = st.session_state.get(f"mine_pick_{item_id}")
    justification = st.session_state.get(f"mine_justification_{item_id}", "")
    if not code:
        st.session_state[ERROR] = "Pick a subheading first."
        return
    actor = common.current_actor()
    try:
        decision = common.in_transaction(
            lambda session: submit_decision(
                session,
                actor,
                line_item_id=item_id,
                code=code,
                justification=justification,
                prediction_id=prediction_id,
            )
        )
    except ServiceError as exc:
        st.session_state[ERROR] = str(exc)
        return
    st.session_state[NOTICE] = (
        f"Submitted {format_code(decision.code)} for line item #{item_id} (decision #{decision.id}). "
        "It now waits for a reviewer."
    )


def items_table(items) -> None:
    frame = pd.DataFrame(
        {
            "Item": [f"#{q.line_item_id}" for q in items],
            "Description": [q.description or "(photos only)" for q in items],
            "Shipment": [q.shipment_reference or "" for q in items],
            "Status": [STATUS.get(q.status, q.status) for q in items],
            "Code": [format_code(q.code) if q.code else "" for q in items],
            "Last decision": [f"{q.decided_by} · {ago(q.decided_at)}" if q.decided_by else "" for q in items],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={"Description": st.column_config.TextColumn(width="large")},
    )


def resubmit_form(detail) -> None:
    item_id = detail.line_item_id
    verb = "Submit again" if detail.status == "rejected" else "Submit"
    st.markdown(f"**{verb}**")
    query = st.text_input(
        "Search the HS 2022 tree (code or words; Enter to search)",
        key=f"mine_search_{item_id}",
        placeholder="e.g. 6109 or T-shirts",
    )
    if query.strip():
        found = search_subheadings(query, classifier=common.classifier()[0])
        options = {o.code: f"{o.formatted} — {o.description}" + (f" ({o.source})" if o.source else "") for o in found}
        if not options:
            st.caption(f"No subheading matches “{md(query.strip())}”.")
    else:
        options = {c.code: f"{c.formatted} — {c.description} (model)" for c in detail.candidates.get(6, ())}
    if st.session_state.get(f"mine_pick_{item_id}") not in (None, *options):
        st.session_state.pop(f"mine_pick_{item_id}")
    with st.form(f"mine_submit_form_{item_id}", border=False):
        st.selectbox(
            "Subheading",
            list(options),
            index=None,
            key=f"mine_pick_{item_id}",
            format_func=options.get,
            placeholder="The model's candidates, or search above",
        )
        st.text_area(
            "Justification (required unless it is the model's first choice)",
            key=f"mine_justification_{item_id}",
            max_chars=MAX_COMMENT_LENGTH,
            placeholder="What changed since the rejection: material, use, the note or ruling you relied on…",
        )
        st.form_submit_button(
            verb, type="primary", key="mine_submit", on_click=on_submit, args=(item_id, detail.prediction_id)
        )


def on_revise(item_id: int) -> None:
    uploads = st.session_state.get(f"mine_fix_photos_{item_id}") or []
    photos = [UploadedPhoto(f.name, f.getvalue()) for f in uploads] or None  # none given: keep the stored ones
    actor = common.current_actor()
    try:
        classifier, _ = common.classifier()
        recorded = common.in_transaction(
            lambda session: revise_rejected_item(
                session,
                classifier,
                actor,
                item_id,
                text=st.session_state.get(f"mine_fix_text_{item_id}", ""),
                photos=photos,
                reason=st.session_state.get(f"mine_fix_reason_{item_id}", ""),
                photo_root=common.photo_root(),
            )
        )
    except ServiceError as exc:
        st.session_state[ERROR] = str(exc)
        return
    top = recorded.prediction.levels[6][0]
    st.session_state[NOTICE] = (
        f"Line item #{item_id} corrected and classified again (the earlier version is kept): the model now proposes "
        f"{format_code(top.code)}. Submit a code below."
    )


def correction_form(detail) -> None:
    """A rejected item: correct its description and photos as a new version (the old one is kept)."""
    item_id = detail.line_item_id
    with (
        st.expander("Correct the description or photos", icon=":material/edit:"),
        st.form(f"mine_fix_form_{item_id}", border=False),
    ):
        st.text_area("Description", value=detail.description, key=f"mine_fix_text_{item_id}", height=120)
        st.file_uploader(
            "New photos (replace the current ones; leave empty to keep them)",
            type=["jpg", "jpeg", "png", "webp"],
            accept_multiple_files=True,
            key=f"mine_fix_photos_{item_id}",
            max_upload_size=MAX_PHOTO_MB,
        )
        st.text_input("What you corrected (required, kept with the version)", key=f"mine_fix_reason_{item_id}")
        st.form_submit_button(
            "Save as a new version and classify again", key="mine_fix_save", on_click=on_revise, args=(item_id,)
        )


def versions(item_id: int) -> None:
    """Earlier versions of a corrected item, oldest first."""
    actor = common.current_actor()
    try:
        found = common.in_transaction(lambda session: item_versions(session, actor, item_id))
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return
    if len(found) < 2:
        return
    st.markdown("**Versions** (the latest is shown above)")
    for v in found:
        text = " ".join(v.description.split())
        st.markdown(
            f"- v{v.version} · {v.at:%Y-%m-%d %H:%M} UTC · {md(v.by or '—')} · {v.photo_count} photo(s) · "
            f"“{md(text[:160])}{'…' if len(text) > 160 else ''}” — _{md(v.reason)}_"
        )


def item_panel(item_id: int) -> None:
    detail = common.item_detail_or_error(item_id)
    if detail is None:
        return
    left, right = st.columns([3, 2], gap="large")
    with left:
        shown = [p for p in detail.photos if p.path is not None]
        if shown:
            st.image([str(p.path) for p in shown], width=160)
        common.long_text(detail.description or "(no description: photos only)")
        code = detail.final_code or detail.submitted_code
        if code:
            st.markdown(f"**{format_code(code)}** — {md(describe_code(code))}")
        versions(detail.line_item_id)
        st.markdown("**History**")
        st.markdown(common.history_markdown(detail.history))
        common.comment_thread(detail.line_item_id)
    with right:
        error = st.session_state.pop(ERROR, None)
        if error:
            st.error(md(error), icon=":material/error:")
        if detail.status == "rejected":
            reason = detail.history[-1].comment if detail.history else ""
            st.warning(f"Rejected: {md(reason)}", icon=":material/undo:")
            correction_form(detail)
        if detail.status in ("new", "rejected"):
            resubmit_form(detail)
        elif detail.status == "submitted":
            st.info("Waiting for a reviewer.", icon=":material/hourglass_top:")
        else:
            st.success(f"Final: {detail.status} as {format_code(detail.final_code or '')}.", icon=":material/done_all:")


st.title("My items")
common.show_notice(NOTICE)
actor = common.current_actor()
items = common.load_or_stop(lambda session: my_items(session, actor))
if not items:
    st.info("You have not classified anything yet: start on the Classify screen.", icon=":material/info:")
    st.stop()

counts = {status: sum(q.status == status for q in items) for status in STATUS}
for column, status in zip(st.columns(len(STATUS)), STATUS, strict=True):
    column.metric(STATUS[status].split(":")[0].capitalize(), counts[status])
st.caption(f"Your {len(items)} most recent line items, newest first.")
items_table(items)

labels = {q.line_item_id: f"#{q.line_item_id} · {STATUS.get(q.status, q.status)} · {q.description[:60]}" for q in items}
first_rejected = next((i for i, q in enumerate(items) if q.status == "rejected"), 0)
common.follow_item_link("mine_item", list(labels))
chosen = st.selectbox(
    "Open an item",
    list(labels),
    index=0 if "mine_item" in st.session_state else first_rejected,  # a linked item was put there
    format_func=labels.__getitem__,
    key="mine_item",
)
common.link_to_item("mine_item", chosen)
item_panel(chosen)
