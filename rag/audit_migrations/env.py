"""Alembic environment for the audit log schema; run through rag.audit.AuditLog.migrate().

Its own version table (``enclave_audit_version``) lets the audit schema share a database with
the catalog or live in one of its own.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from rag.audit import VERSION_TABLE, metadata

config = context.config
target_metadata = metadata


def run_migrations() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
