"""The model versions screen through AppTest, with the services patched: table, fine-tune progress, activate, roll back."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from screens import common
from services import models
from services.auth import Actor
from services.errors import InvalidInput, PermissionDenied
from services.models import ActivationResult, VersionView

PAGE = str(Path(__file__).resolve().parents[1] / "screens" / "models.py")
ADMIN = Actor(1, "ada", "admin")


def view(version_id: str, **kw) -> VersionView:
    base = dict(
        id=version_id, kind="fine-tuned", status="candidate", active=False, rollback_target=False, parent_id="shipped",
        created_at=datetime(2026, 11, 25, 17, 0), created_by="ada", decisions=120, heldout_top1=0.8,
        heldout_top1_before=0.7, heldout_rows=24, benchmark_top1=0.51, benchmark_top1_before=0.5, gate_passed=True,
        gate_reason="activated: better",
    )  # fmt: skip
    return VersionView(**(base | kw))


class FakeModels:
    """Stands in for services.models: remembers the calls, answers from a small list of versions."""

    def __init__(self) -> None:
        self.versions = [
            view("ft-2", gate_passed=False, gate_reason="kept, not activated: worse on the fixed benchmark"),
            view("ft-1", active=True, status="active"),
            view("shipped", kind="trained", rollback_target=True, status="retired", parent_id=None, decisions=None,
                 heldout_top1=None, heldout_top1_before=None, benchmark_top1=None, benchmark_top1_before=None,
                 gate_passed=None, gate_reason=""),
        ]  # fmt: skip
        self.calls: list[tuple] = []
        self.epochs = 3

    def list_versions(self, session, actor):
        if actor is None or actor.role != "admin":
            raise PermissionDenied("Only admins can manage model versions.")
        return self.versions

    def new_reviewed_since_active(self, session):
        return 42

    def run_finetune(self, session_factory, actor, classifier, on_epoch=None, **kw):
        self.calls.append(("finetune", classifier))
        for e in range(1, self.epochs + 1):
            on_epoch({"epoch": e, "epochs": self.epochs, "loss": 2.0 / e, "val_top1": 0.5 + 0.1 * e, "seconds": 1.0})
        self.versions.insert(0, view("ft-3", active=False))
        return _Result("ft-3", False, "kept, not activated: not better")

    def activate(self, session, actor, version_id, reason="", override=False):
        self.calls.append(("activate", version_id, reason, override))
        chosen = next(v for v in self.versions if v.id == version_id)
        if chosen.gate_passed is False and not override:
            raise InvalidInput(f"{version_id} did not pass the evaluation gate. Choose override and give a reason.")
        if override and not reason.strip():
            raise InvalidInput("Give a reason for overriding the evaluation gate.")
        self._switch(version_id)
        return ActivationResult(version_id, "ft-1", override, reason)

    def rollback(self, session, actor, reason=""):
        self.calls.append(("rollback", reason))
        if not reason.strip():
            raise InvalidInput("Give a reason for the roll back.")
        self._switch("shipped")
        return ActivationResult("shipped", "ft-1", False, f"roll back from ft-1: {reason}")

    def _switch(self, version_id: str) -> None:
        self.versions = [replace(v, active=v.id == version_id) for v in self.versions]


class _Result:
    def __init__(self, version_id, activated, reason) -> None:
        self.version_id, self.activated, self.reason = version_id, activated, reason
        self.history = [{"epoch": 1, "loss": 1.0, "val_top1": 0.6}, {"epoch": 2, "loss": 0.8, "val_top1": 0.7}]
        self.seconds = {"total": 12.5}


@pytest.fixture
def fake(monkeypatch) -> FakeModels:
    fake = FakeModels()
    for name in ("list_versions", "new_reviewed_since_active", "run_finetune", "activate", "rollback"):
        monkeypatch.setattr(models, name, getattr(fake, name))
    monkeypatch.setattr(common, "in_transaction", lambda fn: fn("session"))
    monkeypatch.setattr(common, "session_factory", lambda: "factory")
    monkeypatch.setattr(common, "classifier", lambda: ("the classifier", None))
    return fake


def page(actor: Actor | None = ADMIN) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=30)
    if actor is not None:
        at.session_state[common.ACTOR_KEY] = actor
    return at.run()


def test_versions_side_by_side_with_the_active_one_marked(fake):
    at = page()
    assert not at.exception and not at.error
    assert at.title[0].value == "Model versions"
    assert [m.value for m in at.metric] == ["ft-1", "42", "3"]
    table = at.dataframe[0].value
    assert list(table["Version"]) == ["ft-2", "ft-1", "shipped"]
    assert list(table[""]) == ["", "● active", ""]
    assert list(table["Held-out HS4"]) == ["80.0%", "80.0%", "—"]
    assert list(table["Gate"]) == ["kept back", "passed", "—"]


def test_fine_tune_shows_progress_and_a_chart_then_the_gate_outcome(fake):
    at = page()
    at.button(key="models_finetune").click().run()
    assert not at.exception and not at.error
    assert fake.calls == [("finetune", "the classifier")]
    warning = at.warning[0].value.replace("\\", "")
    assert warning == "New version **ft-3** in 12 s: kept, not activated: not better."
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")  # the history chart stays after the run
    assert "ft-3" in list(at.dataframe[0].value["Version"])


def test_progress_is_reported_per_epoch(fake, monkeypatch):
    seen = []
    original = fake.run_finetune

    def spy(session_factory, actor, classifier, on_epoch=None, **kw):
        def wrapped(row):
            on_epoch(row)
            seen.append(row["epoch"])

        return original(session_factory, actor, classifier, on_epoch=wrapped)

    monkeypatch.setattr(models, "run_finetune", spy)
    page().button(key="models_finetune").click().run()
    assert seen == [1, 2, 3]


def test_a_finetune_refusal_is_shown_as_one_clear_error(fake, monkeypatch):
    def refuse(*args, **kwargs):
        raise InvalidInput("Only 3 reviewed decision(s) so far; at least 10 are needed to fine-tune.")

    monkeypatch.setattr(models, "run_finetune", refuse)
    at = page()
    at.button(key="models_finetune").click().run()
    assert [e.value.replace("\\", "") for e in at.error] == [
        "Only 3 reviewed decision(s) so far; at least 10 are needed to fine-tune."
    ]


def test_a_version_kept_back_needs_override_with_a_reason(fake):
    at = page()
    at.selectbox(key="models_version").set_value("ft-2").run()
    assert "kept this version back" in at.warning[0].value
    at.button(key="models_activate").click().run()
    assert "did not pass the evaluation gate" in at.error[0].value
    at.checkbox(key="models_override").check().run()
    at.button(key="models_activate").click().run()
    assert "Give a reason" in at.error[0].value
    at.text_input(key="models_reason").input("tariff change, reviewed by hand").run()
    at.button(key="models_activate").click().run()
    assert not at.error
    assert fake.calls[-1] == ("activate", "ft-2", "tariff change, reviewed by hand", True)
    assert "Override recorded" in at.success[0].value and at.metric[0].value == "ft-2"


def test_roll_back_asks_for_a_confirmation_and_a_reason(fake):
    """Issue 12 point 9: roll back is audited with a reason, like an override, and confirmed first."""
    at = page()
    at.text_input(key="models_rb_reason").input("ft-1 misreads footwear")
    at.button(key="models_rollback").click().run()
    assert fake.calls == [] and at.error[0].value == "Tick the confirmation to roll back."
    at.checkbox(key="models_rb_confirm").check()
    at.text_input(key="models_rb_reason").input("")
    at.button(key="models_rollback").click().run()
    assert fake.calls == [("rollback", "")] and "Give a reason" in at.error[0].value
    at.text_input(key="models_rb_reason").input("ft-1 misreads footwear")
    at.button(key="models_rollback").click().run()
    assert fake.calls[-1] == ("rollback", "ft-1 misreads footwear")
    assert "shipped is now active" in at.success[0].value.replace("\\", "")
    assert at.metric[0].value == "shipped"


def test_the_served_models_card_metrics_fill_its_row_and_decisions_are_text(fake, monkeypatch):
    from types import SimpleNamespace

    card = SimpleNamespace(metrics={"validation_top1": {"uk-val": 0.2414, "myntra-full": 0.9819}}, kind="trained")
    served = SimpleNamespace(version="shipped", card=card)
    monkeypatch.setattr(common, "classifier", lambda: (served, None))
    frame = page().dataframe[0].value
    row = frame[frame["Version"] == "shipped"].iloc[0]
    assert row["Card (validation top-1)"] == "myntra-full 98.2%, uk-val 24.1%"
    assert list(frame["Decisions"]) == ["120", "120", "—"]  # one type per column: no pyarrow conversion error


@pytest.mark.parametrize("actor", [Actor(2, "rey", "reviewer"), None])
def test_non_admins_see_only_the_refusal(fake, actor):
    at = page(actor)
    assert [e.value.replace("\\", "") for e in at.error] == ["Only admins can manage model versions."]
    assert not at.button
