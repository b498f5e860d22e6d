"""Command line: ``python -m db upgrade | export | import-history | retract-history | users`` (see ``--help``)."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from datetime import date, datetime
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from db.decision_log import LOG_KINDS, DecisionFilter
from db.engine import default_db_url, make_engine, make_session_factory, run_transaction, upgrade
from db.export import FORMATS, export_decision_log, record_export
from db.models import ROLES
from hs_core.files import atomic_write_bytes
from hs_core.settings import get_settings

log = logging.getLogger("db")
MIN_PASSWORD_LENGTH = 10


class UserError(Exception):
    """A problem the person at the terminal can fix; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_when(text: str) -> date | datetime:
    try:
        return date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"bad date {text!r}: use YYYY-MM-DD or an ISO 8601 date-time") from None


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - informative only
        return None


def _open(url: str):
    try:
        safe = make_url(url).render_as_string(hide_password=True)
    except ArgumentError as exc:  # unparseable: do not echo it, it may hold a password
        raise UserError(f"bad database URL: {exc}") from None
    try:
        engine = make_engine(url)
    except ArgumentError as exc:
        raise UserError(f"bad database URL {safe}: {exc}") from None
    except ImportError as exc:
        raise UserError(f"database driver not installed for {safe}: {exc}") from None
    try:
        upgrade(engine)
    except DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise UserError(f"cannot open database {safe}: {reason}") from None
    return engine


