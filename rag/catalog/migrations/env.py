"""Alembic environment for the catalog schema; run through rag.catalog.store.Catalog.migrate()."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from rag.catalog.models import Base

config = context.config
target_metadata = Base.metadata
# the audit log has its own migrations (rag/audit_migrations) and may share this database
_NOT_OURS = {"audit_records", "enclave_audit_version"}


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    return not (type_ == "table" and name in _NOT_OURS)


def run_migrations() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata, render_as_batch=True,
                          include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
