"""Who may do what: every service function by every role (and by nobody), sign-in throttling, session expiry,
passwords kept out of logs and exports, and photos kept inside their store.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db.engine import make_engine, make_session_factory, run_transaction, upgrade
from db.models import AuditEvent, User
from db.photos import PhotoPathError, resolve_photo, store_photo
from screens import common
from services import auth, decisions
from services.auth import SESSION_TTL, Actor, authenticate, create_user, set_user_active
from services.classify import classify_and_record
from services.errors import PermissionDenied
from services.export import FORMATS, export_decisions
from tests.reliability.conftest import ROLES, FakeClassifier, add_actors, encode, new_item, row_counts

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = str(REPO_ROOT / "app.py")
PASSWORD = "correct horse battery staple"

# (function, action in its messages, roles allowed). None = nobody signed in.
MATRIX: dict[str, tuple[str, tuple[str, ...]]] = {
    "create_user": ("create users", ("admin",)),
    "submit": ("submit classifications", ("broker", "admin")),
    "approve": ("approve classifications", ("reviewer", "admin")),
    "correct": ("correct classifications", ("reviewer", "admin")),
    "reject": ("reject classifications", ("reviewer", "admin")),
    "review_queue": ("see the review queue", ("reviewer", "admin")),
    "item_state": ("see line items", ("broker", "reviewer", "admin")),
    "export_decisions": ("export the decision log", ("admin",)),
    "classify_and_record": ("classify products", ("broker", "admin")),
}
PLURAL = {
    ("admin",): "admins",
    ("broker", "admin"): "brokers and admins",
    ("reviewer", "admin"): "reviewers and admins",
}
_names = itertools.count()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One migrated SQLite file for the whole matrix (each call gets its own line item)."""
    root = tmp_path_factory.mktemp("access")
    url = f"sqlite:///{root / 'access.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    yield factory, add_actors(factory), root / "photos"
    engine.dispose()


def call_for(name: str, factory, actors: dict[str, Actor], photo_root: Path) -> Callable:
    """Prepare what ``name`` needs (an item, a submission) and return the call to make as ``actor``."""
    submitter = actors["broker2"]
    if name in ("approve", "correct", "reject"):
        item_id = new_item(factory, submitter, submit_as=submitter)
    else:
        item_id = new_item(factory, submitter)
    calls = {
        "create_user": lambda s, a: create_user(s, a, f"new-user-{next(_names)}", PASSWORD, "broker"),
        "submit": lambda s, a: decisions.submit(s, a, item_id, "6109.10"),
        "approve": lambda s, a: decisions.approve(s, a, item_id),
        "correct": lambda s, a: decisions.correct(s, a, item_id, "6109.90", "synthetic fibres"),
        "reject": lambda s, a: decisions.reject(s, a, item_id, "photo unclear"),
        "review_queue": lambda s, a: decisions.review_queue(s, a),
        "item_state": lambda s, a: decisions.item_state(s, a, item_id),
        "export_decisions": lambda s, a: export_decisions(s, a, None, "csv"),
        "classify_and_record": lambda s, a: classify_and_record(
            s, FakeClassifier(), a, text="cotton shirt", photos=[], photo_root=photo_root
        ),
    }
    return calls[name]


@pytest.mark.parametrize("role", [*ROLES, None])
@pytest.mark.parametrize("name", list(MATRIX))
def test_permission_matrix(shared, name, role):
    factory, actors, photo_root = shared
    action, allowed = MATRIX[name]
    call = call_for(name, factory, actors, photo_root)
    actor = actors[role] if role else None
    before = row_counts(factory)
    if role in allowed:
        with factory.begin() as session:
            assert call(session, actor) is not None
        changed = row_counts(factory) != before
        assert changed == (name not in ("review_queue", "item_state"))  # reads write nothing; the rest record
        return
    with pytest.raises(PermissionDenied) as info, factory.begin() as session:
        call(session, actor)
    expected = f"Please sign in to {action}." if role is None else f"Only {PLURAL[allowed]} can {action}."
    assert str(info.value) == expected
    assert row_counts(factory) == before  # a refusal writes nothing, not even an audit event


def test_a_forged_role_is_refused(shared):
    """The actor is checked against the database: a broker claiming 'admin' gets nothing."""
    factory, actors, _ = shared
    broker = actors["broker"]
    forged = Actor(user_id=broker.user_id, username=broker.username, role="admin")
    for call in (
        lambda s: export_decisions(s, forged, None, "jsonl"),
        lambda s: create_user(s, forged, "sneaky-admin", PASSWORD, "admin"),
        lambda s: decisions.review_queue(s, forged),
    ):
        with pytest.raises(PermissionDenied) as info, factory.begin() as session:
            call(session)
        assert str(info.value) == "Your account has changed since you signed in; please sign in again."


