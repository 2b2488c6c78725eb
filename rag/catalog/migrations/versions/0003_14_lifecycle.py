"""compliance lifecycle: legal holds, keyed subject index, pseudonym vault (issue 14)

Revision ID: 0003_14_lifecycle
Revises: 0002
Create Date: 2026-12-01 11:20:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003_14_lifecycle'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lifecycle_holds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('target', sa.Text(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_by', sa.String(length=255), nullable=True),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('lifecycle_subjects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('subject_key', sa.String(length=64), nullable=False),
    sa.Column('entity_type', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['chunk_id'], ['chunks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('chunk_id', 'subject_key', 'entity_type')
    )
    with op.batch_alter_table('lifecycle_subjects') as batch:
        batch.create_index('ix_lifecycle_subjects_chunk_id', ['chunk_id'], unique=False)
        batch.create_index('ix_lifecycle_subjects_subject_key', ['subject_key'], unique=False)
    op.create_table('lifecycle_vault',
    sa.Column('token', sa.String(length=100), nullable=False),
    sa.Column('entity_type', sa.String(length=64), nullable=False),
    sa.Column('subject_key', sa.String(length=64), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('token')
    )
    with op.batch_alter_table('lifecycle_vault') as batch:
        batch.create_index('ix_lifecycle_vault_subject_key', ['subject_key'], unique=False)


def downgrade() -> None:
    op.drop_table('lifecycle_vault')
    op.drop_table('lifecycle_subjects')
    op.drop_table('lifecycle_holds')
