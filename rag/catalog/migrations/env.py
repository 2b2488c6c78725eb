"""Alembic environment for the catalog schema; run through rag.catalog.store.CatalogStore.migrate()."""

from __future__ import annotations

from rag.catalog.models import Base
from rag.database import run_migrations
from rag.lifecycle import models as _lifecycle_models  # noqa: F401  # its tables are the catalog's too

# the audit log has its own migrations (rag/audit/migrations) and may share this database
_NOT_OURS = {"audit_records", "enclave_audit_version"}


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    return not (type_ == "table" and name in _NOT_OURS)


run_migrations(Base.metadata, include_object=include_object, render_as_batch=True)
