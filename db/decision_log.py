"""The decision log: one row per decision with every audit field joined, filtered for export."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from db.broker_facts import facts_in_force, facts_text
from db.models import DECISION_KINDS, Decision, LineItem, Prediction, Shipment, User

# Column order of every export format.
LOG_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "decided_at",
    "kind",
    "code",
    "comment",
    "username",
    "role",
    "line_item_id",
    "line_ref",
    "shipment_reference",
    "description",
    "model_version",
    "nomenclature_edition",
    "prediction_id",
    "model_top_code",
    "model_top_score",
    "needs_review",
    "broker_facts",  # the broker's answers to guided questions in force at export time
)


def _start(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, time.min, tzinfo=UTC)


@dataclass(frozen=True)
class DecisionFilter:
    """Which decisions to list. Dates are UTC days; ``until`` as a date includes that whole day.

    ``kinds`` filters on the decision's own kind (``submitted``, ``approved``, ``corrected``, ``rejected``).
    """

    since: date | datetime | None = None
    until: date | datetime | None = None
    kinds: tuple[str, ...] = ()
    username: str | None = None
    code_prefix: str | None = None
    shipment_reference: str | None = None
    model_version: str | None = None
    line_item_id: int | None = None
    max_decision_id: int | None = None  # pins a listing: decisions made after it was read are left out

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in DECISION_KINDS]
        if bad:
            raise ValueError(f"unknown decision kind {bad[0]!r}; expected one of {', '.join(DECISION_KINDS)}")
        if self.code_prefix is not None and not (self.code_prefix.isascii() and self.code_prefix.isdigit()):
            raise ValueError(f"code prefix must be digits, not {self.code_prefix!r}")
        for key in ("username", "shipment_reference", "model_version"):
            if "\x00" in (getattr(self, key) or ""):  # PostgreSQL refuses NUL in text: a DataError, not a message
                raise ValueError(f"the {key.replace('_', ' ')} filter contains a NUL character")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for audit events (only the filters that are set)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value in (None, ()):
                continue
            out[key] = value.isoformat() if isinstance(value, date) else list(value) if key == "kinds" else value
        return out


def decision_log(session: Session, filters: DecisionFilter | None = None) -> list[dict[str, Any]]:
    """Return one dict per decision (keys: :data:`LOG_COLUMNS`), oldest first.

    ``decided_at`` is an aware UTC datetime; ``model_top_*`` come from the prediction the decision
    was made on.
    """
    f = filters or DecisionFilter()
    pred = aliased(Prediction)
    stmt = (
        select(
            Decision.id,
            Decision.created_at,
            Decision.kind,
            Decision.code,
            Decision.comment,
            User.username,
            Decision.role,
            LineItem.id.label("line_item_id"),
            LineItem.line_ref,
            Shipment.reference.label("shipment_reference"),
            LineItem.description,
            Decision.model_version,
            Decision.nomenclature_edition,
            Decision.prediction_id,
            pred.top_code.label("model_top_code"),
            pred.top_score.label("model_top_score"),
            pred.needs_review,
        )
        .join(User, User.id == Decision.user_id)
        .join(LineItem, LineItem.id == Decision.line_item_id)
        .outerjoin(Shipment, Shipment.id == LineItem.shipment_id)
        .outerjoin(pred, pred.id == Decision.prediction_id)
        .order_by(Decision.id)
    )
    if f.since is not None:
        stmt = stmt.where(Decision.created_at >= _start(f.since))
    if f.until is not None:
        if isinstance(f.until, datetime):
            stmt = stmt.where(Decision.created_at <= _start(f.until))
        else:
            stmt = stmt.where(Decision.created_at < _start(f.until + timedelta(days=1)))
    if f.kinds:
        stmt = stmt.where(Decision.kind.in_(f.kinds))
    if f.username:
        stmt = stmt.where(User.username == f.username.strip().lower())
    if f.code_prefix:
        stmt = stmt.where(Decision.code.startswith(f.code_prefix, autoescape=True))
    if f.shipment_reference:
        stmt = stmt.where(Shipment.reference == f.shipment_reference)
    if f.model_version:
        stmt = stmt.where(Decision.model_version == f.model_version)
    if f.line_item_id is not None:
        stmt = stmt.where(Decision.line_item_id == f.line_item_id)
    if f.max_decision_id is not None:
        stmt = stmt.where(Decision.id <= f.max_decision_id)
    rows = [dict(zip(LOG_COLUMNS[:-1], row, strict=True)) for row in session.execute(stmt)]
    facts = facts_in_force(session, {r["line_item_id"] for r in rows})
    for r in rows:
        r["broker_facts"] = facts_text(facts.get(r["line_item_id"], ()))
    return rows


@dataclass(frozen=True)
class LogChoices:
    """Values the decision log can be filtered on, for pick lists."""

    usernames: tuple[str, ...]  # users who made at least one decision
    model_versions: tuple[str, ...]


def latest_decision_id(session: Session) -> int | None:
    """The id of the newest decision, or ``None`` when there is none."""
    return session.scalar(select(func.max(Decision.id)))


def decision_log_choices(session: Session) -> LogChoices:
    """Distinct usernames (of users who decided something) and model versions in the decision log, sorted."""
    usernames = session.scalars(
        select(User.username).where(User.id.in_(select(Decision.user_id).distinct())).order_by(User.username)
    )
    versions = session.scalars(
        select(Decision.model_version)
        .where(Decision.model_version.is_not(None))
        .distinct()
        .order_by(Decision.model_version)
    )
    return LogChoices(usernames=tuple(usernames), model_versions=tuple(v for v in versions if v is not None))
