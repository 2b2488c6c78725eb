"""Alembic environment for the audit log schema; run through rag.audit.log.AuditLog.migrate().

Its own version table (``enclave_audit_version``) lets the audit schema share a database with
the catalog or live in one of its own.
"""

from __future__ import annotations

from rag.audit.log import VERSION_TABLE, metadata
from rag.database import run_migrations

run_migrations(metadata, version_table=VERSION_TABLE)