def test_a_deactivated_reviewer_is_refused_at_once(factory, actors):
    item_id = new_item(factory, actors["broker"], submit_as=actors["broker"])
    with factory.begin() as session:
        set_user_active(session, actors["admin"], "rey", False)
    with pytest.raises(PermissionDenied, match="please sign in again"), factory.begin() as session:
        decisions.approve(session, actors["reviewer"], item_id)


def test_nobody_reviews_their_own_submission_not_even_an_admin(factory, actors):
    item_id = new_item(factory, actors["admin"], submit_as=actors["admin"])
    with pytest.raises(PermissionDenied) as info, factory.begin() as session:
        decisions.approve(session, actors["admin"], item_id)
    assert str(info.value) == "You cannot review your own submission; another reviewer has to."


def test_no_second_bootstrap_admin(factory, actors):
    with pytest.raises(PermissionDenied, match="Please sign in to create users"), factory.begin() as session:
        create_user(session, None, "second-admin", PASSWORD, "admin")


# ------------------------------------------------------------------------------------------- sign-in throttle


def sign_in(factory, username: str, password: str) -> Actor:
    return run_transaction(factory, lambda s: authenticate(s, username, password))


def audit_actions(factory) -> list[str]:
    with factory() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_brute_force_is_throttled_even_with_the_right_password(factory):
    with factory.begin() as session:
        create_user(session, None, "ada", PASSWORD, "admin")
    for guess, spelling in zip(range(auth.MAX_FAILURES), ["ada", "ADA", " ada ", "Ada", "ada"], strict=True):
        with pytest.raises(PermissionDenied, match=r"^Invalid username or password\.$"):
            sign_in(factory, spelling, f"guess number {guess}")  # every spelling counts against one account
    with pytest.raises(PermissionDenied) as info:
        sign_in(factory, "ada", PASSWORD)
    assert str(info.value) == "Too many failed sign-ins for this account. Try again in 15 minute(s)."
    assert audit_actions(factory)[-6:] == ["sign_in_failed"] * 5 + ["sign_in_throttled"]


def test_the_throttle_lifts_after_the_window(factory, monkeypatch):
    with factory.begin() as session:
        create_user(session, None, "ada", PASSWORD, "admin")
    for _ in range(auth.MAX_FAILURES):
        with pytest.raises(PermissionDenied):
            sign_in(factory, "ada", "wrong password")
    later = auth.utcnow() + auth.FAILURE_WINDOW + timedelta(seconds=1)
    monkeypatch.setattr(auth, "utcnow", lambda: later)
    assert sign_in(factory, "ada", PASSWORD).username == "ada"


def test_unknown_users_get_the_same_answer_and_are_throttled_too(factory):
    with factory.begin() as session:
        create_user(session, None, "ada", PASSWORD, "admin")
    messages = set()
    for _ in range(auth.MAX_FAILURES):
        with pytest.raises(PermissionDenied) as info:
            sign_in(factory, "nobody-here", "some password")
        messages.add(str(info.value))
    assert messages == {"Invalid username or password."}  # no hint that the account does not exist
    with pytest.raises(PermissionDenied, match="Too many failed sign-ins"):
        sign_in(factory, "nobody-here", "some password")


def test_parallel_guesses_do_not_get_past_the_throttle(factory, monkeypatch):
    """Guesses sent at once must not all be checked before the first failure is recorded (check-then-act race)."""
    with factory.begin() as session:
        create_user(session, None, "ada", PASSWORD, "admin")
    real = auth._hasher
    checked = []

    class SlowHasher:  # argon2 takes tens of milliseconds: that is the window parallel guesses use
        def verify(self, password_hash, password):
            checked.append(password)
            time.sleep(0.15)
            return real.verify(password_hash, password)

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(auth, "_hasher", SlowHasher())
    outcomes: list[str] = []

    def guess(n: int) -> None:
        try:
            sign_in(factory, "ada", f"parallel guess {n}")
        except PermissionDenied as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 12
    assert len(checked) <= auth.MAX_FAILURES, f"{len(checked)} passwords were tried"
    assert sum("Too many failed sign-ins" in o for o in outcomes) == 12 - len(checked)


