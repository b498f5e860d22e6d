"""Fine-tuning on reviewed decisions with tiny models: labels, splits, feature cache, the gate, interruptions, services."""

from __future__ import annotations

import copy
import os
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sqlalchemy import func, select

from db import model_versions
from db.models import AuditEvent, ModelActivation, ModelVersion
from db.queries import add_user, create_line_item, find_user
from hs_model.bank import with_extra_prototypes
from hs_model.checkpoint import ModelCard, load_checkpoint
from hs_model.model import HeadConfig, HsJointModel, LabelBank, LabelSpace
from hs_model.predict import Features, load_trained_parts, trained_parts
from hs_train import finetune
from hs_train.finetune import FinetuneConfig, FinetuneError, GateScores, LabelledSet, decide, part_of
from services import decisions, model_registry, models
from services import finetune as finetune_service
from services.auth import Actor
from services.errors import InvalidInput, PermissionDenied
from tests.test_model import CODES, C, E

TINY_CFG = FinetuneConfig(epochs=6, lr=2e-2, batch_size=32, replay_per_epoch=8, min_decisions=5, min_calibration_rows=5)
_CODE = re.compile(r"code (\d{6})")


# -- a classifier over tiny "towers": text mentioning "code XXXXXX" lands near a fixed, code-specific direction --------
def _official_bank() -> LabelBank:
    g = torch.Generator().manual_seed(0)
    space = LabelSpace.from_codes(CODES)
    return LabelBank(
        text_emb=torch.nn.functional.normalize(torch.randn(len(CODES), E, generator=g), dim=-1),
        text_code=torch.arange(len(CODES)),
        heading_emb=torch.randn(len(space.headings), E, generator=g),
        chapter_emb=torch.randn(len(space.chapters), E, generator=g),
        class_name_emb=torch.randn(1000, E, generator=g),
    )


def _signature() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(len(CODES), E, generator=torch.Generator().manual_seed(7)), dim=-1)


def tiny_card(version: str, kind: str = "trained") -> ModelCard:
    return ModelCard(version, "HS2022", "tiny-text", "tiny-image", "2026-11-25", kind=kind)


class TinyClassifier:
    """Duck-types hs_model.predict.Classifier for fine-tuning: encode, with_model, card, model, towers, lock."""

    text_tower = SimpleNamespace(name="tiny-text", max_length=16, dim=E)
    image_tower = SimpleNamespace(name="tiny-image", dim=C)
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.space = LabelSpace.from_codes(CODES)
        self.official_bank = _official_bank()
        self.lock = threading.Lock()
        self.encoded = 0
        self.card, self.model = self._load(None)

    def _load(self, folder: Path | None) -> tuple[ModelCard, HsJointModel]:
        card, tensors = load_checkpoint(folder) if folder is not None else (tiny_card("tiny-zero", "zero-shot"), {})
        bank = self.official_bank
        if "bank.emb" in tensors:
            pos = {c: i for i, c in enumerate(self.space.subheadings)}
            codes = torch.tensor([pos[f"{int(c):06d}"] for c in tensors["bank.code"].tolist()])
            bank = with_extra_prototypes(bank, tensors["bank.emb"], codes)
        model = HsJointModel(self.space, bank, HeadConfig(text_dim=E, image_dim=C))
        load_trained_parts(model, tensors)
        return card, model.eval()

    def with_model(self, folder: Path | None) -> TinyClassifier:
        other = copy.copy(self)
        other.card, other.model = self._load(folder)
        return other

    def encode(self, queries) -> Features:
        from hs_model.errors import InputError

        if any("UNREADABLE" in (q.text or "") for q in queries):
            raise InputError("The description has 30,000 characters; the limit is 20,000.")
        self.encoded += len(queries)
        sig = _signature()
        n = len(queries)
        text = torch.zeros(n, E)
        for i, q in enumerate(queries):
            m = _CODE.search(q.text or "")
            g = torch.Generator().manual_seed(sum(map(ord, q.text or "")))
            base = sig[CODES.index(m.group(1))] if m else torch.zeros(E)
            text[i] = torch.nn.functional.normalize(base + 0.15 * torch.randn(E, generator=g), dim=-1)
        has_text = torch.tensor([bool(q.text) for q in queries])
        has_image = torch.tensor([bool(q.images) for q in queries])
        return Features(text, torch.zeros(n, C), torch.zeros(n, 1000), has_text, has_image)


