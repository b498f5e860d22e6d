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
    "history_import",  # imported decisions: "import #3 of firm.csv (sha256 1a2b3c4d5e6f), line 17[, retracted ...]"
    "precedents",  # the precedents' vote for the decided code when the model proposed it ("4 earlier rulings ...")
)
_SELECTED = len(LOG_COLUMNS) - 3  # the columns the decision query selects; the last three are filled in after
IMPORTED = "imported"  # the kind of a decision that came with an imported classification history
LOG_KINDS: tuple[str, ...] = (*DECISION_KINDS, IMPORTED)


def _start(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, time.min, tzinfo=UTC)


@dataclass(frozen=True)
class DecisionFilter:
    """Which decisions to list. Dates are UTC days; ``until`` as a date includes that whole day.

    ``kinds`` filters on the decision's own kind (``submitted``, ``approved``, ``corrected``, ``rejected``, and
    ``imported`` for the rows of imported classification histories).
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
    max_history_row_id: int | None = None  # ... and imported rows stored after it was read

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in LOG_KINDS]
        if bad:
            raise ValueError(f"unknown decision kind {bad[0]!r}; expected one of {', '.join(LOG_KINDS)}")
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
            pred.candidates,
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
    rows: list[dict[str, Any]] = []
    if not f.kinds or set(f.kinds) - {IMPORTED}:
        selected: list[tuple[dict[str, Any], Any]] = [
            (dict(zip(LOG_COLUMNS[:_SELECTED], row[:_SELECTED], strict=True)), row[_SELECTED])
            for row in session.execute(stmt)
        ]
        facts = facts_in_force(session, {r["line_item_id"] for r, _ in selected})
        for r, candidates in selected:
            r["broker_facts"] = facts_text(facts.get(r["line_item_id"], ()))
            r["history_import"] = None
            r["precedents"] = _vote_for(r["code"], candidates)
        rows = [r for r, _ in selected]
    if (not f.kinds or IMPORTED in f.kinds) and _imports_apply(f):
        imported = [r for r in _imported_rows(session, f) if _in_window(r["decided_at"], f)]
        rows = sorted(rows + imported, key=lambda r: r["decided_at"])  # stable: decisions keep their id order
    return rows


def _imports_apply(f: DecisionFilter) -> bool:
    """Imported rows have no shipment, model version or line item: those filters leave them out."""
    return f.shipment_reference is None and f.model_version is None and f.line_item_id is None


def _in_window(at: datetime, f: DecisionFilter) -> bool:
    if f.since is not None and at < _start(f.since):
        return False
    if f.until is not None:
        end = _start(f.until) if isinstance(f.until, datetime) else _start(f.until + timedelta(days=1))
        return at <= end if isinstance(f.until, datetime) else at < end
    return True


def _imported_rows(session: Session, f: DecisionFilter) -> list[dict[str, Any]]:
    from db.history import imported_log_rows

    out = []
    user = f.username.strip().lower() if f.username else None
    for row, imp, retraction in imported_log_rows(session, max_row_id=f.max_history_row_id):
        if user and imp.username != user:
            continue
        if f.code_prefix and not row.hs6.startswith(f.code_prefix):
            continue
        source = f"import #{imp.id} of {imp.file_name} (sha256 {imp.sha256[:12]}), line {row.line_no}"
        if retraction is not None:
            source += f", retracted {retraction.created_at:%Y-%m-%d} by {retraction.username}: {retraction.reason}"
        facts = [f"declared {row.declared_on}" if row.declared_on else "", f"SKU {row.sku}" if row.sku else "",
                 f"importer {row.importer}" if row.importer else "", f"code {row.code}" if len(row.code) > 6 else ""]  # fmt: skip
        out.append(
            {
                "decision_id": None,
                "decided_at": imp.created_at,
                "kind": IMPORTED,
                "code": row.hs6,
                "comment": "; ".join(x for x in facts if x),
                "username": imp.username,
                "role": "admin",
                "line_item_id": None,
                "line_ref": None,
                "shipment_reference": None,
                "description": row.description,
                "model_version": None,
                "nomenclature_edition": imp.edition,
                "prediction_id": None,
                "model_top_code": None,
                "model_top_score": None,
                "needs_review": None,
                "broker_facts": "",
                "history_import": source,
                "precedents": None,
            }
        )
    return out


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


def _vote_for(code: str | None, candidates: list[dict[str, Any]] | None) -> str | None:
    """The stored sentence of the precedents' vote for the decided code, when the model proposed that code."""
    for c in candidates or ():
        if code and c.get("level") == 6 and c.get("code") == code:
            return c.get("precedents")
    return None
