"""Crash check: SIGKILL a process that is writing decisions (or a model checkpoint) and check nothing is half-written.

    .venv/bin/python scripts/crash_check.py --kills 20 --json
    .venv/bin/python scripts/crash_check.py --kills 20 --target checkpoint

Decisions: a child process loops through the real services (store a photo, create a line item with its prediction,
``submit``, then ``approve`` / ``correct`` / ``reject`` and resubmit), one transaction per user action. The parent
kills it with SIGKILL at a random moment, then checks the SQLite file: ``PRAGMA integrity_check`` and
``foreign_key_check``, every decision complete and audited exactly once (the audit event commits with the decision),
every line item with exactly one prediction and its photos on disk under their content hash, and every line item's
event sequence a valid path of the workflow (submitted -> approved | corrected | rejected -> submitted ...).

Checkpoint: a child loops ``hs_model.checkpoint.save_checkpoint`` on a tiny tensor dict whose values encode the
version; after each kill ``load_checkpoint`` must load the folder, the card's hash must match the weights, and the
tensors must be the ones of the card's version.

Each kill is followed by the checks; the next child continues on the same files. Children are separate processes
forked from a ``multiprocessing`` fork server that imported torch and the services once, so a kill round costs the
kill delay, not an interpreter start. Exit status 0 when all pass.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file: make db/, services/ and hs_model/ importable
    sys.path.insert(0, str(REPO_ROOT))

CODES = ("610910", "610510", "620342", "640399", "851762", "847130", "950300", "420221")
# Valid successors of an item's last event (None: no event yet).
TRANSITIONS = {
    None: {"submitted"},
    "submitted": {"approved", "corrected", "rejected"},
    "rejected": {"submitted"},
    "approved": set(),
    "corrected": set(),
}


# ---------------------------------------------------------------------------------------------- children


def _png(rng: random.Random) -> bytes:
    """A small, unique PNG (random pixels) so every photo is a new file in the store."""
    from PIL import Image

    image = Image.frombytes("RGB", (24, 24), rng.randbytes(24 * 24 * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def child_decisions(db_url: str, photo_dir: Path, seed: int, ready) -> None:
    """Write decisions forever (until killed), through the services, one transaction per user action."""
    from db import queries
    from db.engine import make_engine, make_session_factory, run_transaction
    from db.photos import store_photo
    from services import decisions
    from services.auth import Actor

    rng = random.Random(seed)
    factory = make_session_factory(make_engine(db_url))

    def user(session, name: str, role: str) -> Actor:
        found = queries.find_user(session, name)
        return Actor.from_user(found or queries.add_user(session, username=name, role=role, password_hash="!"))

    broker = run_transaction(factory, lambda s: user(s, "crash-broker", "broker"))
    reviewer = run_transaction(factory, lambda s: user(s, "crash-reviewer", "reviewer"))
    ready.set()
    n = 0
    while True:
        n += 1
        code = rng.choice(CODES)
        photos = [store_photo(_png(rng), photo_dir)] if rng.random() < 0.5 else []
        description = f"crash item {seed}/{n} " + "x" * rng.randrange(2000)

        def create(session, code=code, photos=photos, description=description):
            shipment = queries.get_or_create_shipment(
                session, f"CRASH-{seed % 5}-{len(description) % 7}", broker.user_id
            )
            item = queries.create_line_item(
                session,
                description=description,
                created_by=broker.user_id,
                shipment_id=shipment.id,
                photos=photos,
            )
            queries.record_prediction(
                session,
                line_item_id=item.id,
                model_version="crash-v1",
                nomenclature_edition="HS2022",
                latency_ms=1.0,
                needs_review=False,
                candidates=[{"level": 6, "rank": 1, "code": code, "description": "", "score": 0.7}],
            )
            return item.id

        item_id = run_transaction(factory, create)
        run_transaction(factory, lambda s, i=item_id, c=code: decisions.submit(s, broker, i, c, "crash check"))
        outcome = rng.choice(("approve", "correct", "reject"))
        if outcome == "reject":
            run_transaction(factory, lambda s, i=item_id: decisions.reject(s, reviewer, i, "photo unclear"))
            run_transaction(factory, lambda s, i=item_id, c=code: decisions.submit(s, broker, i, c, "again"))
            outcome = "approve"
        if outcome == "approve":
            run_transaction(factory, lambda s, i=item_id: decisions.approve(s, reviewer, i))
        else:
            other = next(c for c in CODES if c != code)
            run_transaction(factory, lambda s, i=item_id, o=other: decisions.correct(s, reviewer, i, o, "material"))


def child_checkpoint(folder: Path, start_version: int, ready) -> None:
    """Save checkpoints forever (until killed); tensor values encode the version so a torn pair shows."""
    import torch

    from hs_model.checkpoint import ModelCard, save_checkpoint

    ready.set()
    version = start_version
    while True:
        version += 1
        save_checkpoint(folder, tiny_tensors(torch, version), tiny_card(ModelCard, version))


def tiny_tensors(torch, version: int) -> dict:
    """A tiny stand-in for the trained parts: ``marker`` holds the version."""
    generator = torch.Generator().manual_seed(version)
    return {
        "proj.weight": torch.randn(64, 48, generator=generator),
        "proj.bias": torch.randn(48, generator=generator),
        "marker": torch.tensor([version], dtype=torch.int64),
    }


def tiny_card(model_card_cls, version: int):
    return model_card_cls(
        version=f"crash-v{version}",
        nomenclature_edition="HS2022",
        text_tower="tiny-text",
        image_tower="tiny-image",
        created="2026-11-25",
        kind="fine-tuned",
    )


# ---------------------------------------------------------------------------------------------- checks


def check_database(db_url: str, photo_dir: Path) -> dict[str, Any]:
    """Everything that must hold after any crash. Returns counts and a list of problems."""
    from sqlalchemy import select

    from db.engine import make_engine, make_session_factory
    from db.models import AuditEvent, Decision, LineItem, Photo, Prediction
    from db.photos import PhotoPathError, resolve_photo
    from hs_core.files import is_temporary

    problems: list[str] = []
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    try:
        with factory() as session:
            conn = session.connection()
            if engine.dialect.name == "sqlite":
                integrity = conn.exec_driver_sql("PRAGMA integrity_check").scalar()
                if integrity != "ok":
                    problems.append(f"integrity_check: {integrity}")
                fk = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if fk:
                    problems.append(f"{len(fk)} foreign key violations, e.g. {fk[:3]}")
            decisions = session.scalars(select(Decision).order_by(Decision.id)).all()
            items = session.scalars(select(LineItem)).all()
            predictions = Counter(session.scalars(select(Prediction.line_item_id)))
            audits = session.scalars(select(AuditEvent).where(AuditEvent.action.in_(("submission", "review")))).all()
            photos = session.scalars(select(Photo)).all()

            audited = Counter(a.detail.get("decision_id") for a in audits)
            for d in decisions:
                complete = d.line_item_id and d.user_id and d.role and d.created_at and d.kind
                if not complete or (d.kind == "rejected") != (d.code is None):
                    problems.append(f"decision {d.id} is incomplete: {d.kind} {d.code!r} by {d.user_id}")
                if audited.get(d.id) != 1:
                    problems.append(f"decision {d.id} has {audited.get(d.id, 0)} audit events (expected 1)")
            orphans = set(audited) - {d.id for d in decisions}
            if orphans:
                problems.append(f"{len(orphans)} audit events for decisions that do not exist")

            history: dict[int, list[str]] = {}
            for d in decisions:
                history.setdefault(d.line_item_id, []).append(d.kind)
            for item_id, kinds in history.items():
                last = None
                for kind in kinds:
                    if kind not in TRANSITIONS[last]:
                        problems.append(f"line item {item_id}: invalid event sequence {kinds}")
                        break
                    last = kind
            for item in items:
                if predictions.get(item.id) != 1:
                    problems.append(f"line item {item.id} has {predictions.get(item.id, 0)} predictions (expected 1)")
            for photo in photos:
                try:
                    path = resolve_photo(photo_dir, photo.path)
                except PhotoPathError as exc:
                    problems.append(str(exc))
                    continue
                if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != photo.sha256:
                    problems.append(f"photo {photo.id} of line item {photo.line_item_id} is missing or altered")
            stats = {
                "line_items": len(items),
                "decisions": len(decisions),
                "final": sum(1 for k in history.values() if k[-1] in ("approved", "corrected")),
            }
    finally:
        engine.dispose()
    stored = [p for p in photo_dir.rglob("*") if p.is_file()] if photo_dir.is_dir() else []
    temp_files = [p for p in stored if is_temporary(p)]
    for p in stored:
        if p not in temp_files and hashlib.sha256(p.read_bytes()).hexdigest() != p.stem:
            problems.append(f"photo file {p.name} does not hold the bytes its name promises")
    stats["leftover_temp_files"] = len(temp_files)
    return {"stats": stats, "problems": problems}


def check_checkpoint(folder: Path) -> dict[str, Any]:
    """The folder must load, and the weights must be the ones the card describes."""
    from hs_model.checkpoint import CheckpointError, load_checkpoint, read_card, sha256_file

    leftovers = len([p for p in folder.iterdir() if p.name.endswith(".tmp")])
    # Killed between the two renames: new weights under the old card on disk (load_checkpoint must cope).
    try:
        torn_on_disk = read_card(folder).weights_sha256 != sha256_file(folder / "weights.safetensors")
    except (CheckpointError, OSError):
        torn_on_disk = None  # no readable card or weights at all: load_checkpoint below says why
    out = {"loaded": None, "torn_on_disk": torn_on_disk, "leftover_tmp": leftovers}
    try:
        card, tensors = load_checkpoint(folder)
    except CheckpointError as exc:
        return {**out, "problems": [f"load_checkpoint refused the folder: {exc}"]}
    problems = []
    if card.weights_sha256 != sha256_file(folder / "weights.safetensors"):
        problems.append("card hash differs from the weights")  # load_checkpoint should have refused
    marker = int(tensors["marker"][0])
    if card.version != f"crash-v{marker}":
        problems.append(f"torn checkpoint: card {card.version} with the weights of crash-v{marker}")
    return {**out, "loaded": card.version, "problems": problems}


# ---------------------------------------------------------------------------------------------- parent


def _context():
    """Children are forked from a fork server that has imported torch and the services once (fast, no threads)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "sqlalchemy", "hs_model.checkpoint", "services.decisions", "db.photos"])
    return ctx