def shipped_checkpoint(folder: Path, version: str = "tiny-shipped") -> Path:
    """A 'shipped' tiny model folder with two extra label-bank prototypes (to check they are carried over)."""
    from hs_model.checkpoint import save_checkpoint

    clf = TinyClassifier()
    tensors = trained_parts(clf.model)
    g = torch.Generator().manual_seed(3)
    tensors["bank.emb"] = torch.nn.functional.normalize(torch.randn(2, E, generator=g), dim=-1).half()
    tensors["bank.code"] = torch.tensor([610910, 640411], dtype=torch.int32)
    save_checkpoint(folder, tensors, tiny_card(version))
    return folder


def seed_reviewed(factory, n: int, kinds=("approved", "corrected", "rejected")) -> dict[str, list[int]]:
    """`n` line items per kind; 'corrected' items are submitted with a wrong code and corrected to the right one."""
    with factory.begin() as session:
        users = {}
        for name, role in (("bea", "broker"), ("rey", "reviewer"), ("ada", "admin")):
            user = find_user(session, name) or add_user(session, username=name, role=role, password_hash="!")
            users[role] = Actor.from_user(user)
        made: dict[str, list[int]] = {k: [] for k in kinds}
        for kind in kinds:
            for i in range(n):
                code = CODES[i % len(CODES)]
                item = create_line_item(
                    session, description=f"{kind} item {i} code {code}", created_by=users["broker"].user_id
                )
                wrong = CODES[(i + 1) % len(CODES)]
                decisions.submit(session, users["broker"], item.id, wrong if kind == "corrected" else code)
                if kind == "approved":
                    decisions.approve(session, users["reviewer"], item.id)
                elif kind == "corrected":
                    decisions.correct(session, users["reviewer"], item.id, code, "right code")
                elif kind == "rejected":
                    decisions.reject(session, users["reviewer"], item.id, "unclear")
                made[kind].append(item.id)
    return made


def admin(factory) -> Actor:
    with factory() as session:
        return Actor.from_user(find_user(session, "ada"))


def entries(root: Path) -> list[str]:
    """Everything in the registry root (temporary folders included) except the fine-tune lock file."""
    return sorted(p.name for p in root.iterdir() if p.name != ".finetune.lock")


def counts(factory) -> tuple[int, int]:
    with factory() as session:
        return (
            session.scalar(select(func.count()).select_from(ModelVersion)),
            session.scalar(select(func.count()).select_from(ModelActivation)),
        )


# -- the gate ----------------------------------------------------------------------------------------------------
def scores(heldout, bench, rows=20):
    return GateScores(heldout, rows, bench, 800 if bench is not None else 0)


def test_gate_activates_when_better_on_heldout_and_not_worse_on_benchmark():
    d = decide(scores(0.80, 0.500), scores(0.70, 0.505), tolerance=0.01)
    assert d.activate and d.reason.startswith("activated")


def test_gate_keeps_a_version_worse_on_the_benchmark():
    d = decide(scores(0.90, 0.48), scores(0.70, 0.50), tolerance=0.01)
    assert not d.activate
    assert "worse on the fixed benchmark by 2.0 points" in d.reason


def test_gate_keeps_a_version_only_equal_on_heldout():
    d = decide(scores(0.70, 0.60), scores(0.70, 0.50), tolerance=0.01)
    assert not d.activate and "not better" in d.reason and "equal" in d.reason


def test_gate_without_benchmark_decides_on_heldout_alone_and_says_so():
    assert decide(scores(0.8, None), scores(0.7, None)).activate
    d = decide(scores(0.8, None), scores(0.7, None))
    assert "benchmark not available" in d.reason
    assert not decide(scores(None, 0.5, rows=0), scores(None, 0.5, rows=0)).activate


# -- data ---------------------------------------------------------------------------------------------------------
def test_split_is_deterministic_and_roughly_70_10_20():
    parts = [part_of(i) for i in range(5000)]
    assert parts == [part_of(i) for i in range(5000)]
    share = {p: parts.count(p) / len(parts) for p in ("train", "val", "heldout")}
    assert 0.65 < share["train"] < 0.75 and 0.07 < share["val"] < 0.13 and 0.17 < share["heldout"] < 0.23


