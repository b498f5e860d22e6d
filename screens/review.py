"""Review screen: reviewers check submitted codes against the photos and the model, then approve, correct or reject."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from db.models import utcnow
from screens import common, guided
from screens.common import ago, md
from services.classify import describe_code, format_code, is_subheading, search_subheadings
from services.decisions import (
    AGREEMENT_MIN_SCORE,
    MAX_COMMENT_LENGTH,
    approve,
    approve_agreements,
    correct,
    is_agreement,
    reject,
    review_queue,
)
from services.errors import ServiceError
from services.history import record_note as history_record_note
from services.review import QueueFilter, queue_facets
from services.revisions import version_changes

ACTIONS = ("Approve", "Correct", "Reject")
ALL = ""  # the "no filter" choice of the pick lists
AGES = {0: "Any age", 1: "Waiting over 1 day", 3: "Waiting over 3 days", 7: "Waiting over a week"}
LEVELS = {6: "Subheadings", 4: "Headings", 2: "Chapters"}
NOTICE, ERROR = "review_notice", "review_error"


def percent(score: float | None) -> str:
    if score is None:
        return "—"
    return "<1%" if score < 0.005 else f"{score:.0%}"


def describe(code: str | None) -> str:
    if not code:
        return "—"
    text = describe_code(code)
    return f"{format_code(code)} — {text}" if text else format_code(code)


# --- actions (button callbacks: they run before the page is drawn again) -------------------------------------


def run_action(item_id: int, fn) -> None:
    """Run one review action in its own transaction; keep the outcome for the next draw."""
    actor = common.current_actor()
    try:
        decision = common.in_transaction(lambda session: fn(session, actor))
    except ServiceError as exc:
        st.session_state[ERROR] = (item_id, str(exc))
        return
    code = f" as {format_code(decision.code)}" if decision.code else ""
    st.session_state[NOTICE] = f"Line item #{decision.line_item_id} {decision.kind}{code} (decision #{decision.id})."
    st.session_state.pop("review_item", None)  # on to the oldest item still waiting


def on_approve(item_id: int) -> None:
    comment = st.session_state.get(f"review_comment_{item_id}", "")
    run_action(item_id, lambda session, actor: approve(session, actor, item_id, comment))


def on_correct(item_id: int) -> None:
    code = st.session_state.get(f"review_pick_{item_id}")
    reason = st.session_state.get(f"review_reason_{item_id}", "")
    if not code:
        st.session_state[ERROR] = (item_id, "Search for the right subheading and pick it first.")
        return
    run_action(item_id, lambda session, actor: correct(session, actor, item_id, code, reason, valid_code=is_subheading))


def on_reject(item_id: int) -> None:
    reason = st.session_state.get(f"review_reject_reason_{item_id}", "")
    run_action(item_id, lambda session, actor: reject(session, actor, item_id, reason))


def on_bulk_approve(item_ids: list[int], round_: int) -> None:
    ticked = [i for i in item_ids if st.session_state.get(f"review_bulk_{round_}_{i}")]
    comment = st.session_state.get("review_bulk_comment", "")
    actor = common.current_actor()
    try:
        result = common.in_transaction(lambda session: approve_agreements(session, actor, ticked, comment))
    except ServiceError as exc:
        st.session_state[ERROR] = (None, str(exc))
        return
    if result.approved:
        ids = ", ".join(f"#{d.line_item_id}" for d in result.approved)
        st.session_state[NOTICE] = f"Approved {len(result.approved)} item(s): {ids}, each as its own decision."
    if result.refused:
        st.session_state[ERROR] = (None, "\n".join(f"#{i}: {why}" for i, why in result.refused))
    st.session_state["review_bulk_round"] = round_ + 1  # fresh, unticked checkboxes
    st.session_state.pop("review_item", None)


def on_tick_all(item_ids: list[int], round_: int) -> None:
    ticked = st.session_state.get(f"review_bulk_all_{round_}", False)
    for item_id in item_ids:
        st.session_state[f"review_bulk_{round_}_{item_id}"] = ticked


def show_error(item_id: int | None) -> None:
    """The error of the last action on this item (or of a bulk approval), once."""
    error = st.session_state.get(ERROR)
    if error is not None and error[0] == item_id:
        st.session_state.pop(ERROR)
        st.error(md(error[1]), icon=":material/error:")


# --- the queue and its filters ---------------------------------------------------------------------------------


def keep_valid(key: str, options) -> None:
    """Forget a pick-list choice that is no longer offered (its items were all reviewed)."""
    if st.session_state.get(key) not in (None, *options):
        st.session_state.pop(key)


def queue_filter(everything) -> QueueFilter:
    """Draw the filter form over the whole queue; returns the filter last applied."""
    facets = queue_facets(everything)
    shipments, brokers, chapters = (ALL, *facets.shipments), (ALL, *facets.brokers), (ALL, *facets.chapters)
    for key, options in (
        ("review_f_shipment", shipments),
        ("review_f_broker", brokers),
        ("review_f_chapter", chapters),
    ):
        keep_valid(key, options)
    with st.form("review_filters"):
        ship_col, broker_col, chapter_col, score_col, age_col = st.columns([2, 2, 3, 3, 2])
        shipment = ship_col.selectbox(
            "Shipment", shipments, key="review_f_shipment", format_func=lambda s: s or "All shipments"
        )
        broker = broker_col.selectbox(
            "Broker", brokers, key="review_f_broker", format_func=lambda b: b or "All brokers"
        )
        chapter = chapter_col.selectbox(
            "Chapter of the submitted code",
            chapters,
            key="review_f_chapter",
            format_func=lambda c: f"{c} — {describe_code(c)}" if c else "All chapters",
        )
        low, high = score_col.slider(
            "Model confidence (best subheading)",
            0,
            100,
            (0, 100),
            step=5,
            format="%d%%",
            key="review_f_score",
        )
        age = age_col.selectbox("Age", list(AGES), key="review_f_age", format_func=AGES.__getitem__)
        st.form_submit_button("Apply filters", icon=":material/filter_list:", key="review_apply")
    return QueueFilter(
        shipment_reference=shipment or None,
        username=broker or None,
        code_prefix=chapter or None,
        min_score=low / 100 if low > 0 else None,
        max_score=high / 100 if high < 100 else None,
        decided_before=utcnow() - timedelta(days=age) if age else None,
    )


def queue_label(q) -> str:
    agree = " · agrees with the model" if is_agreement(q.code, q.model_subheadings, q.needs_review) else ""
    text = q.description[:60] + ("…" if len(q.description) > 60 else "") if q.description else "(photos only)"
    return f"#{q.line_item_id} · {format_code(q.code or '')}{agree} · {text} · by {q.decided_by} · {ago(q.decided_at)}"


# --- one item --------------------------------------------------------------------------------------------------


def candidate_tables(detail) -> None:
    submitted = detail.submitted_code or ""
    tabs = st.tabs([f"{LEVELS[level]} ({level} digits)" for level in LEVELS])
    for tab, level in zip(tabs, LEVELS, strict=True):
        with tab:
            candidates = detail.candidates.get(level, ())
            if not candidates:
                st.caption("No candidates at this level.")
                continue
            frame = pd.DataFrame(
                {
                    "Code": [c.formatted for c in candidates],
                    "Probability": [percent(c.score) for c in candidates],
                    "Submitted": ["✔" if submitted.startswith(c.code) else "" for c in candidates],
                    "Precedents": [c.precedents or "" for c in candidates],  # what raised it, before the long text
                    "Official description": [c.description for c in candidates],
                }
            )
            st.dataframe(
                frame,
                hide_index=True,
                width="stretch",
                column_config={
                    "Code": st.column_config.TextColumn(width="small"),
                    "Probability": st.column_config.TextColumn(width="small"),
                    "Submitted": st.column_config.TextColumn(
                        width="small", help="The broker's code (or its heading and chapter)"
                    ),
                },
            )


def evidence(detail) -> None:
    """Left column: what the broker classified (photos, description) and what the model proposed."""
    refs = [
        f"shipment {detail.shipment_reference}" if detail.shipment_reference else "",
        f"line {detail.line_ref}" if detail.line_ref else "",
        f"classified by {detail.created_by} {ago(detail.created_at)}" if detail.created_by else "",
    ]
    st.subheader(f"Line item #{detail.line_item_id}")
    st.caption(md(" · ".join(r for r in refs if r)))
    shown = [p for p in detail.photos if p.path is not None]
    if shown:
        st.image([str(p.path) for p in shown], width=220, caption=[f"Photo {p.position + 1}" for p in shown])
    elif not detail.photos:
        st.caption("No photos.")
    for photo in detail.photos:
        if photo.problem:
            st.caption(f":orange[:material/warning: Photo {photo.position + 1}: {md(photo.problem)}]")
    st.markdown("**Description**")
    common.long_text(detail.description or "(no description: photos only)")
    st.markdown("**The model's candidates**")
    if detail.model_version:
        st.caption(md(f"Model {detail.model_version} · {detail.nomenclature_edition}"))
    if detail.needs_review:
        st.warning("The model was unsure about this item (below its review threshold).", icon=":material/warning:")
    if detail.candidates:
        candidate_tables(detail)
    else:
        st.caption("No prediction is stored for this item.")


DIFF_STYLE = {"same": "{}", "cut": "{}", "removed": ":red[~~{}~~]", "added": ":green[**{}**]"}


def diff_markdown(pieces) -> str:
    """A word diff as markdown: removed words struck through in red, added words bold in green."""
    return " ".join(DIFF_STYLE[kind].format(md(text)) for kind, text in pieces)


def versions(detail) -> None:
    """A corrected item's earlier versions: what the broker changed at each correction (description, photos)."""
    actor = common.current_actor()
    try:
        changes = common.in_transaction(lambda session: version_changes(session, actor, detail.line_item_id))
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return
    if not changes:
        return
    times = "once" if len(changes) == 1 else f"{len(changes)} times"
    with st.expander(f"Earlier versions: corrected {times} by the broker", expanded=True, icon=":material/history:"):
        for change in changes:
            st.markdown(
                f"**v{change.previous} → v{change.version}** · {change.at:%Y-%m-%d %H:%M} UTC · {md(change.by or '—')}"
                f" · “{md(change.reason)}”"
            )
            text = diff_markdown(change.description) if change.description else "_unchanged_"
            st.markdown(f"Description: {text}")
            if change.photos_replaced:
                photos = f"replaced: {change.photos_before} → {change.photos_after} photo(s)"
            else:
                photos = f"unchanged ({change.photos_after})"
            st.markdown(f"Photos: {photos}")


