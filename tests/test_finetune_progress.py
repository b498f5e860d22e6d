"""What the fine-tune progress reports per epoch says what it is measured on (issue 12 point 9: "accuracy 0.0 %").

The number training reports is top-1 at the labels' own level, 6 digits for reviewed decisions, over the validation
part (about 1 decision in 10): a few items on a small set, often none right at 6 digits. Each epoch now carries the
part, its size and the heading top-1 of the same items, and the Models screen shows them in words.
"""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from hs_train import finetune
from hs_train.finetune import part_of
from screens import common
from services import finetune as finetune_service
from services import models
from tests.test_app_models import ADMIN
from tests.test_finetune import TINY_CFG, seed_reviewed

PAGE = str(Path(__file__).resolve().parents[1] / "screens" / "models.py")


def test_each_epoch_names_the_part_its_size_and_the_heading_top1_beside_the_subheading(factory, model_env):
    made = seed_reviewed(factory, 30, kinds=("approved", "corrected"))
    ids = made["approved"] + made["corrected"]
    n_val = sum(part_of(i) == "val" for i in ids)
    assert 0 < n_val < 15  # a small validation part, as on a small set of decisions
    epochs: list[dict] = []
    result = finetune_service.run(
        factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None, on_epoch=epochs.append
    )
    assert len(epochs) == TINY_CFG.epochs
    for row in epochs:
        assert row["val_part"] == "validation"
        assert row["val_rows"] == row["val_hs6_rows"] == row["val_hs4_rows"] == n_val
        assert row["val_hs6_top1"] == row["val_top1"]  # the number training reports is the subheading top-1
        # a right subheading is a right heading: the heading top-1 is never below it
        assert row["val_hs6_top1"] <= row["val_hs4_top1"] <= 1.0
        assert round(row["val_hs4_top1"] * n_val, 6).is_integer()
    assert all("val_rows" in h for h in result.history)  # the history (and the card) keep it too


def test_without_validation_items_the_epochs_say_they_are_measured_on_the_training_items(
    factory,
    model_env,
    monkeypatch,
):
    made = seed_reviewed(factory, 20, kinds=("approved",))
    parts = {str(i): ("heldout" if n % 4 == 0 else "train") for n, i in enumerate(made["approved"])}
    monkeypatch.setattr(finetune, "part_of", lambda item_id: parts[str(item_id)])
    epochs: list[dict] = []
    finetune_service.run(
        factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None, on_epoch=epochs.append
    )
    n_train = sum(p == "train" for p in parts.values())
    assert [(r["val_part"], r["val_rows"]) for r in epochs] == [("training", n_train)] * TINY_CFG.epochs


def progress_texts(monkeypatch, rows: list[dict]) -> list[str]:
    """The Models screen's progress bar text at each epoch of a (patched) fine-tune."""
    shown: list[str] = []

    def run_finetune(session_factory, actor, classifier, on_epoch=None, **kw):
        for row in rows:
            on_epoch(row)
        raise RuntimeError("stop after the epochs")  # keep the page as it was during the run

    monkeypatch.setattr(models, "list_versions", lambda session, actor: [])
    monkeypatch.setattr(models, "new_reviewed_since_active", lambda session: 0)
    monkeypatch.setattr(models, "run_finetune", run_finetune)
    monkeypatch.setattr(common, "in_transaction", lambda fn: fn("session"))
    monkeypatch.setattr(common, "session_factory", lambda: "factory")
    monkeypatch.setattr(common, "classifier", lambda: ("the classifier", None))
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.session_state[common.ACTOR_KEY] = ADMIN
    at.run()
    at.button(key="models_finetune").click().run()
    for element in at.get("progress"):
        shown.append(element.proto.text)
    return shown


def test_the_progress_says_what_its_top1_is_measured_on(monkeypatch):
    row = {"epoch": 2, "epochs": 6, "loss": 1.25, "val_top1": 0.0, "seconds": 1.0, "val_part": "validation",
           "val_rows": 4, "val_hs6_top1": 0.0, "val_hs6_rows": 4, "val_hs4_top1": 0.5, "val_hs4_rows": 4}  # fmt: skip
    shown = progress_texts(monkeypatch, [row])
    assert shown == ["Epoch 2 of 6: loss 1.250; top-1 on the 4 validation items: subheading 0.0%, heading 50.0%"]
    assert "accuracy 0.0" not in shown[0]


def test_the_progress_says_when_the_top1_is_on_the_training_items(monkeypatch):
    row = {"epoch": 1, "epochs": 6, "loss": 2.0, "val_top1": 0.25, "seconds": 1.0, "val_part": "training",
           "val_rows": 8, "val_hs6_top1": 0.25, "val_hs6_rows": 8, "val_hs4_top1": 0.5, "val_hs4_rows": 8}  # fmt: skip
    shown = progress_texts(monkeypatch, [row])
    assert shown == [
        "Epoch 1 of 6: loss 2.000; top-1 on the 8 training items (no validation items yet): subheading 25.0%, "
        "heading 50.0%"
    ]
