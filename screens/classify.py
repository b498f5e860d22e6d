"""Classify screen: a product's description and photos in, HS candidates at 6/4/2 digits out, the broker's code back."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from screens import common, guided
from screens.common import md
from services.classify import (
    MAX_DESCRIPTION_CHARS,
    MAX_PHOTO_MB,
    MAX_PHOTOS,
    MAX_REF_CHARS,
    UploadedPhoto,
    classify_and_record,
    format_code,
    official_path,
    search_subheadings,
    submit_decision,
    thumbnail,
)
from services.code_path import consistent_path
from services.decisions import near_tie
from services.errors import ServiceError
from services.explanations import METHOD_LABELS, explain_candidate, explain_runner_up
from services.precedents import find_precedents, vote_evidence

LEVEL_TITLES = {6: "Subheadings (6 digits)", 4: "Headings (4 digits)", 2: "Chapters (2 digits)"}
LEVEL_NAMES = {6: "Subheading", 4: "Heading", 2: "Chapter"}
MODALITY = {"text": "the description", "image": "the photos", "both": "the description and photos"}
PATH_LABELS = {"section": "Section", "chapter": "Chapter", "heading": "Heading", "subheading": "Subheading"}
READ_CHARS_HINT = 500  # about 126 MiniLM word pieces of English product text (the model's window)
OTHER = "other"  # radio value for "a code that is not among the candidates"
RESULT_KEYS = (
    "classify_result",
    "classify_decision",
    "classify_choice",
    "classify_search",
    "classify_pick",
    "classify_justification",
    "classify_explanation",
    "classify_stored",
    "classify_contrast",
)

st.session_state.setdefault("classify_upload_round", 0)  # bumped to empty the uploader


def percent(score: float) -> str:
    return "<1%" if score < 0.005 else f"{score:.0%}"


def clear_results() -> None:
    """Inputs changed: the shown results no longer describe them."""
    for key in RESULT_KEYS:
        st.session_state.pop(key, None)


def start_over() -> None:
    """A new product: every input emptied, in the browser too.

    The inputs are assigned "" rather than deleted: a deleted key resets only the server's value, so the text box
    kept showing the previous product while the server classified an empty text (and the next photo was stored
    with whatever the browser sent back).
    """
    clear_results()
    for key in ("classify_text", "classify_shipment", "classify_line", "classify_sku", "classify_importer"):
        st.session_state[key] = ""
    st.session_state["classify_upload_round"] += 1


@st.cache_data(max_entries=64, show_spinner=False)
def preview(name: str, data: bytes) -> tuple[bytes | None, str]:
    """Thumbnail bytes, or None and the reason the file cannot be used."""
    try:
        return thumbnail(UploadedPhoto(name, data)), ""
    except ServiceError as exc:
        return None, str(exc)


def previews(files: list) -> None:
    """Thumbnails of the uploaded photos; a file that is not a usable photo is named with the reason."""
    shown = [(f.name, *preview(f.name, f.getvalue())) for f in files]
    good = [(name, thumb) for name, thumb, _ in shown if thumb is not None]
    if good:
        st.image([thumb for _, thumb in good], width=110, caption=[name for name, _ in good])
    for _, thumb, reason in shown:
        if thumb is None:
            st.caption(f":orange[:material/warning: {md(reason)}]")


def inputs() -> tuple[str, list, str, str, bool]:
    """Draw the input form; returns the description, uploaded files, references and whether Classify was clicked."""
    left, right = st.columns([3, 2], gap="large")
    with left:
        text = st.text_area(
            "Product description",
            key="classify_text",
            height=170,
            placeholder="What it is, what it is made of, what it is for. E.g. men's knitted cotton T-shirt, short sleeves",
            on_change=clear_results,
        )
        # Our own counter rather than max_chars, which would cut a pasted text short without a word.
        over = len(text) > MAX_DESCRIPTION_CHARS
        counter = f"{len(text):,} / {MAX_DESCRIPTION_CHARS:,} characters"
        st.caption(f":red[{counter}: too long, shorten it before classifying]" if over else counter)
        if not over and len(text) > READ_CHARS_HINT:
            st.caption(
                ":orange[:material/info: The model reads only the first 126 word pieces (roughly the first "
                f"{READ_CHARS_HINT} characters); the rest is stored but not read. Put what it is, its material "
                "and its use first.]"
            )
        ref_col, line_col = st.columns(2)
        shipment = ref_col.text_input(
            "Shipment reference (optional)", key="classify_shipment", max_chars=MAX_REF_CHARS, on_change=clear_results
        )
        line = line_col.text_input(
            "Line reference (optional)", key="classify_line", max_chars=MAX_REF_CHARS, on_change=clear_results
        )
        sku_col, importer_col = st.columns(2)  # read in run_classification: the record matches SKU + importer
        sku_col.text_input("SKU (optional)", key="classify_sku", max_chars=MAX_REF_CHARS, on_change=clear_results)
        importer_col.text_input(
            "Importer (optional)", key="classify_importer", max_chars=MAX_REF_CHARS, on_change=clear_results
        )
    with right:
        files = st.file_uploader(
            f"Photos (JPEG, PNG or WebP; up to {MAX_PHOTOS})",
            type=["jpg", "jpeg", "png", "webp"],
            accept_multiple_files=True,
            key=f"classify_photos_{st.session_state['classify_upload_round']}",
            max_upload_size=MAX_PHOTO_MB,  # the model's own limit, so the uploader says the same number
            on_change=clear_results,
        )
        if files:
            previews(files[:MAX_PHOTOS])
    clicked = st.button("Classify", type="primary", icon=":material/search:", key="classify_run")
    return text, files or [], shipment, line, clicked


def run_classification(text: str, files: list, shipment: str, line: str) -> None:
    clear_results()
    photos = [UploadedPhoto(f.name, f.getvalue()) for f in files]
    actor = common.current_actor()
    try:
        classifier, _ = common.classifier()
        with st.spinner("Classifying…"):
            recorded = common.in_transaction(
                lambda session: classify_and_record(
                    session,
                    classifier,
                    actor,
                    text=text,
                    photos=photos,
                    shipment_ref=shipment,
                    line_ref=line,
                    photo_root=common.photo_root(),
                    sku=st.session_state.get("classify_sku"),
                    importer=st.session_state.get("classify_importer"),
                )
            )
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return
    st.session_state["classify_result"] = recorded
    st.session_state["classify_stored"] = {
        "text": text.strip(),
        "photos": [f.name for f in files],
        "shipment": shipment.strip(),
        "line": line.strip(),
    }


def show_stored(recorded) -> None:
    """Exactly what was stored as this line item, so the broker sees what the record holds."""
    stored = st.session_state.get("classify_stored")
    if not stored:
        return
    text = " ".join(stored.get("text", "").split())
    parts = [f"description “{md(text[:160])}{'…' if len(text) > 160 else ''}”" if text else "no description"]
    photos = stored.get("photos") or []
    parts.append(
        f"{len(photos)} photo{'s' if len(photos) != 1 else ''}" + (f" ({md(', '.join(photos))})" if photos else "")
    )
    parts.append(f"shipment {md(stored['shipment'])}" if stored.get("shipment") else "no shipment reference")
    parts.append(f"line {md(stored['line'])}" if stored.get("line") else "no line reference")
    st.caption(f"Stored as line item #{recorded.line_item_id}: " + " · ".join(parts))


def level_chart(candidates) -> alt.Chart:
    frame = pd.DataFrame(
        {
            "code": [format_code(c.code) for c in candidates],
            "probability": [c.score for c in candidates],
            "description": [c.description for c in candidates],
        }
    )
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", title="Probability", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            y=alt.Y("code:N", title=None, sort="-x"),
            tooltip=["code", "description", alt.Tooltip("probability:Q", format=".1%")],
        )
        .properties(height=34 * len(frame) + 30)
    )


def level_table(candidates, prediction) -> None:
    frame = pd.DataFrame(
        {
            "Code": [format_code(c.code) for c in candidates],
            "Official description": [c.description for c in candidates],
            "Probability": [percent(c.score) for c in candidates],  # as the lists say it: "<1%", never "0.0 %"
            # the precedents' vote: "4 earlier rulings on similar goods: 6506.10" (listed under "Why these codes?")
            "Precedents": [prediction.precedent_summary(c.code) or "" for c in candidates],
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "Code": st.column_config.TextColumn(width="small"),
            "Official description": st.column_config.TextColumn(width="large"),
            "Probability": st.column_config.TextColumn(width="small"),
            "Precedents": st.column_config.TextColumn(width="medium"),
        },
    )


def show_path(code: str, nodes) -> None:
    st.markdown(f"**Official path of {format_code(code)}**")
    st.markdown(
        "\n".join(
            f"{'  ' * depth}- {PATH_LABELS[node.level]} **{md(format_code(node.code))}** — {md(node.description)}"
            for depth, node in enumerate(nodes)
        )
    )


def close_call(subheadings):
    """The runner-up subheading when the best one barely beats it inside the same heading (`near_tie`), else None."""
    pairs = [(c.code, c.score) for c in subheadings[:2]]
    return subheadings[1] if near_tie(pairs) else None


def show_record(recorded) -> None:
    """The record first: the same product approved, corrected or imported before (or a conflict in the record)."""
    match = getattr(recorded, "record", None)
    if match is None:
        return
    if match.conflict:
        st.error(
            f"**{md(match.summary())}.** The record does not decide this product: check which code is right, "
            "submit it with a justification, and tell an admin so the record can be corrected.",
            icon=":material/call_split:",
        )
        return
    st.success(
        f"**From the record: {format_code(match.code)}** — {md(match.summary())}. The model's candidates are below; "
        "you still choose and submit the code, and the reviewer sees that it came from the record.",
        icon=":material/history:",
    )


def show_prediction(recorded) -> None:
    prediction = recorded.prediction
    top = prediction.levels[6][0]
    st.subheader(f"Candidates for line item #{recorded.line_item_id}")
    st.caption(
        f"Model {prediction.model_version} · {prediction.nomenclature_edition} · read "
        f"{MODALITY.get(prediction.modality, prediction.modality)} · {prediction.latency_ms:,.0f} ms"
    )
    show_stored(recorded)
    if prediction.needs_review:
        heading = prediction.levels[4][0]
        st.warning(
            f"**Needs review: the model is unsure.** Its confidence is below the "
            f"{prediction.review_threshold:.0%} review threshold (best heading {format_code(heading.code)} at "
            f"{percent(heading.score)}, best subheading {format_code(top.code)} at {percent(top.score)}). "
            "Check the candidates and the official path before choosing a code.",
            icon=":material/warning:",
        )
    rival = close_call(prediction.levels[6])
    if rival is not None:
        st.info(
            f"**{format_code(top.code)} or {format_code(rival.code)}?** The model cannot tell these subheadings "
            f"of heading {format_code(top.code[:4])} apart ({percent(top.score)} against {percent(rival.score)}). "
            f"What separates them is in their official texts: “{md(top.description)}” against "
            f"“{md(rival.description)}”. Check the product (material, use, construction) against both.",
            icon=":material/compare_arrows:",
        )
    for note in prediction.notes:
        st.info(note, icon=":material/info:")

    path = consistent_path(prediction.levels)
    if path.disagreement:
        st.warning(md(path.disagreement), icon=":material/alt_route:")
    shown = {6: path.subheading, 4: path.heading, 2: path.chapter}
    for column, level in zip(st.columns(3), (6, 4, 2), strict=True):
        best = shown[level] or prediction.levels[level][0]
        label = LEVEL_NAMES[level] if shown[level] is not None else f"{LEVEL_NAMES[level]} (best, off the path)"
        column.metric(label, format_code(best.code), percent(best.score), delta_color="off", delta_arrow="off")
        column.caption(md(best.description))

    for tab, level in zip(st.tabs([LEVEL_TITLES[lv] for lv in (6, 4, 2)]), (6, 4, 2), strict=True):
        with tab:
            table, chart = st.columns([5, 2], gap="medium")
            with table:
                level_table(prediction.levels[level], prediction)
            with chart:
                st.altair_chart(level_chart(prediction.levels[level]), width="stretch")

    path_code = path.subheading.code if path.subheading is not None else top.code
    show_path(path_code, official_path(path_code))


def show_attribution(view, heading: str) -> None:
    st.markdown(heading)
    for photo in view.photos:
        left, right = st.columns(2)
        left.image(photo.original_png, caption=f"{photo.name} (as uploaded)", width="stretch")
        right.image(photo.overlay_png, caption="Evidence in the photo (brighter = stronger)", width="stretch")
    if view.words_html:
        st.caption("Words: green pushed towards the code, red away from it (hover a word for its score)")
        st.html(view.words_html)  # every word is HTML-escaped by hs_model.render.words_html
    details = f"{view.seconds:.1f} s"
    if view.convergence_delta is not None:
        details += f" · integrated-gradients completeness error {view.convergence_delta:.3f}"
    st.caption(details)
    for note in view.notes:
        st.caption(md(note))


def show_vote(prediction, code: str) -> None:
    """The labelled examples (earlier rulings, declarations, reviewed decisions) whose vote raised this code."""
    voted = vote_evidence(prediction, code)
    st.markdown(f"**Precedents that voted for {format_code(code)}**")
    if not voted:
        st.caption("None: this code is ranked by the official texts alone (no close precedent voted for it).")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "source": [e.source for e in voted],
                "date": [e.date for e in voted],
                "code": [format_code(e.code) for e in voted],
                "similarity": [round(e.similarity, 3) for e in voted],
                "text": [e.text if len(e.text) <= 400 else e.text[:400] + "…" for e in voted],
            }
        ),
        hide_index=True,
        width="stretch",
        column_config={"text": st.column_config.TextColumn(width="large")},
    )


def show_precedents(recorded, code: str) -> None:
    prediction = recorded.prediction
    try:
        found = common.in_transaction(
            lambda session: find_precedents(
                session,
                common.current_actor(),
                prediction.embedding,
                prediction.model_version,
                k=5,
                exclude_line_item=recorded.line_item_id,
            )
        )
    except ServiceError as exc:
        st.error(md(str(exc)), icon=":material/error:")
        return
    st.markdown("**Similar past decisions**")
    if not found:
        st.caption("No precedents yet: no reviewed decision of this model version is close to this product.")
        return
    st.dataframe(
        pd.DataFrame(
            {
                "final code": [format_code(p.code) for p in found],
                "same as this candidate": ["yes" if p.code == code else "" for p in found],
                "description": [p.description for p in found],
                "review": [p.kind for p in found],
                "reviewer": [p.reviewer for p in found],
                "date (UTC)": [p.decided_at.strftime("%Y-%m-%d") for p in found],
                "similarity": [round(p.similarity, 3) for p in found],
            }
        ),
        hide_index=True,
        width="stretch",
    )


def photos_of(recorded, files: list) -> list[UploadedPhoto]:
    """The photos the shown result was made from: the uploaded ones, else those stored with the line item."""
    if files:
        return [UploadedPhoto(f.name, f.getvalue()) for f in files]
    return list(recorded.photos)


def stored_photos(recorded, files: list) -> None:
    """A line item reopened from Batch comes with its stored photos: show them under the inputs."""
    if files or not recorded.photos:
        return
    thumbs = [(p.name, preview(p.name, p.data)[0]) for p in recorded.photos]
    st.image([t for _, t in thumbs if t], width=110, caption=[n for n, t in thumbs if t])
    st.caption(f"The photos stored with line item #{recorded.line_item_id} (used for its explanations).")


def explanations(recorded, text: str, files: list) -> None:
    """On demand, so classifying stays fast: why this candidate, why not the runner-up, path and precedents."""
    prediction = recorded.prediction
    with st.expander("Why these codes? Heatmaps, words, precedents", icon=":material/insights:"):
        codes = [c.code for c in prediction.levels[6]]
        left, right = st.columns([3, 2])
        code = left.selectbox(
            "Candidate to explain",
            codes,
            format_func=lambda c: (
                f"{format_code(c)} — {next(x.description for x in prediction.levels[6] if x.code == c)}"
            ),
            key="classify_explain_code",
        )
        method = right.radio(
            "Photo method",
            list(METHOD_LABELS),
            format_func=METHOD_LABELS.get,
            key="classify_explain_method",
            disabled=not photos_of(recorded, files),
        )
        if st.button("Explain", icon=":material/insights:", key="classify_explain_run"):
            photos = photos_of(recorded, files)
            classifier, _ = common.classifier()
            try:
                with st.spinner("Computing attributions…"):
                    view = explain_candidate(
                        classifier,
                        common.current_actor(),
                        text=text,
                        photos=photos,
                        code=code,
                        method=method,
                        with_contrast=False,  # on demand below: the explanation asked for comes first
                        redo_missed_completeness=False,  # an approximate heatmap says so rather than taking 4x
                    )
            except ServiceError as exc:
                st.error(md(str(exc)), icon=":material/error:")
                return
            st.session_state["classify_explanation"] = view
            st.session_state.pop("classify_contrast", None)
        view = st.session_state.get("classify_explanation")
        if view is None or view.code != code:
            st.caption("Pick a candidate and press Explain.")
            return
        show_attribution(view.main, f"**What points to {format_code(view.code)}**")
        contrast = st.session_state.get("classify_contrast")
        stale = contrast is None or contrast[0] != (view.code, method)
        if stale and st.button(
            "Compare with the runner-up", icon=":material/compare_arrows:", key="classify_contrast_run"
        ):
            photos = photos_of(recorded, files)
            classifier, _ = common.classifier()
            try:
                with st.spinner("Comparing with the runner-up…"):
                    versus = explain_runner_up(
                        classifier, common.current_actor(), text=text, photos=photos, code=view.code, method=method
                    )
            except ServiceError as exc:
                st.error(md(str(exc)), icon=":material/error:")
                return
            contrast = ((view.code, method), versus)
            st.session_state["classify_contrast"] = contrast
        if contrast is not None and contrast[0] == (view.code, method) and contrast[1] is not None:
            show_attribution(
                contrast[1],
                f"**Why {format_code(view.code)} rather than {format_code(contrast[1].versus)}** "
                "(evidence for the first over the second)",
            )
        show_path(view.code, view.path)
        show_vote(prediction, view.code)
        show_precedents(recorded, view.code)


def choose_code(prediction, record=None) -> str | None:
    """Radio over the record's code (if any) and the subheading candidates, or a search over the HS tree; returns the
    chosen 6 digits."""
    candidates = {c.code: c for c in prediction.levels[6]}
    remembered = record.code if record is not None and record.code else None

    def label(code: str) -> str:
        if code == OTHER:
            return "Another code (search the HS 2022 tree)"
        if code == remembered and code not in candidates:
            return f"{format_code(code)} — from the record"
        suffix = " · from the record" if code == remembered else ""
        return f"{format_code(code)} — {candidates[code].description} ({percent(candidates[code].score)}){suffix}"

    options = [*([remembered] if remembered else []), *(c for c in candidates if c != remembered), OTHER]
    choice = st.radio("Code to submit", options, key="classify_choice", format_func=label)
    if choice != OTHER:
        return choice
    query = st.text_input("Search by code or words", key="classify_search", placeholder="e.g. 6109 or cotton T-shirt")
    if not query.strip():
        return None
    options = search_subheadings(query, classifier=common.classifier()[0])
    if not options:
        st.caption(f"No subheading matches “{md(query.strip())}”.")
        return None
    labels = {o.code: f"{o.formatted} — {o.description}" + (f" ({o.source})" if o.source else "") for o in options}
    st.caption(
        f"{len(options)} subheading(s) for “{md(query.strip())}”: official texts first, then trade names, then the "
        "model's ranking of these words."
    )
    return st.selectbox("Subheading", list(labels), key="classify_pick", format_func=labels.__getitem__)


def decision_form(recorded) -> None:
    st.divider()
    st.subheader("Your decision")
    done = st.session_state.get("classify_decision")
    if done is not None:
        st.success(
            f"Submitted **{format_code(done['code'])}** for line item #{recorded.line_item_id} "
            f"(decision #{done['decision_id']}). It now waits for a reviewer.",
            icon=":material/check_circle:",
        )
        st.button("Classify another product", on_click=start_over, key="classify_again")
        return
    code = choose_code(recorded.prediction, getattr(recorded, "record", None))
    first_choice = recorded.prediction.levels[6][0].code
    justification = st.text_area(
        "Justification",
        key="classify_justification",
        height=90,
        max_chars=4000,
        placeholder="Why this code: material, use, the note or ruling you relied on…",
    )
    if code is not None and code != first_choice:
        st.caption(
            f":orange[:material/edit_note: Required: {format_code(code)} is not the model's first choice "
            f"({format_code(first_choice)}). The reviewer sees your reason beside the difference.]"
        )
    else:
        st.caption("Optional for the model's first choice.")
    record = getattr(recorded, "record", None)
    if record is not None and code is not None and code == record.code and not justification.strip():
        justification = f"From the record: {record.summary()}"  # what the reviewer reads beside the code
    if st.button("Submit", type="primary", disabled=code is None, key="classify_submit"):
        actor = common.current_actor()
        try:
            decision = common.in_transaction(
                lambda session: submit_decision(
                    session,
                    actor,
                    line_item_id=recorded.line_item_id,
                    code=code,
                    justification=justification,
                    prediction_id=recorded.prediction_id,
                )
            )
        except ServiceError as exc:
            st.error(md(str(exc)), icon=":material/error:")
            return
        st.session_state["classify_decision"] = {"decision_id": decision.id, "code": decision.code}
        st.rerun()


st.title("Classify a product")
text, files, shipment, line, clicked = inputs()
if clicked:
    run_classification(text, files, shipment, line)
recorded = st.session_state.get("classify_result")
if recorded is not None:
    stored_photos(recorded, files)
    show_record(recorded)  # the record first: a product seen before
    recorded = guided.show(recorded)
    show_prediction(recorded)
    explanations(recorded, text, files)
    decision_form(recorded)
