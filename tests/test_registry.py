"""Model registry: atomic version folders, registration, activation and roll back, hash checks against the database."""

from __future__ import annotations

import os
import time

import pytest
import torch
from sqlalchemy import select

from db import model_versions
from db.models import AuditEvent, ModelActivation
from hs_model import model_store
from hs_model.checkpoint import CheckpointError, ModelCard
from hs_model.precedents import PrecedentIndex, VoteConfig
from services import finetune as finetune_service
from services import model_registry, models
from tests.test_finetune import tiny_card


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"head.w": torch.randn(4, 3, generator=g), "bank.code": torch.tensor([610910], dtype=torch.int32)}


def card(version: str, parent: str | None = None) -> ModelCard:
    c = tiny_card(version, "fine-tuned")
    c.parent = parent
    return c


def add_version(session, root, version: str, parent: str | None = None, seed: int = 0) -> model_versions.VersionRecord:
    folder, _ = model_store.write_version(tensors(seed), card(version, parent), root)
    return model_registry.register_folder(session, folder)


def test_round_trip_save_load_activate_roll_back(factory, model_env):
    root = model_env.root
    with factory.begin() as session:
        shipped = model_registry.ensure_default_registered(session)
        assert shipped.id == "tiny-shipped" and model_versions.active_version(session).id == "tiny-shipped"
        assert (root / "tiny-shipped" / "weights.safetensors").is_file()  # a copy: later releases change nothing
        v2 = add_version(session, root, "v2", parent="tiny-shipped", seed=1)
        v3 = add_version(session, root, "v3", parent="v2", seed=2)
        assert v2.status == "candidate" and v3.parent_id == "v2"
        loaded_card, loaded = model_registry.load_version(session, "v2")
        assert loaded_card.parent == "tiny-shipped" and torch.equal(loaded["head.w"], tensors(1)["head.w"])
        model_registry.activate(session, "v2", user_id=None, username="ada", reason="better")
        model_registry.activate(session, "v3", user_id=None, username="ada", reason="better still")
        assert model_versions.active_version(session).id == "v3"
        assert model_versions.previous_active(session) == "v2"
        model_registry.activate(
            session, "v2", user_id=None, username="ada", reason=f"{model_versions.ROLLBACK_PREFIX} from v3"
        )
        assert model_versions.previous_active(session) == "tiny-shipped"  # a stack, not a toggle between the last two
        model_registry.activate(
            session, "tiny-shipped", user_id=None, username="ada", reason=model_versions.ROLLBACK_PREFIX
        )
        assert (
            model_versions.active_version(session).id == "tiny-shipped"
            and model_versions.previous_active(session) is None
        )
        statuses = {v.id: v.status for v in model_versions.list_versions(session)}
    assert statuses == {"tiny-shipped": "active", "v2": "retired", "v3": "retired"}
    with factory() as session:
        log = session.scalars(select(ModelActivation.version_id).order_by(ModelActivation.id)).all()
        changes = session.scalars(select(AuditEvent).where(AuditEvent.action == "model_change")).all()
    assert log == ["tiny-shipped", "v2", "v3", "v2", "tiny-shipped"]  # append-only history
    assert len(changes) == 5


def test_first_version_is_zero_shot_when_nothing_is_shipped(factory, model_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HS_MODEL_DIR", str(tmp_path / "nothing-here"))
    with factory.begin() as session:
        first = model_registry.ensure_default_registered(session)
        again = model_registry.ensure_default_registered(session)
        folder = models.active_model_dir(session)
    assert first.id == again.id == "zero-shot-v1" and first.card["kind"] == "zero-shot"
    assert folder is not None and (folder / "card.json").is_file() and not (folder / "weights.safetensors").exists()


def test_tampered_weights_are_refused_with_a_clear_error(factory, model_env):
    with factory.begin() as session:
        add_version(session, model_env.root, "v2")
        model_registry.activate(session, "v2", user_id=None, username=None, reason="")
    weights = model_env.root / "v2" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with factory() as session:
        with pytest.raises(CheckpointError, match="do not match the hash recorded"):
            model_registry.load_version(session, "v2")
        with pytest.raises(models.ModelIntegrityError, match="v2 do not match the hash recorded"):
            models.active_model_dir(session)


def test_a_card_and_weights_swapped_together_are_still_refused(factory, model_env):
    """The card carries its own hash, so an attacker rewrites both: the database's hash still catches it."""
    with factory.begin() as session:
        add_version(session, model_env.root, "v2", seed=1)
    other, _ = model_store.write_version(tensors(9), card("v2-evil"), model_env.root)
    for name in ("weights.safetensors", "card.json"):
        os.replace(other / name, model_env.root / "v2" / name)
    with factory() as session, pytest.raises(CheckpointError, match="do not match the hash recorded"):
        model_registry.load_version(session, "v2")


def test_missing_files_are_reported(factory, model_env):
    with factory.begin() as session:
        rec = add_version(session, model_env.root, "v2")
    (model_env.root / "v2" / "weights.safetensors").unlink()
    (model_env.root / "v2" / "card.json").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        model_registry.verify(rec)


def test_versions_are_written_once_and_atomically(model_env, monkeypatch):
    root = model_env.root
    model_store.write_version(tensors(), card("v2"), root)
    with pytest.raises(FileExistsError):
        model_store.write_version(tensors(), card("v2"), root)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model_store, "save_checkpoint", crash)
    with pytest.raises(OSError, match="disk full"):
        model_store.write_version(tensors(), card("v3"), root)
    assert sorted(p.name for p in root.iterdir()) == ["v2"]  # neither v3 nor its temporary folder