def _spawn(target, args: tuple, ready_timeout_s: float):
    ctx = _context()
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    if not ready.wait(ready_timeout_s):
        proc.kill()
        proc.join()
        raise RuntimeError(f"the {target.__name__} child did not start (exit code {proc.exitcode})")
    return proc


def _kill(proc, after_s: float) -> str:
    """SIGKILL ``proc`` ``after_s`` seconds from now; returns a note when it had died on its own before."""
    time.sleep(after_s)
    alive = proc.is_alive()
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return "" if alive else f"the child had already exited with {proc.exitcode} before the kill"


def crash_decisions(kills: int, workdir: Path, rng: random.Random, max_delay_s: float) -> dict[str, Any]:
    """Kill a decision-writing child ``kills`` times; check the database after each kill."""
    from db.engine import upgrade

    db_url = f"sqlite:///{workdir / 'crash.sqlite3'}"
    photo_dir = workdir / "photos"
    upgrade(db_url)
    rounds = []
    for k in range(kills):
        proc = _spawn(child_decisions, (db_url, photo_dir, k), 120)
        delay = rng.uniform(0.05, max_delay_s)
        note = _kill(proc, delay)
        checked = check_database(db_url, photo_dir)
        problems = checked["problems"] + ([note] if note else [])
        rounds.append({"kill": k + 1, "after_s": round(delay, 3), **checked["stats"], "problems": problems[:10]})
    return {
        "target": "decisions",
        "kills": kills,
        "db": db_url,
        "rounds": rounds,
        "final": rounds[-1] if rounds else {},
        "ok": all(not r["problems"] for r in rounds),
    }


