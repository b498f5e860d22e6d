"""Decision-log export for admins (CSV, JSONL or Parquet), audited."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.decision_log import DecisionFilter
from db.export import CONTENT_TYPES, FORMATS, export_decision_log, record_export
from db.models import utcnow
from services.auth import Actor, refresh_actor, require_role
from services.errors import InvalidInput

__all__ = ["CONTENT_TYPES", "FORMATS", "DecisionFilter", "export_decisions", "export_filename"]


def export_decisions(session: Session, actor: Actor | None, filters: DecisionFilter | None, fmt: str) -> bytes:
    """Return the filtered decision log as file bytes and record an ``export`` audit event. Admins only.

    Args:
        session: Caller-owned session (the audit event commits with it).
        actor: The signed-in user.
        filters: Which decisions; ``None`` for all.
        fmt: ``"csv"`` (formula-safe cells), ``"jsonl"`` or ``"parquet"``.

    Raises:
        PermissionDenied: Not an admin.
        InvalidInput: Unknown format.
    """
    actor = refresh_actor(session, require_role(actor, "admin", action="export the decision log"))
    if fmt not in FORMATS:
        raise InvalidInput(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    data, count = export_decision_log(session, filters, fmt)
    record_export(
        session, fmt=fmt, filters=filters, rows=count, user_id=actor.user_id, username=actor.username, via="app"
    )
    return data


def export_filename(fmt: str) -> str:
    """A download name such as ``hs-decisions-20261125T164700Z.csv``."""
    return f"hs-decisions-{utcnow().strftime('%Y%m%dT%H%M%SZ')}.{fmt}"