def brokers_choice(detail) -> None:
    st.markdown("**Broker's code**")
    st.markdown(f"### {format_code(detail.submitted_code or '—')}")
    st.caption(md(describe_code(detail.submitted_code or "")))
    guided.show_facts(detail.line_item_id)  # what the broker stated in answer to the guided questions
    record_note(detail)  # what the classification record said when the item was classified
    top = detail.model_top
    if detail.agrees_with_model:
        st.success(
            f"Also the model's best subheading ({percent(top.score)}), and the model did not flag this item for review.",
            icon=":material/thumb_up:",
        )
    elif top is not None and top.code == detail.submitted_code:
        st.info(f"Also the model's best subheading ({percent(top.score)}), but the model was unsure.")
    elif top is not None:
        reason = " ".join(detail.justification.split()) or "(none given)"
        st.info(
            f"**Differs from the model**: the model's best subheading is {top.formatted} ({percent(top.score)}); "
            f"the broker chose {format_code(detail.submitted_code or '')} because: “{md(reason)}”",
            icon=":material/compare_arrows:",
        )
        return
    st.markdown(f"**Justification** · by {md(detail.submitted_by or '—')}")
    if detail.justification:
        st.text(detail.justification)
    else:
        st.caption("None given.")


def record_note(detail) -> None:
    """The record's answer when the item was classified, and whether the broker's code is the record's."""
    actor = common.current_actor()
    note = common.in_transaction(lambda session: history_record_note(session, actor, detail.line_item_id))
    if note is None:
        return
    if note.conflict:
        st.warning(f"**The record conflicts**: {md(note.summary)}", icon=":material/call_split:")
    elif note.code == detail.submitted_code:
        st.info(
            f"**From the record**: the broker's code is the record's. {md(note.summary)}", icon=":material/history:"
        )
    else:
        st.warning(
            f"**Differs from the record** ({format_code(note.code or '')}): {md(note.summary)}",
            icon=":material/history:",
        )