def test_stale_temporary_folders_of_crashed_writers_are_swept(model_env):
    root = model_env.root
    root.mkdir(parents=True)
    stale, fresh = root / ".tmp-old-1234", root / ".tmp-new-5678"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    model_store.write_version(tensors(), card("v2"), root)
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to a writer still at work


def test_new_version_ids_are_unique_and_sortable():
    ids = [model_store.new_version_id() for _ in range(50)]
    assert len(set(ids)) == 50 and all(i.startswith("ft-") for i in ids)


# -- the precedent index travels with the versions that can use it ----------------------------------------------
def _ship_index(folder, space: str = "raw") -> PrecedentIndex:
    index = PrecedentIndex("toy", 3, config=VoteConfig(space=space))  # type: ignore[arg-type]
    vectors = torch.nn.functional.normalize(torch.eye(3)[:2], dim=-1)
    index.add(["bicycle helmet", "cotton t-shirt"], vectors, ["650610", "610910"], [("t", "1", ""), ("t", "2", "")],
              {"650610", "610910"})  # fmt: skip
    index.save(folder)
    return index


def test_the_registered_copy_of_the_shipped_model_keeps_its_precedent_index(factory, model_env):
    _ship_index(model_env.shipped)
    with factory.begin() as session:
        model_registry.ensure_default_registered(session)
    stored = model_env.root / "tiny-shipped"
    back = PrecedentIndex.load(stored, {"650610", "610910"})
    assert back is not None and back.codes == ["650610", "610910"]  # without it the app served no vote at all


def test_a_stored_copy_made_without_the_index_gets_it_added(model_env):
    root = model_env.root
    plain = model_store.copy_into_store(model_env.shipped, "tiny-shipped", root)  # nothing shipped yet
    assert model_store.precedent_files(plain) == []
    _ship_index(model_env.shipped)  # the same weights, now with an index beside them
    again = model_store.copy_into_store(model_env.shipped, "tiny-shipped", root)
    assert again == plain and [p.name for p in model_store.precedent_files(again)] == [
        "precedents.safetensors",
        "precedents.json",
    ]
    assert not [p for p in again.iterdir() if p.name.startswith(".tmp-")]


def test_a_finetuned_version_carries_its_base_index_unless_the_index_belongs_to_the_head(factory, model_env):
    from tests.test_finetune import TINY_CFG, seed_reviewed

    _ship_index(model_env.shipped)
    seed_reviewed(factory, 30, kinds=("approved", "corrected"))
    result = finetune_service.run(factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None)
    new = model_env.root / result.version_id
    assert [(p.name, p.read_bytes()) for p in model_store.precedent_files(new)] == [
        (p.name, p.read_bytes()) for p in model_store.precedent_files(model_env.shipped)
    ]
    # an index of the head's own joint-space vectors would be wrong for another head: not carried
    joint = model_env.root / "joint"
    joint.mkdir()
    _ship_index(joint, space="joint")
    assert model_store.precedent_files(joint) and not model_store.precedent_files(joint, head_independent=True)


def test_a_shipped_release_whose_parent_this_database_never_held_registers(factory, model_env):
    """hsdesk-v3 names hsdesk-v2 as its parent; a fresh database holds no hsdesk-v2, and the first start failed on
    the foreign key. The record's parent stays empty; the card keeps the lineage."""
    from hs_model.checkpoint import save_checkpoint

    shipped = model_env.shipped
    card = tiny_card("tiny-v3")
    card.parent = "tiny-v2-not-here"
    save_checkpoint(shipped, tensors(5), card)
    with factory.begin() as session:
        rec = model_registry.ensure_default_registered(session)
    assert rec.id == "tiny-v3" and rec.parent_id is None and rec.card["parent"] == "tiny-v2-not-here"