def crash_checkpoint(kills: int, workdir: Path, rng: random.Random, max_delay_s: float) -> dict[str, Any]:
    """Kill a checkpoint-writing child ``kills`` times; the folder must load after each kill."""
    import torch

    from hs_model.checkpoint import ModelCard, save_checkpoint

    folder = workdir / "checkpoint"
    save_checkpoint(folder, tiny_tensors(torch, 0), tiny_card(ModelCard, 0))  # a good folder before the first kill
    rounds = []
    start = 0
    for k in range(kills):
        proc = _spawn(child_checkpoint, (folder, start), 180)
        delay = rng.uniform(0.05, max_delay_s)
        note = _kill(proc, delay)
        checked = check_checkpoint(folder)
        problems = checked["problems"] + ([note] if note else [])
        rounds.append({"kill": k + 1, "after_s": round(delay, 3), **checked, "problems": problems})
        start += 1_000_000  # every child writes versions of its own
    refused = sum(1 for r in rounds if r["loaded"] is None)
    return {
        "target": "checkpoint",
        "kills": kills,
        "folder": str(folder),
        "rounds": rounds,
        "loaded": kills - refused,
        "refused": refused,
        "torn_on_disk": sum(1 for r in rounds if r["torn_on_disk"]),  # left between the renames by the kill
        "torn": sum(1 for r in rounds if any(p.startswith("torn") for p in r["problems"])),  # ...and loaded so
        "leftover_tmp": rounds[-1]["leftover_tmp"] if rounds else 0,
        "ok": all(not r["problems"] for r in rounds),
    }


