"""ingestion runs record why they failed

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 06:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('ingestion_runs', sa.Column('failure', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('ingestion_runs') as batch:
        batch.drop_column('failure')
