"""Model versions screen (admins): versions side by side, fine-tune on reviewed decisions, activate, roll back."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from screens import common
from screens.common import md
from services.errors import ServiceError
from services.models import activate, list_versions, new_reviewed_since_active, rollback, run_finetune

NOTICE = "models_notice"
LAST_RUN = "models_last_run"
GATE_NOTE = {True: " (passed the gate)", False: " (kept back by the gate)", None: ""}


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def card_metrics(versions) -> dict[str, str]:
    """What the served model's own card measured (its training validation), for a version without a gate.

    The shipped model never went through the fine-tune gate, so its gate columns are empty; its card has
    validation top-1 per dataset instead. Keyed by version id; only the version the app serves now.
    """
    try:
        classifier, _ = common.classifier()
    except Exception:  # noqa: BLE001 - a broken model is reported in the sidebar; the table still draws
        return {}
    card = getattr(classifier, "card", None)
    found = (getattr(card, "metrics", None) or {}).get("validation_top1") or {}
    if not found:
        return {}
    text = ", ".join(f"{name} {pct(value)}" for name, value in sorted(found.items()))
    return {str(classifier.version): text}


def versions_table(versions) -> None:
    card = card_metrics(versions)
    frame = pd.DataFrame(
        {
            "": ["● active" if v.active else "" for v in versions],
            "Version": [v.id for v in versions],
            "Kind": [v.kind for v in versions],
            "Parent": [v.parent_id or "—" for v in versions],
            "Created": [f"{v.created_at:%Y-%m-%d %H:%M}" for v in versions],
            "By": [v.created_by or "—" for v in versions],
            # all text: a "—" among integers made pyarrow log a traceback while drawing the table
            "Decisions": [f"{v.decisions:,}" if v.decisions is not None else "—" for v in versions],
            "Held-out HS4": [pct(v.heldout_top1) for v in versions],
            "…previous": [pct(v.heldout_top1_before) for v in versions],
            "Benchmark HS4": [pct(v.benchmark_top1) for v in versions],
            "…previous ": [pct(v.benchmark_top1_before) for v in versions],
            "Gate": [{True: "passed", False: "kept back", None: "—"}[v.gate_passed] for v in versions],
            "Card (validation top-1)": [card.get(v.id, "—") for v in versions],
        }
    )
    st.dataframe(frame, hide_index=True, width="stretch", key="models_table")
    st.caption(
        "HS4 top-1 of each version on the held-out reviewed decisions and on the fixed benchmark (HSCodeComp + ATLAS), "
        "next to the version it was compared with when it was made; for the version served now, also the "
        "validation top-1 its card recorded when it was trained."
    )


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """Loss and the per-epoch top-1 (subheading; heading too where the run reported it), one row per epoch."""
    columns = {
        "loss": [r["loss"] for r in rows],
        "subheading top-1": [r.get("val_hs6_top1", r["val_top1"]) for r in rows],
    }
    if all(r.get("val_hs4_top1") is not None for r in rows):
        columns["heading top-1"] = [r["val_hs4_top1"] for r in rows]
    return pd.DataFrame(columns, index=pd.Index([r["epoch"] for r in rows], name="epoch"))


def draw_history(rows: list[dict], slot=None) -> None:
    """Two small charts per epoch: the training loss, and the top-1 in % on a scale of its own (one shared axis
    flattened the top-1 lines against a loss of 3)."""
    frame = history_frame(rows)
    with slot.container() if slot is not None else st.container():
        left, right = st.columns(2)
        left.line_chart(frame[["loss"]], x_label="epoch", y_label="training loss", height=220)
        right.line_chart(frame.drop(columns="loss") * 100, x_label="epoch", y_label="top-1 (%)", height=220)


def epoch_text(row: dict) -> str:
    """One epoch in words: what the top-1 is measured on (level, part, rows), so a small part's 0.0 % reads as such.

    Reviewed decisions are labelled to 6 digits, so the top-1 that training reports is the subheading top-1 of the
    validation part: about a tenth of the decisions, a handful of items on a small set. The heading top-1 of the
    same items is shown beside it; the gate decides on the held-out heading top-1 (the versions table).
    """
    head = f"Epoch {row['epoch']} of {row['epochs']}: loss {row['loss']:.3f}"
    if "val_rows" not in row:  # a run that does not say what its number is measured on
        return f"{head}, top-1 {pct(row['val_top1'])}"
    part = "training items (no validation items yet)" if row.get("val_part") == "training" else "validation items"
    six = row.get("val_hs6_top1", row["val_top1"])
    text = f"{head}; top-1 on the {row['val_rows']:,} {part}: subheading {pct(six)}"
    if row.get("val_hs4_top1") is not None:
        text += f", heading {pct(row['val_hs4_top1'])}"
    return text


def finetune_now() -> None:
    """Run a fine-tune with a progress bar and a live loss / accuracy chart, then report what the gate decided."""
    actor = common.current_actor()
    progress = st.progress(0.0, text="Encoding the reviewed decisions…")
    chart = st.empty()
    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        progress.progress(row["epoch"] / row["epochs"], text=epoch_text(row))
        draw_history(rows, chart)

    try:
        classifier, _ = common.classifier()
        result = run_finetune(common.session_factory(), actor, classifier, on_epoch=on_epoch)
    except ServiceError as exc:
        progress.empty()
        st.error(md(str(exc)), icon=":material/error:")
        return
    st.session_state[LAST_RUN] = {
        "version": result.version_id,
        "activated": result.activated,
        "reason": result.reason,
        "history": list(result.history),
        "seconds": result.seconds.get("total"),
    }
    st.rerun()


def last_run() -> None:
    run = st.session_state.get(LAST_RUN)
    if not run:
        return
    took = f" in {run['seconds']:.0f} s" if run.get("seconds") else ""
    message = f"New version **{md(run['version'])}**{took}: {md(run['reason'])}."
    if run["activated"]:
        st.success(message, icon=":material/check_circle:")
    else:
        st.warning(message, icon=":material/info:")
    if run["history"]:
        draw_history(run["history"])


def activation_form(versions) -> None:
    actor = common.current_actor()
    others = [v for v in versions if not v.active]
    if not others:
        st.caption("There is only one version.")
    else:
        labels = {v.id: v.id + GATE_NOTE[v.gate_passed] for v in others}
        version_id = st.selectbox("Version", list(labels), format_func=labels.__getitem__, key="models_version")
        chosen = next(v for v in others if v.id == version_id)
        if chosen.gate_passed is False:
            st.warning(f"The evaluation gate kept this version back: {md(chosen.gate_reason)}", icon=":material/block:")
        override = st.checkbox(
            "Override the evaluation gate", key="models_override", disabled=chosen.gate_passed is not False
        )
        reason = st.text_input(
            "Reason" + (" (required for an override)" if override else " (optional)"), key="models_reason"
        )
        if st.button("Activate", type="primary", key="models_activate"):
            act(lambda session: activate(session, actor, version_id, reason, override=override))
    target = next((v for v in versions if v.rollback_target), None)
    if target is None:
        return
    with st.form("models_rollback_form"):
        st.markdown(f"**Roll back to {md(target.id)}**: every user gets that version from their next classification.")
        reason = st.text_input(
            "Reason for the roll back (required; recorded in the audit trail)", key="models_rb_reason"
        )
        confirmed = st.checkbox(f"Yes, switch everyone back to {target.id}", key="models_rb_confirm")
        clicked = st.form_submit_button(f"Roll back to {target.id}", key="models_rollback")
    if clicked:
        if not confirmed:
            st.error("Tick the confirmation to roll back.", icon=":material/error:")
        else:
            act(lambda session: rollback(session, actor, reason))


def act(fn) -> None:
    try:
        result = common.in_transaction(fn)
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return
    how = "Override recorded; " if result.override else ""
    st.session_state[NOTICE] = f"{how}{result.version_id} is now active (was {result.previous_id})."
    st.rerun()


st.title("Model versions")
common.show_notice(NOTICE)

actor = common.current_actor()
versions, new_count = common.load_or_stop(
    lambda session: (list_versions(session, actor), new_reviewed_since_active(session))
)

active = next((v for v in versions if v.active), None)
left, middle, right = st.columns(3)
left.metric("Active version", active.id if active else "—")
middle.metric("Reviewed decisions new since it", f"{new_count:,}")
right.metric("Versions", len(versions))
versions_table(versions)

st.subheader("Fine-tune on reviewed decisions")
st.caption(
    "Trains a new version from the active one on every approved or corrected decision (rejected ones never count). "
    "It goes live only if it beats the active version on held-out decisions without losing more than a point on "
    "the fixed benchmark; otherwise it is kept for you to inspect. The progress shows each epoch's top-1 on the "
    "validation part (about 1 decision in 10: a few items on a small set, so 0 % at 6 digits is common there)."
)
last_run()
if st.button("Fine-tune now", type="primary", icon=":material/model_training:", key="models_finetune"):
    st.session_state.pop(LAST_RUN, None)
    finetune_now()

st.subheader("Activate or roll back")
activation_form(versions)