# ------------------------------------------------------------------------------------------- session expiry


def app_signed_in_at(app_db, monkeypatch, signed_in_at) -> AppTest:
    """A browser session whose broker signed in at ``signed_in_at`` (None: the time is missing), opened now.

    A fresh AppTest runs app.py itself (once AppTest has switched to a page it reruns only that page's file).
    """
    monkeypatch.setattr(common, "get_classifier", lambda model_dir: FakeClassifier())
    app_db.add_user("bea", "broker", PASSWORD)
    with app_db.factory() as session:
        actor = Actor.from_user(session.scalars(select(User).where(User.username == "bea")).one())
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[common.ACTOR_KEY] = actor
    if signed_in_at is not None:
        at.session_state[common.SIGNED_IN_AT_KEY] = signed_in_at
    return at.run()


def test_session_ttl_is_a_working_day_or_less():
    assert timedelta(minutes=5) <= SESSION_TTL <= timedelta(hours=12)


@pytest.mark.parametrize(
    "age", [SESSION_TTL + timedelta(seconds=5), SESSION_TTL * 3, None], ids=["just-over", "days", "no-time"]
)
def test_an_expired_session_is_signed_out(app_db, monkeypatch, age):
    at = app_signed_in_at(app_db, monkeypatch, None if age is None else auth.utcnow() - age)
    assert not at.exception
    assert [i.value for i in at.info] == ["Your session expired; please sign in again."]
    assert at.text_input(key="auth_password").value == ""
    assert not [t for t in at.title if t.value == "Classify a product"]
    assert common.ACTOR_KEY not in at.session_state
    with app_db.factory() as session:
        assert session.scalars(select(AuditEvent.action).order_by(AuditEvent.id.desc())).first() == "sign_out"


def test_a_session_inside_the_ttl_stays_signed_in(app_db, monkeypatch):
    at = app_signed_in_at(app_db, monkeypatch, auth.utcnow() - SESSION_TTL + timedelta(minutes=1))
    assert not at.exception and not at.info
    assert at.title[0].value == "Classify a product"


# ------------------------------------------------------------------------------------------- secrets


SECRET = "Tr0ub4dor&3-very-secret"


def test_passwords_and_hashes_stay_out_of_logs(factory, caplog):
    caplog.set_level(logging.DEBUG)
    sql_logger = logging.getLogger("sqlalchemy.engine")
    sql_logger.setLevel(logging.INFO)  # an operator debugging SQL: statements are logged, parameters must not be
    try:
        with factory.begin() as session:
            password_hash = create_user(session, None, "ada", SECRET, "admin").password_hash
        assert sign_in(factory, "ada", SECRET).username == "ada"
        with pytest.raises(PermissionDenied):
            sign_in(factory, "ada", SECRET + "x")
    finally:
        sql_logger.setLevel(logging.NOTSET)
    assert "INSERT INTO users" in caplog.text  # SQL logging was on
    assert "sign-in failed for 'ada' (bad_password)" in caplog.text
    for secret in (SECRET, password_hash, password_hash.split("$")[-1]):
        assert secret not in caplog.text


def test_passwords_and_hashes_stay_out_of_exports_and_audit(factory, real_hasher):
    with factory.begin() as session:
        admin = Actor.from_user(create_user(session, None, "ada", SECRET, "admin"))
        broker = Actor.from_user(create_user(session, admin, "bea", SECRET + "-b", "broker"))
        reviewer = Actor.from_user(create_user(session, admin, "rey", SECRET + "-r", "reviewer"))
        hashes = list(session.scalars(select(User.password_hash)))
    sign_in(factory, "bea", SECRET + "-b")
    item_id = new_item(factory, broker, submit_as=broker)
    with factory.begin() as session:
        decisions.approve(session, reviewer, item_id, "fine")
    secrets = [SECRET, *hashes, *(h.split("$")[-1] for h in hashes), *(h.split("$")[-2] for h in hashes)]
    for fmt in FORMATS:
        with factory.begin() as session:
            data = export_decisions(session, admin, None, fmt)
        text = data.decode("utf-8", "replace")
        if fmt == "parquet":
            text += repr(pq.read_table(io.BytesIO(data)).to_pylist())
        assert "bea" in text  # the export is not empty
        assert not [s for s in secrets if s in text], fmt
    with factory() as session:
        audit = repr([(e.action, e.username, e.detail) for e in session.scalars(select(AuditEvent))])
    assert "user_created" in audit and not [s for s in secrets if s in audit]


