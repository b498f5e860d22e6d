"""Classification history: imports of past declarations, their rows, retractions, and the record's matches
(all append-only).

Revision ID: 0004_history
Revises: 0003_broker_facts
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_history"
down_revision = "0003_broker_facts"
branch_labels = None
depends_on = None

TABLES = ("history_imports", "history_rows", "history_retractions", "history_matches")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "history_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("edition", sa.String(32), nullable=False),
        sa.Column("photos_file", sa.String(255), nullable=True),
        sa.Column("photos_sha256", sa.String(64), nullable=True),
        sa.Column("embedder", sa.String(128), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(64), nullable=True),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_history_imports_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_history_imports")),
    )
    op.create_index(op.f("ix_history_imports_sha256"), "history_imports", ["sha256"])
    op.create_table(
        "history_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("normalised", sa.Text(), nullable=False),
        sa.Column("code", sa.String(10), nullable=False),
        sa.Column("hs6", sa.String(6), nullable=False),
        sa.Column("sku", sa.String(64), nullable=True),
        sa.Column("importer", sa.String(128), nullable=True),
        sa.Column("declared_on", sa.String(10), nullable=True),
        sa.Column("photos", sa.JSON(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.CheckConstraint("length(hs6) = 6", name=op.f("ck_history_rows_hs6")),
        sa.ForeignKeyConstraint(
            ["import_id"], ["history_imports.id"], name=op.f("fk_history_rows_import_id_history_imports")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_history_rows")),
    )
    op.create_index("ix_history_rows_import_id_id", "history_rows", ["import_id", "id"])
    op.create_table(
        "history_retractions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"], ["history_imports.id"], name=op.f("fk_history_retractions_import_id_history_imports")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_history_retractions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_history_retractions")),
        sa.UniqueConstraint("import_id", name="uq_history_retractions_import_id"),
    )
    op.create_table(
        "history_matches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_item_id", sa.Integer(), nullable=False),
        sa.Column("how", sa.String(16), nullable=False),
        sa.Column("code", sa.String(6), nullable=True),
        sa.Column("conflict", sa.Boolean(), nullable=False),
        sa.Column("similarity", sa.Float(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["line_item_id"], ["line_items.id"], name=op.f("fk_history_matches_line_item_id_line_items")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_history_matches")),
    )
    op.create_index("ix_history_matches_line_item_id_id", "history_matches", ["line_item_id", "id"])
    dialect = op.get_bind().dialect.name
    for table in TABLES:
        if dialect == "sqlite":
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
                )
        elif dialect == "postgresql":  # hs_refuse_change() comes with 0001_initial
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION hs_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION hs_refuse_change()"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    op.drop_index("ix_history_matches_line_item_id_id", table_name="history_matches")
    op.drop_table("history_matches")
    op.drop_table("history_retractions")
    op.drop_index("ix_history_rows_import_id_id", table_name="history_rows")
    op.drop_table("history_rows")
    op.drop_index(op.f("ix_history_imports_sha256"), table_name="history_imports")
    op.drop_table("history_imports")
