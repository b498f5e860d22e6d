"""Broker-stated facts: answers to guided questions, stored with the line item (append-only).

Revision ID: 0003_broker_facts
Revises: 0002_broker_day
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_broker_facts"
down_revision = "0002_broker_day"
branch_labels = None
depends_on = None

TABLE = "broker_facts"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_item_id", sa.Integer(), nullable=False),
        sa.Column("question", sa.String(32), nullable=False),
        sa.Column("answer", sa.String(64), nullable=False),
        sa.Column("question_text", sa.Text(), nullable=False),
        sa.Column("answer_label", sa.Text(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["line_item_id"], ["line_items.id"], name=op.f("fk_broker_facts_line_item_id_line_items")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_broker_facts_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_facts")),
    )
    op.create_index("ix_broker_facts_line_item_id_id", TABLE, ["line_item_id", "id"])
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {TABLE}_no_{verb.lower()} BEFORE {verb} ON {TABLE} "
                f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: {verb} refused'); END"
            )
    elif dialect == "postgresql":  # hs_refuse_change() comes with 0001_initial
        op.execute(
            f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION hs_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
            "FOR EACH STATEMENT EXECUTE FUNCTION hs_refuse_change()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_update")
        op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_no_delete")
    op.drop_index("ix_broker_facts_line_item_id_id", table_name=TABLE)
    op.drop_table(TABLE)
