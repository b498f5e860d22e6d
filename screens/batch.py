"""Batch screen: a CSV of line items (and a zip of photos) in, checked row by row, classified in chunks under one
shipment, results as a table with downloads; any line opens in the Classify screen."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from screens import common
from screens.common import md
from services.batch import (
    MAX_ROWS,
    check_batch,
    export_results,
    open_line_item,
    problem_rows,
    run_batch,
)
from services.classify import MAX_REF_CHARS, format_code
from services.errors import ServiceError
from services.guided import reopen_with_guidance

CSV_MAX_MB, ZIP_MAX_MB = 20, 512
XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
STATE_KEYS = ("batch_result", "batch_stopped", "batch_stop", "batch_run_error")
CLASSIFY_KEYS = (
    "classify_decision",
    "classify_choice",
    "classify_search",
    "classify_pick",
    "classify_justification",
    "classify_explanation",
    "classify_stored",
)

st.session_state.setdefault("batch_upload_round", 0)


def clear_results() -> None:
    """The upload or the shipment changed: the shown results no longer describe them."""
    for key in STATE_KEYS:
        st.session_state.pop(key, None)


def request_stop() -> None:
    st.session_state["batch_stop"] = True  # read between chunks; the click's rerun also ends the run there


def start_over() -> None:
    clear_results()
    st.session_state.pop("batch_shipment", None)
    st.session_state["batch_upload_round"] += 1


def inputs():
    """The two uploaders and the shipment reference; returns (csv file, zip file, shipment reference)."""
    round_ = st.session_state["batch_upload_round"]
    left, right = st.columns(2, gap="large")
    with left:
        csv_file = st.file_uploader(
            "Line items (CSV)",
            type=["csv", "txt"],
            key=f"batch_csv_{round_}",
            on_change=clear_results,
            max_upload_size=CSV_MAX_MB,
            help="Columns: line_ref, description, and optionally photos (file names separated by ';'). "
            "UTF-8 or Latin-1; comma, semicolon or tab separated.",
        )
        st.caption(
            f"Up to {MAX_ROWS:,} lines per run. Example row: `A-001,men's knitted cotton T-shirt,front.jpg;back.jpg`"
        )
    with right:
        zip_file = st.file_uploader(
            "Photos (zip, optional)",
            type=["zip"],
            key=f"batch_zip_{round_}",
            on_change=clear_results,
            max_upload_size=ZIP_MAX_MB,
            help="The photos named in the CSV, matched by file name (any folder, any letter case).",
        )
        shipment = st.text_input(
            "Shipment reference",
            key="batch_shipment",
            max_chars=MAX_REF_CHARS,
            on_change=clear_results,
            help="Every line is stored under this shipment. Running the same file again for the same shipment "
            "resumes: lines already stored are not classified twice.",
        )
    return csv_file, zip_file, shipment


def show_check(check) -> None:
    """What will run and what will not, before anything runs."""
    for notice in check.file.notices:
        st.info(md(notice), icon=":material/info:")
    total, runnable = len(check.file.rows), check.runnable
    cols = st.columns(4)
    cols[0].metric("Lines", f"{total:,}")
    cols[1].metric("Ready to run", f"{runnable:,}")
    cols[2].metric("With problems", f"{total - runnable:,}")
    cols[3].metric("Photos in the zip", f"{check.photos.photo_count:,}" if check.photos else "—")
    problems = problem_rows(check)
    if problems:
        st.warning(
            f"{total - runnable:,} line{'s' if total - runnable != 1 else ''} will not run. "
            "Fix them in the file and upload it again, or run the others now.",
            icon=":material/warning:",
        )
        st.dataframe(
            pd.DataFrame(problems).rename(columns={"line": "Line", "line_ref": "Line ref", "problem": "Problem"}),
            hide_index=True,
            width="stretch",
            column_config={"Problem": st.column_config.TextColumn(width="large")},
        )


def run(check, shipment: str) -> None:
    clear_results()
    actor = common.current_actor()
    progress = st.progress(0.0, text="Starting…")
    stop_slot = st.empty()
    stop_slot.button("Stop", key="batch_stop_button", icon=":material/stop_circle:", on_click=request_stop)

    def on_progress(p) -> None:
        progress.progress(min(1.0, p.fraction), text=p.describe())

    try:
        classifier, _ = common.classifier()
        result = run_batch(
            common.in_transaction,
            classifier,
            actor,
            check,
            shipment_ref=shipment,
            photo_root=common.photo_root(),
            on_progress=on_progress,
            should_stop=lambda: bool(st.session_state.get("batch_stop")),
        )
    except ServiceError as exc:
        st.session_state["batch_run_error"] = str(exc)
        return
    finally:
        progress.empty()
        stop_slot.empty()
    st.session_state["batch_result"] = result


def percent(score) -> str:
    if score is None or pd.isna(score):
        return ""
    return "<1%" if score < 0.005 else f"{score:.0%}"  # as Classify says it, never "0%"


def results_table(result) -> None:
    rows = result.records
    frame = pd.DataFrame(
        {
            "Line": [r["line"] for r in rows],
            "Line ref": [r["line_ref"] for r in rows],
            "Item": [f"#{r['line_item_id']}" if r["line_item_id"] else "" for r in rows],
            "Status": [r["status"] for r in rows],
            "Review": ["⚠ review" if r["needs_review"] else "" for r in rows],  # a table shows no :icon: directives
            "Question": [r.get("question") or "" for r in rows],  # answer it by opening the line in Classify
            "Record": [  # the same product in the classification record, and its code (or a conflict)
                (format_code(r["record_code"]) if r.get("record_code") else "conflict" if r.get("record") else "")
                for r in rows
            ],
            **{
                f"{name} {k}": [
                    (format_code(r[f"code_{k}"]) + f" ({percent(r[f'score_{k}'])})") if r[f"code_{k}"] else ""
                    for r in rows
                ]
                for k, name in ((1, "Code"), (2, "Code"), (3, "Code"))
            },
            "Heading": [
                f"{format_code(r['heading'])} ({percent(r['heading_score'])})" if r["heading"] else "" for r in rows
            ],
            "Chapter": [f"{r['chapter']} ({percent(r['chapter_score'])})" if r["chapter"] else "" for r in rows],
            "Description": [r["description"] for r in rows],
            "Error": [r["error"] or "" for r in rows],
        }
    )
    # a column no line uses would only push the codes off screen
    frame = frame.drop(columns=[c for c in ("Question", "Record") if not frame[c].any()])
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "Description": st.column_config.TextColumn(width="large"),
            "Question": st.column_config.TextColumn(width="medium"),
            "Error": st.column_config.TextColumn(width="medium"),
        },
    )


def open_in_classify(item_id: int, record: dict, shipment: str, threshold: float) -> None:
    actor = common.current_actor()
    model, _ = common.classifier()

    def reopen(session):
        recorded = open_line_item(session, actor, item_id, threshold, photo_root=common.photo_root())
        return reopen_with_guidance(session, model, recorded, record["description"])  # its questions, answerable

    try:
        recorded = common.in_transaction(reopen)
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return
    for key in CLASSIFY_KEYS:
        st.session_state.pop(key, None)
    # The Classify screen shows a stored line item exactly as a fresh classification: its candidates, the
    # official path and the decision form. Its inputs show the line's text; its stored photos come along.
    st.session_state["classify_result"] = recorded
    st.session_state["classify_stored"] = {
        "text": record["description"] or "",
        "photos": [p.name for p in recorded.photos],
        "shipment": shipment,
        "line": record["line_ref"] or "",
    }
    st.session_state["classify_text"] = record["description"] or ""
    st.session_state["classify_shipment"] = shipment
    st.session_state["classify_line"] = record["line_ref"] or ""
    st.switch_page("screens/classify.py")


def show_result(result) -> None:
    st.divider()
    parts = [f"**{result.stored:,}** classified and stored under shipment **{md(result.shipment_ref)}**"]
    if result.resumed:
        parts.append(f"{result.resumed:,} already stored (not classified again)")
    if result.errors:
        parts.append(f"{result.errors:,} failed")
    if result.skipped:
        parts.append(f"{result.skipped:,} not run (problems in the file)")
    summary = "; ".join(parts) + f" · {result.seconds:,.1f} s"
    if result.stopped:
        st.warning(
            f"Stopped. {summary}. Run again to resume: stored lines are not classified twice.",
            icon=":material/stop_circle:",
        )
    else:
        st.success(summary, icon=":material/check_circle:")
    flagged = sum(1 for r in result.records if r["needs_review"])
    if flagged:
        st.caption(f":material/warning: {flagged:,} line{'s' if flagged != 1 else ''} below the review threshold.")
    asked = sum(1 for r in result.records if r.get("question"))
    if asked:
        st.caption(
            f":material/help: {asked:,} line{'s have' if asked != 1 else ' has'} a question that decides between "
            "the candidates (column Question): open the line in Classify below to answer it."
        )
    results_table(result)

    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", result.shipment_ref).strip("-") or "batch"
    records = result.records
    actor = common.current_actor()  # each download builds its file when clicked and is audited
    left, right, _ = st.columns([1, 1, 4])
    left.download_button(
        "Download CSV",
        data=common.deferred(lambda session: export_results(session, actor, result, "csv")),
        file_name=f"hs-batch-{stem}.csv",
        mime="text/csv",
        icon=":material/download:",
        key="batch_download_csv",
        on_click="ignore",  # the file is built when clicked; no rerun
    )
    right.download_button(
        "Download XLSX",
        data=common.deferred(lambda session: export_results(session, actor, result, "xlsx")),
        file_name=f"hs-batch-{stem}.xlsx",
        mime=XLSX_MIME,
        icon=":material/download:",
        key="batch_download_xlsx",
        on_click="ignore",  # the file is built when clicked; no rerun
    )

    openable = {r["line_item_id"]: r for r in records if r["line_item_id"]}
    if openable:
        st.markdown("**Open a line in the Classify screen** (candidates, official path, submit a code)")
        pick_col, button_col = st.columns([4, 1], vertical_alignment="bottom")
        item_id = pick_col.selectbox(
            "Line",
            list(openable),
            key="batch_open_pick",
            format_func=lambda i: (
                ("❓ " if openable[i].get("question") else "") + f"{openable[i]['line_ref']} · #{i} · "
                f"{format_code(openable[i]['code_1']) if openable[i]['code_1'] else '—'} · "
                f"{(openable[i]['description'] or '(photos only)')[:80]}"
            ),
        )
        if button_col.button("Open in Classify", key="batch_open", icon=":material/open_in_new:"):
            open_in_classify(item_id, openable[item_id], result.shipment_ref, result.review_threshold)
    st.button("New batch", key="batch_again", on_click=start_over)


st.title("Classify a batch")
csv_file, zip_file, shipment = inputs()
check = None
if csv_file is not None:
    try:
        check = check_batch(
            csv_file.name,
            csv_file.getvalue(),
            zip_file.name if zip_file is not None else None,
            zip_file.getvalue() if zip_file is not None else None,
        )
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
if check is not None:
    show_check(check)
    ready = check.runnable > 0 and bool(shipment.strip())
    if check.runnable and not shipment.strip():
        st.caption("Give a shipment reference to run the batch.")
    if st.button(
        f"Classify {check.runnable:,} line{'s' if check.runnable != 1 else ''}",
        type="primary",
        icon=":material/playlist_play:",
        disabled=not ready,
        key="batch_run",
    ):
        run(check, shipment)
    elif st.session_state.pop("batch_stop", False) and "batch_result" not in st.session_state:
        st.warning(
            "Stopped. The lines finished before the stop are stored; run again to resume "
            "(stored lines are not classified twice).",
            icon=":material/stop_circle:",
        )
error = st.session_state.get("batch_run_error")
if error:
    st.error(md(error), icon=":material/error:")
result = st.session_state.get("batch_result")
if result is not None:
    show_result(result)
