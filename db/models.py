"""Typed SQLAlchemy models: users, shipments, line items, photos, predictions, decisions, models, audit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

Role = Literal["broker", "reviewer", "admin"]
DecisionKind = Literal["submitted", "approved", "corrected", "rejected"]
ModelStatus = Literal["candidate", "active", "retired"]
ROLES: tuple[str, ...] = ("broker", "reviewer", "admin")
DECISION_KINDS: tuple[str, ...] = ("submitted", "approved", "corrected", "rejected")
MODEL_STATUSES: tuple[str, ...] = ("candidate", "active", "retired")
APPEND_ONLY_TABLES: tuple[str, ...] = (
    "decisions",
    "audit_events",
    "model_activations",
    "item_comments",
    "line_item_versions",
    "broker_facts",
    "history_imports",
    "history_rows",
    "history_retractions",
    "history_matches",
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        # SQLite stores text; keep it naive-UTC so lexical order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (needed by SQLite batch migrations)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[dict[str, Any]]: JSON()}


class User(Base):
    """A person who signs in; ``role`` decides what they may do."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('broker', 'reviewer', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Shipment(Base):
    """A customs shipment grouping line items under the broker's reference."""

    __tablename__ = "shipments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LineItem(Base):
    """One product to classify: a description and/or photos, optionally within a shipment."""

    __tablename__ = "line_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    shipment_id: Mapped[int | None] = mapped_column(ForeignKey("shipments.id"), index=True)
    line_ref: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # float32 joint-space vector (numpy .tobytes()), for precedent search.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)

    photos: Mapped[list[Photo]] = relationship(order_by="Photo.position", lazy="selectin")
    shipment: Mapped[Shipment | None] = relationship()


class Photo(Base):
    """A photo of a line item, stored by content hash under the photo store root."""

    __tablename__ = "photos"
    __table_args__ = (UniqueConstraint("line_item_id", "position", name="uq_photos_line_item_id_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("line_items.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))
    mime: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)


class Prediction(Base):
    """What a model version proposed for a line item (ranked candidates at each level)."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("line_items.id"), index=True)
    model_version: Mapped[str] = mapped_column(String(128))
    nomenclature_edition: Mapped[str] = mapped_column(String(32))
    latency_ms: Mapped[float] = mapped_column(Float)
    needs_review: Mapped[bool] = mapped_column(Boolean)
    top_code: Mapped[str | None] = mapped_column(String(6))
    top_score: Mapped[float | None] = mapped_column(Float)
    # [{"level": 2|4|6, "rank": int, "code": str, "description": str, "score": float}, ...]
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Decision(Base):
    """An append-only event on a line item: submitted, approved, corrected or rejected."""

    __tablename__ = "decisions"
    __table_args__ = (
        CheckConstraint("kind IN ('submitted', 'approved', 'corrected', 'rejected')", name="kind"),
        CheckConstraint("role IN ('broker', 'reviewer', 'admin')", name="role"),
        CheckConstraint(
            "(kind = 'rejected' AND code IS NULL) OR (kind <> 'rejected' AND code IS NOT NULL AND length(code) = 6)",
            name="code",
        ),
        Index("ix_decisions_line_item_id_id", "line_item_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("line_items.id"))
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"))
    kind: Mapped[str] = mapped_column(String(16))
    code: Mapped[str | None] = mapped_column(String(6))
    comment: Mapped[str] = mapped_column(Text, default="")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    model_version: Mapped[str | None] = mapped_column(String(128))
    nomenclature_edition: Mapped[str | None] = mapped_column(String(32))

    user: Mapped[User] = relationship(lazy="joined")


class ModelVersion(Base):
    """A model checkpoint the app can serve; the active one is the latest activation."""

    __tablename__ = "model_versions"
    __table_args__ = (CheckConstraint("status IN ('candidate', 'active', 'retired')", name="status"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    card: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class ModelActivation(Base):
    """Append-only record of which model version was switched on, by whom and why."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")


class AuditEvent(Base):
    """Append-only audit trail: sign-ins, submissions, reviews, exports, model changes, users."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_username_action_at", "username", "action", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AuthSession(Base):
    """A signed-in browser session, kept server-side; the browser holds only its random token (``id`` is the
    token's SHA-256, so a leaked database does not hand out live sessions). Ended by sign-out or expiry."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()
    end_reason: Mapped[str | None] = mapped_column(String(32))


class SignInGuard(Base):
    """One row per username tried: sign-ins for a name lock it, so parallel guesses from any number of app
    processes are checked one at a time against the failures recorded in the audit trail."""

    __tablename__ = "sign_in_guards"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)