def history(detail) -> None:
    st.markdown("**History**")
    st.markdown(common.history_markdown(detail.history))


def code_options(detail, query: str):
    """The picker's subheadings: search hits, or the model's other candidates before anything is typed."""
    if query.strip():
        found = search_subheadings(query, classifier=common.classifier()[0])
        return {o.code: f"{o.formatted} — {o.description}" + (f" ({o.source})" if o.source else "") for o in found}
    return {
        c.code: f"{c.formatted} — {c.description} (model {percent(c.score)})"
        for c in detail.candidates.get(6, ())
        if c.code != detail.submitted_code
    }


def decision_forms(detail) -> None:
    item_id = detail.line_item_id
    # One control per item: the next item starts from Approve, not from the last item's action.
    action = st.segmented_control("Decision", ACTIONS, default="Approve", key=f"review_action_{item_id}")
    show_error(item_id)
    if action == "Correct":
        query = st.text_input(
            "Find the right subheading (code or words; Enter to search)",
            key=f"review_search_{item_id}",
            placeholder="e.g. 6109 or T-shirts",
        )
        options = code_options(detail, query)
        if query.strip() and not options:
            st.caption(f"No subheading matches “{md(query.strip())}”.")
        keep_valid(f"review_pick_{item_id}", list(options))
        with st.form(f"review_correct_form_{item_id}", border=False):
            st.selectbox(
                "Correct subheading",
                list(options),
                key=f"review_pick_{item_id}",
                index=None,
                format_func=options.get,
                placeholder="Search above, then pick one",
            )
            st.text_area(
                "Reason (required; Ctrl+Enter to submit)", key=f"review_reason_{item_id}", max_chars=MAX_COMMENT_LENGTH
            )
            st.form_submit_button(
                "Save correction", type="primary", key="review_correct", on_click=on_correct, args=(item_id,)
            )
    elif action == "Reject":
        with st.form(f"review_reject_form_{item_id}", border=False):
            st.text_area(
                "Reason for the broker (required; Ctrl+Enter to submit)",
                key=f"review_reject_reason_{item_id}",
                max_chars=MAX_COMMENT_LENGTH,
            )
            st.form_submit_button(
                "Reject and send back", type="primary", key="review_reject", on_click=on_reject, args=(item_id,)
            )
    else:
        with st.form(f"review_approve_form_{item_id}", border=False):
            st.text_input(
                "Comment (optional; Enter to approve)", key=f"review_comment_{item_id}", max_chars=MAX_COMMENT_LENGTH
            )
            st.form_submit_button(
                f"Approve {format_code(detail.submitted_code or '')}",
                type="primary",
                key="review_approve",
                on_click=on_approve,
                args=(item_id,),
            )