def test_rejected_decisions_are_not_used_and_corrections_use_the_final_code(factory, model_env):
    made = seed_reviewed(factory, 4)
    with factory() as session:
        items = finetune_service.collect_reviewed(session)
    by_id = {i.line_item_id: i for i in items}
    assert set(by_id) == set(made["approved"]) | set(made["corrected"])
    assert not set(by_id) & set(made["rejected"])
    for item in by_id.values():
        assert item.code == _CODE.search(item.text).group(1)  # the reviewer's code, never the broker's wrong one


def test_features_are_cached_per_line_item_and_towers(factory, model_env):
    seed_reviewed(factory, 3, kinds=("approved",))
    with factory() as session:
        items = finetune_service.collect_reviewed(session)
    clf = model_env.classifier
    first, skipped = finetune.encode_items(clf, items)
    assert skipped == 0 and clf.encoded == 3
    again, _ = finetune.encode_items(clf, items)
    assert clf.encoded == 3  # nothing re-encoded
    assert torch.equal(first.features.text, again.features.text) and first.golds == again.golds


def test_an_unusable_item_is_skipped_not_the_whole_batch(factory, model_env):
    seed_reviewed(factory, 3, kinds=("approved",))
    items = [
        finetune.ReviewedItem(1, 1, "610910", "tee code 610910"),
        finetune.ReviewedItem(2, 2, "640411", "UNREADABLE code 640411"),
        finetune.ReviewedItem(3, 3, "420221", "bag code 420221"),
    ]
    data, skipped = finetune.encode_items(model_env.classifier, items)
    assert skipped == 1 and data.ids == ("1", "3") and data.golds == ("610910", "420221")


# -- a whole run -------------------------------------------------------------------------------------------------
def test_finetune_writes_a_version_with_parent_data_hash_and_the_base_bank(factory, model_env):
    seed_reviewed(factory, 30, kinds=("approved", "corrected"))
    epochs = []
    result = finetune_service.run(
        factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None, on_epoch=epochs.append
    )
    assert [e["epoch"] for e in epochs] == list(range(1, TINY_CFG.epochs + 1))
    assert all(e["epochs"] == TINY_CFG.epochs for e in epochs)
    folder = model_env.root / result.version_id
    card, tensors = load_checkpoint(folder)
    assert card.parent == "tiny-shipped" and card.kind == "fine-tuned"
    assert card.training["data"]["count"] == 60 and len(card.training["data"]["decisions_sha256"]) == 64
    assert card.training["started_by"] == "ada"
    assert card.metrics["gate"]["reason"] == result.reason.replace("kept, not activated", "kept, not activated")
    _, base = load_checkpoint(model_env.shipped)
    assert torch.equal(tensors["bank.emb"], base["bank.emb"]) and torch.equal(tensors["bank.code"], base["bank.code"])
    with factory() as session:
        active = model_versions.active_version(session)
        assert session.get(ModelVersion, result.version_id).sha256 == card.weights_sha256
    assert result.activated == card.metrics["gate"]["activate"]
    assert (active.id == result.version_id) == result.activated
    # tiny signatures are easy: the fine-tuned version beats the untrained head on held-out items
    assert result.activated, result.reason
    assert result.metrics["gate"]["candidate"]["heldout"] > result.metrics["gate"]["active"]["heldout"]


def test_the_next_finetune_starts_again_from_the_shipped_model_unless_told(factory, model_env):
    seed_reviewed(factory, 30, kinds=("approved", "corrected"))
    first = finetune_service.run(factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None)
    assert first.activated, first.reason
    seed_reviewed(factory, 5, kinds=("rejected", "approved"))
    second = finetune_service.run(factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None)
    assert second.parent_id == "tiny-shipped" and second.compared_with == first.version_id
    assert second.decisions == 65
    third = finetune_service.run(
        factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None, base_id=first.version_id
    )
    assert third.parent_id == first.version_id
    with pytest.raises(FinetuneError, match="no model version 'nope'"):
        finetune_service.run(
            factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None, base_id="nope"
        )