class ItemComment(Base):
    """Append-only comment thread on a line item between its broker and the reviewers."""

    __tablename__ = "item_comments"
    __table_args__ = (
        CheckConstraint("role IN ('broker', 'reviewer', 'admin')", name="role"),
        Index("ix_item_comments_line_item_id_id", "line_item_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("line_items.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    role: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(lazy="joined")


class LineItemVersion(Base):
    """Append-only: what a line item said (description, photos) at each version. Version 1 is the original,
    written when the item is first corrected; the line item itself always holds the latest version."""

    __tablename__ = "line_item_versions"
    __table_args__ = (UniqueConstraint("line_item_id", "version", name="uq_line_item_versions_line_item_id_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("line_items.id"))
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text)
    # [{"sha256", "path", "mime", "width", "height", "size_bytes"}, ...] in photo order
    photos: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BrokerFact(Base):
    """Append-only: what the broker stated about a line item in answer to a guided question (``textile`` =
    ``cotton``). A changed answer is a new row; the latest row per question is the one in force."""

    __tablename__ = "broker_facts"
    __table_args__ = (Index("ix_broker_facts_line_item_id_id", "line_item_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("line_items.id"))
    question: Mapped[str] = mapped_column(String(32))  # the criterion's key, e.g. "textile"
    answer: Mapped[str] = mapped_column(String(64))  # the option's key, e.g. "cotton", "none", "unknown"
    question_text: Mapped[str] = mapped_column(Text, default="")
    answer_label: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(16), default="broker")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(lazy="joined")


class HistoryImport(Base):
    """Append-only: one uploaded classification history (a CSV or XLSX of past declarations), with provenance.

    Undone only by a `HistoryRetraction` row; its rows then stop counting as the record."""

    __tablename__ = "history_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_name: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    row_count: Mapped[int] = mapped_column(Integer)
    edition: Mapped[str] = mapped_column(String(32))  # the nomenclature the codes were checked against
    photos_file: Mapped[str | None] = mapped_column(String(255))
    photos_sha256: Mapped[str | None] = mapped_column(String(64))
    embedder: Mapped[str | None] = mapped_column(String(128))  # text tower of the stored row vectors, if any
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str | None] = mapped_column(String(64))  # who imported (an admin, or the OS user of the CLI)
    via: Mapped[str] = mapped_column(String(16), default="app")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HistoryRow(Base):
    """Append-only: one past declaration of an import: a decision of its own kind ("imported")."""

    __tablename__ = "history_rows"
    __table_args__ = (
        CheckConstraint("length(hs6) = 6", name="hs6"),
        Index("ix_history_rows_import_id_id", "import_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("history_imports.id"))
    line_no: Mapped[int] = mapped_column(Integer)  # the line (CSV) or row (XLSX) of the file
    description: Mapped[str] = mapped_column(Text)
    normalised: Mapped[str] = mapped_column(Text)  # services.history_match.normalise(description)
    code: Mapped[str] = mapped_column(String(10))  # as declared: 6, 8 or 10 digits
    hs6: Mapped[str] = mapped_column(String(6))
    sku: Mapped[str | None] = mapped_column(String(64))
    importer: Mapped[str | None] = mapped_column(String(128))
    declared_on: Mapped[str | None] = mapped_column(String(10))  # ISO date of the declaration
    # [{"sha256", "path", "mime", "width", "height", "size_bytes"}, ...] in photo order
    photos: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float16 unit text vector (the import's embedder)


class HistoryRetraction(Base):
    """Append-only: a whole import undone (who, when, why). Its rows stay, marked retracted, for the auditors."""

    __tablename__ = "history_retractions"
    __table_args__ = (UniqueConstraint("import_id", name="uq_history_retractions_import_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("history_imports.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class HistoryMatch(Base):
    """Append-only: what the record said about a line item when it was classified ("same product as ...")."""

    __tablename__ = "history_matches"
    __table_args__ = (Index("ix_history_matches_line_item_id_id", "line_item_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("line_items.id"))
    how: Mapped[str] = mapped_column(String(16))  # sku | description | near
    code: Mapped[str | None] = mapped_column(String(6))  # None when the record conflicts
    conflict: Mapped[bool] = mapped_column(Boolean, default=False)
    similarity: Mapped[float] = mapped_column(Float)
    summary: Mapped[str] = mapped_column(Text)
    # [{"kind", "code", "label", "line_item_id"|None, "history_row_id"|None, "similarity"}, ...]
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AppendOnlyError(RuntimeError):
    """Raised when code tries to update or delete a row of an append-only table."""


def _refuse(verb: str):
    def listener(_mapper, _connection, target) -> None:
        raise AppendOnlyError(f"{target.__tablename__} is append-only: cannot {verb} row id={target.id}")

    return listener


for _cls in (
    Decision,
    AuditEvent,
    ModelActivation,
    ItemComment,
    LineItemVersion,
    BrokerFact,
    HistoryImport,
    HistoryRow,
    HistoryRetraction,
    HistoryMatch,
):
    event.listen(_cls, "before_update", _refuse("update"))
    event.listen(_cls, "before_delete", _refuse("delete"))