def one_by_one(queue) -> None:
    labels = {q.line_item_id: queue_label(q) for q in queue}
    keep_valid("review_item", list(labels))
    common.follow_item_link("review_item", list(labels))
    item_id = st.selectbox(
        f"{len(queue)} waiting, oldest first", list(labels), format_func=labels.__getitem__, key="review_item"
    )
    common.link_to_item("review_item", item_id)
    detail = common.item_detail_or_error(item_id)
    if detail is None:
        return
    left, right = st.columns([3, 2], gap="large")
    with left:
        evidence(detail)
        versions(detail)
    with right:
        brokers_choice(detail)
        history(detail)
        common.comment_thread(detail.line_item_id)
        st.divider()
        decision_forms(detail)


def bulk(agreements) -> None:
    st.caption(
        "Items where the broker submitted the model's best subheading and the model is confident in that subheading: "
        f"at least {AGREEMENT_MIN_SCORE:.0%}, no near tie with the runner-up, not flagged for review. Tick the ones to approve; each approval is recorded as its own decision."
    )
    show_error(None)
    if not agreements:
        st.info("No high-confidence agreements among the items shown.", icon=":material/info:")
        return
    round_ = st.session_state.setdefault("review_bulk_round", 0)
    ids = [q.line_item_id for q in agreements]
    st.toggle("Tick all", key=f"review_bulk_all_{round_}", on_change=on_tick_all, args=(ids, round_))
    with st.form("review_bulk_form"):
        for q in agreements:
            text = q.description[:80] or "(photos only)"
            ship = f" · shipment {q.shipment_reference}" if q.shipment_reference else ""
            st.checkbox(
                md(f"#{q.line_item_id} · ")
                + f"**{format_code(q.code)}** · {percent(q.model_top_score)} · "
                + md(f"{text} · by {q.decided_by}{ship} · {ago(q.decided_at)}"),
                key=f"review_bulk_{round_}_{q.line_item_id}",
            )
        st.text_input("Comment on these approvals (optional)", key="review_bulk_comment", max_chars=MAX_COMMENT_LENGTH)
        st.form_submit_button(
            "Approve ticked items",
            type="primary",
            key="review_bulk_approve",
            on_click=on_bulk_approve,
            args=(ids, round_),
        )


st.title("Review submitted codes")
common.show_notice(NOTICE)
actor = common.current_actor()
everything = common.load_or_stop(lambda session: review_queue(session, actor))
if not everything:
    show_error(None)
    st.info("Nothing is waiting for review.")
    st.stop()

filters = queue_filter(everything)
queue = (
    everything
    if filters == QueueFilter()
    else common.in_transaction(lambda session: review_queue(session, actor, filters))
)
if not queue:
    st.info(f"None of the {len(everything)} waiting items match these filters.", icon=":material/filter_list_off:")
    st.stop()
agreements = [
    q for q in queue if is_agreement(q.code, q.model_subheadings, q.needs_review) and q.decided_by != actor.username
]
one_tab, bulk_tab = st.tabs([f"One by one ({len(queue)})", f"Bulk approve ({len(agreements)})"])
with one_tab:
    one_by_one(queue)
with bulk_tab:
    bulk(agreements)