def test_a_kept_version_records_why_in_its_card_and_an_audit_event(factory, model_env, monkeypatch):
    seed_reviewed(factory, 20, kinds=("approved",))
    monkeypatch.setattr(finetune, "decide", lambda c, a, t: decide(c, a, t).__class__(False, "kept: test", c, a, t))
    result = finetune_service.run(factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None)
    assert not result.activated
    with factory() as session:
        assert model_versions.active_version(session).id == "tiny-shipped"
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "model_kept")).one()
        assert event.detail == {"version_id": result.version_id, "reason": "kept: test"}
    card, _ = load_checkpoint(model_env.root / result.version_id)
    assert card.metrics["gate"] == {**card.metrics["gate"], "activate": False, "reason": "kept: test"}


def test_benchmark_rows_take_part_in_the_gate(factory, model_env):
    seed_reviewed(factory, 20, kinds=("approved",))
    sig = _signature()
    bench = LabelledSet(
        Features(sig, torch.zeros(len(CODES), C), torch.zeros(len(CODES), 1000), torch.ones(len(CODES), dtype=bool),
                 torch.zeros(len(CODES), dtype=bool)),
        tuple(CODES),
    )  # fmt: skip
    result = finetune_service.run(factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=bench)
    gate = result.metrics["gate"]
    assert gate["candidate"]["benchmark_rows"] == len(CODES) and gate["active"]["benchmark"] is not None
    cached = list((Path(os.environ["HS_CACHE_DIR"]) / "gate").glob("*.json"))
    assert len(cached) == 1  # the active version's benchmark score, reused by the next run
    again = finetune_service.run(factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=bench)
    if again.compared_with == result.compared_with:
        assert again.metrics["gate"]["active"]["benchmark"] == gate["active"]["benchmark"]


def test_an_interrupted_finetune_leaves_registry_and_database_untouched(factory, model_env):
    seed_reviewed(factory, 20, kinds=("approved",))
    with factory.begin() as session:
        model_registry.ensure_default_registered(session)
    before_dirs = entries(model_env.root)
    before = counts(factory)

    def stop(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt("the admin closed the tab")

    with pytest.raises(KeyboardInterrupt):
        finetune_service.run(
            factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None, on_epoch=stop
        )
    assert entries(model_env.root) == before_dirs  # no half-written version folder
    assert counts(factory) == before
    with factory() as session:
        assert model_versions.active_version(session).id == "tiny-shipped"
    # and the lock was released: the next run works
    assert finetune_service.run(
        factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None
    ).version_id


def test_a_database_failure_after_training_removes_the_new_folder(factory, model_env, monkeypatch):
    seed_reviewed(factory, 20, kinds=("approved",))
    with factory.begin() as session:
        model_registry.ensure_default_registered(session)
    before_dirs = entries(model_env.root)

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(model_registry, "register_folder", broken)
    with pytest.raises(RuntimeError):
        finetune_service.run(factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None)
    assert entries(model_env.root) == before_dirs


def test_too_few_decisions_is_refused_before_any_work(factory, model_env):
    seed_reviewed(factory, 2, kinds=("approved",))
    with pytest.raises(FinetuneError, match="at least 5"):
        finetune_service.run(factory, model_env.classifier, started_by="ada", cfg=TINY_CFG, benchmark=None)
    assert model_env.classifier.encoded == 0


def test_only_one_finetune_at_a_time(model_env):
    with finetune_service.exclusive(model_env.root), pytest.raises(FinetuneError, match="Another fine-tune"):  # noqa: SIM117
        with finetune_service.exclusive(model_env.root):
            pass


# -- services ----------------------------------------------------------------------------------------------------
def test_service_finetune_then_the_app_serves_the_new_version(factory, model_env):
    seed_reviewed(factory, 30, kinds=("approved", "corrected"))
    actor = admin(factory)
    with factory.begin() as session:
        assert models.active_model_dir(session) is None  # nothing registered yet: the app uses its default
        models.list_versions(session, actor)  # registers the shipped model
        first = models.active_model_dir(session)
    assert first == (model_env.root / "tiny-shipped").resolve()
    result = models.run_finetune(factory, actor, model_env.classifier, cfg=TINY_CFG)
    with factory.begin() as session:
        if not result.activated:
            models.activate(session, actor, result.version_id, "test", override=True)
        assert models.active_model_dir(session) == (model_env.root / result.version_id).resolve()
        assert models.new_reviewed_since_active(session) == 0
        rows = {v.id: v for v in models.list_versions(session, actor)}
    assert rows[result.version_id].active and rows["tiny-shipped"].rollback_target
    assert rows[result.version_id].decisions == 60 and rows[result.version_id].parent_id == "tiny-shipped"
    with factory.begin() as session:
        back = models.rollback(session, actor, "the new version misreads footwear")
        assert back.version_id == "tiny-shipped" and models.active_model_dir(session) == first


def test_activating_a_kept_version_needs_override_and_a_reason(factory, model_env, monkeypatch):
    seed_reviewed(factory, 20, kinds=("approved",))
    monkeypatch.setattr(finetune, "decide", lambda c, a, t: decide(c, a, t).__class__(False, "kept: test", c, a, t))
    actor = admin(factory)
    result = models.run_finetune(factory, actor, model_env.classifier, cfg=TINY_CFG)
    with factory.begin() as session, pytest.raises(InvalidInput, match="did not pass the evaluation gate"):
        models.activate(session, actor, result.version_id, "please")
    with factory.begin() as session, pytest.raises(InvalidInput, match="Give a reason"):
        models.activate(session, actor, result.version_id, "  ", override=True)
    with factory.begin() as session:
        models.activate(session, actor, result.version_id, "urgent tariff change", override=True)
    with factory() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "model_gate_override")).one()
        assert event.detail["reason"] == "urgent tariff change" and event.detail["gate_reason"] == "kept: test"
        assert event.username == "ada"
        activation = session.scalars(select(ModelActivation).order_by(ModelActivation.id.desc())).first()
        assert activation.reason == "override: urgent tariff change"