def summary_line(result: dict[str, Any]) -> str:
    bad = [r for r in result["rounds"] if r["problems"]]
    head = f"{result['target']}: {result['kills']} kills, {len(bad)} left a problem"
    if result["target"] == "decisions":
        f = result["final"]
        head += (
            f"; {f.get('line_items', 0)} line items, {f.get('decisions', 0)} decisions written in all, "
            f"{f.get('leftover_temp_files', 0)} leftover photo temp files"
        )
    else:
        head += (
            f"; loaded {result['loaded']}, refused {result['refused']}, torn pairs loaded {result['torn']} "
            f"({result['torn_on_disk']} kills left new weights under the old card on disk), "
            f"{result['leftover_tmp']} leftover .tmp files"
        )
    if bad:
        head += f"; first: kill {bad[0]['kill']}: {bad[0]['problems'][0]}"
    return head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per target")
    parser.add_argument("--target", choices=("decisions", "checkpoint", "both"), default="both")
    parser.add_argument("--max-delay", type=float, default=1.5, help="kill at most this many seconds after start")
    parser.add_argument("--seed", type=int, default=None, help="random seed (kill moments)")
    parser.add_argument("--workdir", type=Path, help="keep the database and checkpoint here (default: temporary)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be positive")

    rng = random.Random(args.seed)
    targets = ["decisions", "checkpoint"] if args.target == "both" else [args.target]
    with tempfile.TemporaryDirectory(prefix="hs-crash-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        runners = {"decisions": crash_decisions, "checkpoint": crash_checkpoint}
        results = [runners[t](args.kills, workdir, rng, args.max_delay) for t in targets]
    report = {"results": results, "ok": all(r["ok"] for r in results)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in results:
            print(summary_line(r))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
