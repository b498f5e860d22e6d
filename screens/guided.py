"""Guided classification on screen: the evidence read as chips, the deciding questions as buttons, and the
broker's answers beside the code for the reviewer."""

from __future__ import annotations

import streamlit as st

from screens import common
from screens.common import md
from services.errors import ServiceError
from services.guided import answer_question, broker_facts, open_questions


def _on_answer(recorded, key: str, widget: str) -> None:
    option = st.session_state.get(widget)
    if not option:
        return
    try:
        updated = common.in_transaction(
            lambda session: answer_question(session, common.current_actor(), recorded, key, option)
        )
    except ServiceError as exc:
        st.session_state["guided_error"] = str(exc)
        return
    st.session_state["classify_result"] = updated


def show(recorded):
    """Chips and questions above the candidates; returns the classification as re-ranked by the answers."""
    guidance = recorded.prediction.guidance
    if guidance is None:
        return recorded
    if guidance.evidence:
        chips = " ".join(f":blue-badge[{md(ev.words)} → {md(ev.label)}]" for ev in guidance.evidence)
        st.markdown(f"**Read from the input:** {chips}")
    questions = open_questions(recorded.prediction)
    if questions:
        st.markdown("**What decides between the candidates** (your answer re-ranks them and is kept with the item)")
    for q in questions:
        widget = f"guided_{recorded.line_item_id}_{q.key}"
        labels = dict(q.options)
        current = guidance.answers.get(q.key)
        note = f" · read from the input: {md(labels.get(q.evidence, q.evidence))}" if q.evidence and not current else ""
        st.pills(
            f"{q.text}{note}",
            list(labels),
            format_func=labels.__getitem__,
            default=current,
            key=widget,
            on_change=_on_answer,
            args=(recorded, q.key, widget),
        )
    error = st.session_state.pop("guided_error", None)
    if error:
        st.error(md(error), icon=":material/error:")
    return st.session_state.get("classify_result", recorded)


def show_facts(line_item_id: int) -> None:
    """The broker's answers to the guided questions (Review screen)."""
    try:
        facts = common.in_transaction(lambda session: broker_facts(session, common.current_actor(), line_item_id))
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return
    if not facts:
        return
    st.markdown("**Broker-stated facts**")
    st.markdown("\n".join(f"- {md(f.question_text)} **{md(f.answer_label)}** · {md(f.username)}" for f in facts))