@pytest.mark.parametrize("role", ["broker", "reviewer"])
def test_non_admins_are_refused(factory, actors, model_env, role):
    actor = actors[role]
    with factory.begin() as session:
        for call in (
            lambda: models.list_versions(session, actor),
            lambda: models.activate(session, actor, "tiny-shipped", "x"),
            lambda: models.rollback(session, actor),
        ):
            with pytest.raises(PermissionDenied, match="Only admins"):
                call()
    with pytest.raises(PermissionDenied, match="Only admins"):
        models.run_finetune(factory, actor, model_env.classifier)
    with pytest.raises(PermissionDenied, match="sign in"):
        models.run_finetune(factory, None, model_env.classifier)
    assert counts(factory) == (0, 0)


def test_service_refuses_with_clear_messages(factory, model_env):
    seed_reviewed(factory, 2, kinds=("approved",))
    actor = admin(factory)
    with pytest.raises(InvalidInput, match="reviewed decision"):
        models.run_finetune(factory, actor, model_env.classifier, cfg=TINY_CFG)
    with factory.begin() as session:
        models.list_versions(session, actor)
        with pytest.raises(InvalidInput, match="Give a reason"):
            models.rollback(session, actor, "  ")
        with pytest.raises(InvalidInput, match="no earlier version"):
            models.rollback(session, actor, "why not")
        with pytest.raises(InvalidInput, match="already the active"):
            models.activate(session, actor, "tiny-shipped")
        with pytest.raises(models.NotFound):
            models.activate(session, actor, "nope")


# -- command line ------------------------------------------------------------------------------------------------
def test_cli_finetune_json(app_db, factory, model_env, monkeypatch, capsys):
    import json

    from hs_model import __main__ as cli
    from hs_model import predict

    seed_reviewed(factory, 30, kinds=("approved", "corrected", "rejected"))
    monkeypatch.setattr(predict, "Classifier", lambda model_dir=None: TinyClassifier())
    code = cli.main(["finetune", "--db", app_db.url, "--started-by", "ada", "--data-dir", "/nonexistent", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["decisions"] == 60 and out["parent_id"] == "tiny-shipped" and out["version_id"].startswith("ft-")
    assert "benchmark not available" in out["reason"]
    with factory() as session:
        assert model_versions.get_version(session, out["version_id"]).created_by == find_user(session, "ada").id


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["finetune", "--started-by", "bea"], "no active admin by that name"),
        (["bench", "--learning-curve", "--data-dir", "/nonexistent"], "needs the shared data"),
    ],
)
def test_cli_user_errors_are_one_line(app_db, factory, model_env, capsys, args, needle):
    from hs_model import __main__ as cli

    seed_reviewed(factory, 1, kinds=("approved",))
    if args[0] == "finetune":
        args = [*args, "--db", app_db.url]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


