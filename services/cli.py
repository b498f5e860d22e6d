"""Command line of the app's use cases that run from a shell: ``python -m hs_model finetune``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hs_core.settings import DEFAULT_DATA_DIR
from hs_model.cli import UserError


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune the active model on the database's reviewed decisions (`services.models.run_finetune_as_operator`)."""
    from pathlib import Path

    from db.engine import make_engine, make_session_factory, upgrade
    from hs_model.predict import Classifier
    from services.errors import ServiceError
    from services.models import run_finetune_as_operator

    def progress(row: dict[str, Any]) -> None:
        print(f"epoch {row['epoch']}/{row['epochs']}: loss {row['loss']:.3f}, accuracy {row['val_top1']:.3f}",
              file=sys.stderr)  # fmt: skip

    engine = make_engine(args.db)
    try:
        upgrade(engine)
        result = run_finetune_as_operator(
            make_session_factory(engine),
            Classifier(None),  # the towers; the base version's head is loaded from the registry
            args.started_by,
            progress,
            base=args.base,
            data=Path(args.data_dir),
        )
    except ServiceError as exc:
        raise UserError(str(exc)) from None
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"{result.version_id} (from {result.parent_id}, {result.decisions} decisions): {result.reason}")
    return 0


def record_lookup(url: str, classifier: Any, text: str | None, sku: str | None, importer: str | None) -> Any:
    """`predict --history-db URL`: the record's answer for the product as JSON (None when it has nothing)."""
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from db.engine import make_engine, make_session_factory, run_transaction, upgrade
    from services.history import embedder_for, find_match

    embedder = embedder_for(classifier)
    if embedder is None:
        return None
    try:
        engine = make_engine(url)
    except (ArgumentError, ImportError) as exc:
        raise UserError(f"bad --history-db URL: {exc}") from None
    try:
        upgrade(engine)
        match = run_transaction(
            make_session_factory(engine), lambda s: find_match(s, embedder, text, sku=sku, importer=importer)
        )
    except DBAPIError as exc:
        raise UserError(f"cannot read --history-db: {str(exc.orig or exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    return match.to_json() if match is not None else None


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``finetune``, and hand ``predict`` the record lookup (its ``--history-db``)."""
    if "predict" in sub.choices:
        sub.choices["predict"].set_defaults(record_lookup=record_lookup)
    p = sub.add_parser("finetune", help="fine-tune the active model on reviewed decisions; the evaluation gate decides")
    p.add_argument("--db", required=True, help="database URL, e.g. sqlite:///var/hs_desk.sqlite3")
    p.add_argument("--base", default=None, metavar="VERSION", help="registered version to start from (default: active)")
    p.add_argument("--started-by", default=None, metavar="NAME", help="admin recorded as having started it")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="its eval/ files are the gate's fixed benchmark")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_finetune)