def _check_writable(out: Path) -> None:
    if out.is_dir():
        raise UserError(f"cannot write {out}: it is a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UserError(f"cannot write {out}: permission denied")


def cmd_upgrade(args: argparse.Namespace) -> int:
    engine = _open(args.db)
    engine.dispose()
    print("database is at the latest schema")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    to_stdout = args.out == "-"
    out = None if to_stdout else Path(args.out)
    if out is not None:
        _check_writable(out)
    try:
        filters = DecisionFilter(
            since=_parse_when(args.since) if args.since else None,
            until=_parse_when(args.until) if args.until else None,
            kinds=(args.status,) if args.status else (),
            username=args.user,
            code_prefix=args.code_prefix,
            shipment_reference=args.shipment,
            model_version=args.model_version,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    engine = _open(args.db)
    try:
        factory = make_session_factory(engine)
        data, count = run_transaction(factory, lambda s: export_decision_log(s, filters, args.format))
        if out is None:  # to_stdout
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            try:
                atomic_write_bytes(out, data)
            except OSError as exc:
                raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
        destination = "-" if to_stdout else str(out)
        run_transaction(
            factory,
            lambda s: record_export(
                s,
                fmt=args.format,
                filters=filters,
                rows=count,
                user_id=None,
                username=_os_user(),
                via="cli",
                out=destination,
            ),
        )
    finally:
        engine.dispose()
    if not to_stdout:
        print(f"wrote {count} decision(s) to {out}")
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise UserError("passwords do not match")
    return first


def cmd_users_create(args: argparse.Namespace) -> int:
    password = _read_password(args.password_stdin)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    from services.auth import provision_user
    from services.errors import ServiceError

    engine = _open(args.db)
    try:
        factory = make_session_factory(engine)
        try:
            user = run_transaction(
                factory,
                lambda s: provision_user(s, args.username, password, args.role, via="cli", operator=_os_user()),
            )
        except ServiceError as exc:
            raise UserError(str(exc)) from None
    finally:
        engine.dispose()
    print(f"created {user.role} {user.username}")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from db.models import User

    engine = _open(args.db)
    try:
        with make_session_factory(engine)() as session:
            users = session.scalars(select(User).order_by(User.username)).all()
            for u in users:
                print(f"{u.username}\t{u.role}\t{'active' if u.active else 'inactive'}")
    finally:
        engine.dispose()
    return 0 if users else 1


def _embedder(no_embed: bool):
    """The configured text tower (the one the app's classifier uses), so imported rows carry their vectors."""
    if no_embed:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from types import SimpleNamespace

    from hs_model.config import TowerConfig
    from hs_model.towers import TextTower, configure_threads
    from services.history import TowerEmbedder

    tower_cfg = TowerConfig.from_env()
    configure_threads()
    tower = TextTower(tower_cfg.text_model, tower_cfg.text_max_length)
    return TowerEmbedder(SimpleNamespace(text_tower=tower))  # type: ignore[arg-type]  # only the text tower is used


def cmd_import_history(args: argparse.Namespace) -> int:
    from services.errors import ServiceError
    from services.history import file_sha256, import_history
    from services.history_file import HistoryFileError, check_history_file, open_photos

    path = Path(args.file)
    try:
        data = path.read_bytes()
        zip_data = Path(args.photos_zip).read_bytes() if args.photos_zip else None
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
    try:
        photos = open_photos(Path(args.photos_zip).name, zip_data) if zip_data is not None else None
        checked = check_history_file(path.name, data, photos)
    except HistoryFileError as exc:
        raise UserError(str(exc)) from None
    if checked.total_problems:
        for p in checked.problems:
            print(f"{path.name}:{p.line}: {p.problem}", file=sys.stderr)
        more = checked.total_problems - len(checked.problems)
        raise UserError(
            f"{checked.total_problems} problem(s) in {path.name}{f' ({more} not listed)' if more else ''}; "
            "nothing was imported"
        )
    embedder = _embedder(args.no_embed)
    engine = _open(args.db)
    try:
        factory = make_session_factory(engine)

        def run(session):
            actor = None
            if args.actor:
                from db.queries import find_user
                from services.auth import Actor

                user = find_user(session, args.actor)
                if user is None or not user.active or user.role != "admin":
                    raise UserError(f"--actor {args.actor!r} is not an active admin of this database")
                actor = Actor.from_user(user)
            return import_history(session, actor, checked, photos=photos,
                                  photos_name=Path(args.photos_zip).name if args.photos_zip else None,
                                  photos_sha256=file_sha256(zip_data) if zip_data is not None else None,
                                  embedder=embedder, via="app" if actor else "cli", operator=_os_user())  # fmt: skip

        try:
            result = run_transaction(factory, run)
        except ServiceError as exc:
            raise UserError(str(exc)) from None
    finally:
        engine.dispose()
    print(f"imported {result.rows} row(s) of {result.file_name} as history import #{result.import_id}"
          f"{f', {result.photos} photo(s)' if result.photos else ''}")  # fmt: skip
    return 0


def cmd_retract_history(args: argparse.Namespace) -> int:
    from services.errors import ServiceError
    from services.history import retract_import

    engine = _open(args.db)
    try:
        factory = make_session_factory(engine)
        try:
            run_transaction(
                factory,
                lambda s: retract_import(s, None, args.import_id, args.reason, via="cli", operator=_os_user()),
            )
        except ServiceError as exc:
            raise UserError(str(exc)) from None
    finally:
        engine.dispose()
    print(f"retracted history import #{args.import_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the ``python -m db`` argument parser."""
    parser = _Parser(prog="python -m db", description="HS desk database tools")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_db(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", default=None, help="SQLAlchemy URL (default: $HS_DB_URL or var/hs_desk.sqlite3)")

    p = sub.add_parser("upgrade", help="create or migrate the schema to the latest revision")
    add_db(p)
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("export", help="export the decision log")
    add_db(p)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output file, or - for stdout")
    p.add_argument("--since", help="first UTC day (YYYY-MM-DD) or ISO date-time")
    p.add_argument("--until", help="last UTC day, inclusive (YYYY-MM-DD) or ISO date-time")
    p.add_argument("--status", choices=LOG_KINDS, help="only decisions of this kind (imported: history imports)")
    p.add_argument("--user", help="only decisions made by this username")
    p.add_argument("--code-prefix", help="only codes starting with these digits, e.g. 61")
    p.add_argument("--shipment", help="only line items of this shipment reference")
    p.add_argument("--model-version", help="only decisions made on this model version")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-history", help="import a classification history (CSV or XLSX of past declarations)")
    add_db(p)
    p.add_argument("file", help="CSV or XLSX: description, code (6-10 digits); optional sku, importer, date, photos")
    p.add_argument("--photos-zip", default=None, metavar="ZIP", help="photos named in the file's photos column")
    p.add_argument("--actor", default=None, metavar="ADMIN", help="admin recorded as the importer (default: OS user)")
    p.add_argument("--no-embed", action="store_true", help="store no text vectors (the app embeds them on first use)")
    p.set_defaults(func=cmd_import_history)

    p = sub.add_parser("retract-history", help="undo a whole history import (an audited retraction)")
    add_db(p)
    p.add_argument("import_id", type=int)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_retract_history)

    users = sub.add_parser("users", help="manage users")
    users_sub = users.add_subparsers(dest="users_command", required=True, parser_class=_Parser)
    p = users_sub.add_parser("create", help="create a user (password from a prompt or one line of stdin)")
    add_db(p)
    p.add_argument("--username", required=True)
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")
    p.set_defaults(func=cmd_users_create)
    p = users_sub.add_parser("list", help="list users (exit status 1 when there are none)")
    add_db(p)
    p.set_defaults(func=cmd_users_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for user errors, printed as one line on stderr)."""
    logging.basicConfig(level=get_settings().log_level, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.db is None:
        args.db = default_db_url()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"python -m db: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("python -m db: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