# -- the real towers ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_towers_finetune_and_serve_the_new_version(factory, tmp_path, monkeypatch):
    """Zero-shot base on the real towers, half the items with a photo: a fine-tuned version is written (the photo
    path trained too), loads in a Classifier and predicts."""
    import io

    from PIL import Image, ImageDraw

    from db.photos import store_photo
    from hs_model.predict import Classifier

    def photo(seed: int) -> bytes:
        image = Image.new("RGB", (96, 96), (40 * seed % 255, 90, 160))
        ImageDraw.Draw(image).ellipse((10 + seed, 20, 80, 70 + seed), fill=(200, 60 + 30 * seed % 195, 40))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG")
        return buffer.getvalue()

    monkeypatch.setenv("HS_MODEL_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("HS_MODEL_DIR", str(tmp_path / "no-model"))
    products = [
        ("men's knitted cotton T-shirt", "610910"),
        ("leather handbag with shoulder strap", "420221"),
        ("running shoes, rubber soles, textile uppers", "640411"),
        ("ceramic coffee mug", "691200"),
    ]
    with factory.begin() as session:
        broker = Actor.from_user(add_user(session, username="bea", role="broker", password_hash="!"))
        reviewer = Actor.from_user(add_user(session, username="rey", role="reviewer", password_hash="!"))
        for lot in range(5):
            for n, (text, code) in enumerate(products):
                photos = [store_photo(photo(n))] if lot % 2 else []
                item = create_line_item(
                    session, description=f"{text}, lot {lot}", created_by=broker.user_id, photos=photos
                )
                decisions.submit(session, broker, item.id, code)
                decisions.approve(session, reviewer, item.id)
    clf = Classifier(None)
    result = finetune_service.run(factory, clf, started_by="test", benchmark=None, cfg=FinetuneConfig(min_decisions=5))
    assert result.decisions == 20 and result.skipped == 0
    folder = tmp_path / "registry" / result.version_id
    _, tensors = load_checkpoint(folder)
    assert tensors["head.image_proj.weight"].abs().sum() > 0  # the photo rows reached the photo projection
    served = clf.with_model(folder)
    assert served.version == result.version_id and served.card.parent == "zero-shot-v1"
    pred = served.predict("men's knitted cotton T-shirt")
    assert pred.model_version == result.version_id and pred.levels[6][0].code.isdigit()


def test_the_fast_text_only_path_gives_the_same_gradients():
    """Adapter, scale and level weights frozen: text-only batches skip the backward pass through the label
    similarities and reuse each row's memoised retrieval score; logits and gradients stay the same."""
    from hs_train.losses import hierarchical_nll

    plain = TinyClassifier().model.train()
    for p in (plain.text_adapter.weight, plain.text_adapter.bias, plain.logit_scale, plain.level_weight):
        p.requires_grad_(False)
    with torch.no_grad():
        plain.correction.normal_(0, 0.1)  # non-zero corrections: the memoised part must exclude them
        plain.heading_correction.normal_(0, 0.1)
    fast = copy.deepcopy(plain)
    feats = TinyClassifier().encode([finetune.Query(f"item code {c}") for c in CODES])
    target = torch.arange(len(CODES))
    outs = []
    with fast.text_side_frozen():
        for m in (plain, fast, fast):  # the second pass through `fast` reads the memoised retrieval scores
            out = m(*feats.as_inputs(torch.device("cpu")))
            outs.append(out.logits.detach())
            loss = hierarchical_nll(
                lambda z, lv, m=m: m.level_log_probs(z, lv, temperature=False),
                out.logits,
                target,
                torch.full_like(target, 6),
            )
            loss.backward()
        assert len(fast._retrieval) == len(CODES)
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and torch.allclose(outs[1], outs[2], atol=1e-5)
    assert not fast._retrieval and fast._proto_cache is None  # nothing cached outlives the run
    for name in ("correction", "correction_bias"):
        a, b = dict(plain.named_parameters())[name].grad, dict(fast.named_parameters())[name].grad
        assert torch.allclose(2 * a, b, atol=1e-5), name  # fast took two backward passes
    assert fast.image_proj.weight.grad is None and not plain.image_proj.weight.grad.abs().sum()
