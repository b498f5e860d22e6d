"""A broker's day: server-side sign-in sessions, a cross-process sign-in guard, comment threads on items,
versions of a corrected line item.

Revision ID: 0002_broker_day
Revises: 0001_initial
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_broker_day"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

APPEND_ONLY = ("item_comments", "line_item_versions")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=False),
        sa.Column("last_seen_at", _ts(), nullable=False),
        sa.Column("ended_at", _ts(), nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_auth_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_sessions")),
    )
    op.create_index(op.f("ix_auth_sessions_user_id"), "auth_sessions", ["user_id"])
    op.create_table(
        "sign_in_guards",
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("last_attempt_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_sign_in_guards")),
    )
    op.create_table(
        "item_comments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_item_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.CheckConstraint("role IN ('broker', 'reviewer', 'admin')", name=op.f("ck_item_comments_role")),
        sa.ForeignKeyConstraint(
            ["line_item_id"], ["line_items.id"], name=op.f("fk_item_comments_line_item_id_line_items")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_item_comments_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_item_comments")),
    )
    op.create_index("ix_item_comments_line_item_id_id", "item_comments", ["line_item_id", "id"])
    op.create_table(
        "line_item_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_item_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("photos", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["line_item_id"], ["line_items.id"], name=op.f("fk_line_item_versions_line_item_id_line_items")
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_line_item_versions_created_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_line_item_versions")),
        sa.UniqueConstraint("line_item_id", "version", name="uq_line_item_versions_line_item_id_version"),
    )
    _create_append_only_triggers()


def _create_append_only_triggers() -> None:
    """As 0001: SQLite triggers per verb; PostgreSQL reuses 0001's ``hs_refuse_change()``."""
    dialect = op.get_bind().dialect.name
    for table in APPEND_ONLY:
        if dialect == "sqlite":
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
                )
        elif dialect == "postgresql":
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION hs_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION hs_refuse_change()"
            )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    for table in ("line_item_versions", "item_comments", "sign_in_guards", "auth_sessions"):
        op.drop_table(table)