# ------------------------------------------------------------------------------------------- photo store paths


@pytest.fixture
def store(tmp_path: Path):
    """A photo store holding one photo, and a secret file next to (outside) it."""
    root = tmp_path / "store"
    stored = store_photo(encode(Image.new("RGB", (32, 32), "red"), "PNG"), root)
    (tmp_path / "secret.txt").write_text("outside the store")
    return root, stored


@pytest.mark.parametrize(
    "rel",
    [
        "../secret.txt",
        "../../etc/passwd",
        "/etc/passwd",
        "ab/../../secret.txt",
        "ab/./../../secret.txt",
        "..",
        ".",
        "",
        "ab\\..\\..\\secret.txt",
        "C:/Windows/win.ini",
        "c:secret.txt",
        "ab/\x00.png",
        "//server/share/x.png",
    ],
)
def test_traversal_paths_are_refused(store, rel):
    root, _ = store
    with pytest.raises(PhotoPathError) as info:
        resolve_photo(root, rel)
    assert "photo path" in str(info.value)


def test_symlinks_out_of_the_store_are_refused(store, tmp_path):
    root, stored = store
    (root / "ab").mkdir(exist_ok=True)
    os.symlink(tmp_path / "secret.txt", root / "ab" / "link.png")
    os.symlink(tmp_path, root / "escape")
    for rel in ("ab/link.png", "escape/secret.txt"):
        with pytest.raises(PhotoPathError, match="escapes the store"):
            resolve_photo(root, rel)
    assert resolve_photo(root, stored.rel_path).read_bytes()[:4] == b"\x89PNG"  # the real photo still resolves


def test_a_store_root_behind_a_symlink_still_works(store, tmp_path):
    root, stored = store
    os.symlink(root, tmp_path / "photos-link")
    assert resolve_photo(tmp_path / "photos-link", stored.rel_path) == resolve_photo(root, stored.rel_path)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_stored_path_resolves_inside_the_store_or_is_refused(tmp_path_factory, rel):
    root = tmp_path_factory.getbasetemp() / "fuzz-store"
    root.mkdir(exist_ok=True)
    try:
        path = resolve_photo(root, rel)
    except PhotoPathError:
        return
    assert path.is_relative_to(root.resolve()) and path != root.resolve()


# ------------------------------------------------------------------------------------------- model versions (admins)


@pytest.mark.parametrize("role", ["broker", "reviewer", None])
@pytest.mark.parametrize(
    ("name", "action"),
    [
        ("list_versions", "manage model versions"),
        ("activate", "activate model versions"),
        ("rollback", "roll back the model"),
        ("run_finetune", "fine-tune the model"),
    ],
)
def test_only_admins_manage_model_versions(shared, name, action, role):
    from services import models

    factory, actors, _ = shared
    actor = actors[role] if role else None
    calls = {
        "list_versions": lambda: run_transaction(factory, lambda s: models.list_versions(s, actor)),
        "activate": lambda: run_transaction(factory, lambda s: models.activate(s, actor, "any-version", "why")),
        "rollback": lambda: run_transaction(factory, lambda s: models.rollback(s, actor)),
        "run_finetune": lambda: models.run_finetune(factory, actor, classifier=FakeClassifier()),
    }
    before = row_counts(factory)
    with pytest.raises(PermissionDenied) as info:
        calls[name]()
    assert str(info.value) == (f"Please sign in to {action}." if role is None else f"Only admins can {action}.")
    assert row_counts(factory) == before


@pytest.mark.parametrize("role", ["reviewer", None])
@pytest.mark.parametrize(
    ("name", "action"), [("run_batch", "classify products"), ("export_results", "download batch results")]
)
def test_only_brokers_and_admins_run_batches(shared, name, action, role):
    from services import batch

    factory, actors, photo_root = shared
    actor = actors[role] if role else None
    calls = {  # the role is checked before the batch file or result is even looked at
        "run_batch": lambda: batch.run_batch(
            lambda fn: run_transaction(factory, fn), FakeClassifier(), actor, None, shipment_ref="S-1"
        ),
        "export_results": lambda: run_transaction(factory, lambda s: batch.export_results(s, actor, None, "csv")),
    }
    before = row_counts(factory)
    with pytest.raises(PermissionDenied) as info:
        calls[name]()
    assert str(info.value) == (
        f"Please sign in to {action}." if role is None else f"Only brokers and admins can {action}."
    )
    assert row_counts(factory) == before
