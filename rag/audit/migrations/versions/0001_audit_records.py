"""audit records: hash-chained, append-only

Revision ID: a0001
Revises:
Create Date: 2026-11-24 18:00:00

Triggers refuse UPDATE and DELETE on every backend and TRUNCATE on PostgreSQL, for every role
including the owner; removing them takes a deliberate DDL step that verification still catches.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a0001"
down_revision = None
branch_labels = None
depends_on = None

_REFUSAL = "audit records are append-only"


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("record_hash", sa.String(length=64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.UniqueConstraint("seq", name="uq_audit_records_seq"),
        sa.UniqueConstraint("record_hash", name="uq_audit_records_record_hash"),
    )
    op.create_index("ix_audit_records_ts", "audit_records", ["ts"])
    op.create_index("ix_audit_records_user_id", "audit_records", ["user_id"])
    op.create_index("ix_audit_records_kind", "audit_records", ["kind"])

    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION enclave_audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{_REFUSAL}: % on % refused', TG_OP, TG_TABLE_NAME;
            END
            $$""")
        op.execute("CREATE TRIGGER audit_records_no_update_delete BEFORE UPDATE OR DELETE ON audit_records "
                   "FOR EACH ROW EXECUTE FUNCTION enclave_audit_refuse_change()")
        op.execute("CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records "
                   "FOR EACH STATEMENT EXECUTE FUNCTION enclave_audit_refuse_change()")
        op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_records FROM PUBLIC")
    else:
        op.execute("CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records "
                   f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END")
        op.execute("CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records "
                   f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END")


def downgrade() -> None:
    # Dropping the audit log is not a migration step; refuse rather than destroy evidence.
    raise RuntimeError("the audit log schema cannot be downgraded; archive and verify an export first")
