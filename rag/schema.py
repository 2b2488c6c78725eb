"""Schema upgrades as a deployment step, apart from serving: ``enclave db upgrade``.

The catalog and the audit log each keep their own Alembic scripts and version table
(:mod:`rag.database`). :func:`upgrade_databases` brings both to their newest revision, connected
as the schema owner, and on PostgreSQL grants the service's role (``ENCLAVE_AUDIT_APP_ROLE``)
what the query side needs and nothing more: SELECT on the catalog tables, SELECT and INSERT on the
audit records. The service then connects as that role and never migrates:
:func:`require_current_schema` only reads the two version tables and refuses to start, naming the
command to run, when either store is behind.

Embedded deployments (both stores in SQLite files in ``ENCLAVE_HOME``) have no roles to separate;
there :func:`ensure_schema` upgrades in place, so ``enclave ingest`` then ``enclave serve`` still
work on a fresh home with nothing else to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from rag.config import Settings
from rag.errors import ConfigurationError

_CATALOG_MIGRATIONS = Path(__file__).resolve().parent / "catalog" / "migrations"
_AUDIT_MIGRATIONS = Path(__file__).resolve().parent / "audit" / "migrations"
_CATALOG_VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class SchemaState:
    """Where one store's schema stands against the scripts this code ships."""

    store: str  # "catalog" | "audit"
    current: str | None  # None: never migrated
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _head(script_location: Path) -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    if head is None:  # pragma: no cover - the package ships its scripts
        raise ConfigurationError(f"no migration scripts under {script_location}")
    return head


def _current(engine: Engine, version_table: str) -> str | None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": version_table})
        return ctx.get_current_revision()


def schema_states(settings: Settings) -> tuple[SchemaState, SchemaState]:
    """The catalog's and the audit log's schema revisions, as stored and as shipped."""
    from rag.audit.log import VERSION_TABLE
    from rag.database import make_engine

    states = []
    for store, url, table, scripts in (("catalog", settings.database_url, _CATALOG_VERSION_TABLE,
                                        _CATALOG_MIGRATIONS),
                                       ("audit", settings.audit_database_url, VERSION_TABLE, _AUDIT_MIGRATIONS)):
        engine = make_engine(url)
        try:
            states.append(SchemaState(store, _current(engine, table), _head(scripts)))
        finally:
            engine.dispose()
    return states[0], states[1]


def embedded(settings: Settings) -> bool:
    """Both stores in SQLite files: no database roles, the process owns the files."""
    return all(make_url(u).get_backend_name() == "sqlite" for u in (settings.database_url,
                                                                   settings.audit_database_url))


def upgrade_databases(settings: Settings, app_role: str | None = None) -> tuple[SchemaState, SchemaState]:
    """Migrate the catalog and the audit log to head; on PostgreSQL grant ``app_role`` the query side's rights."""
    from rag.audit.log import AuditLog
    from rag.catalog.store import CatalogStore

    role = app_role if app_role is not None else (settings.audit_app_role or None)
    catalog = CatalogStore(settings.database_url)
    audit = AuditLog(settings.audit_database_url)
    try:
        catalog.migrate()
        audit.migrate(app_role=role)
        if role and catalog.engine.dialect.name == "postgresql":
            _grant_catalog_reads(catalog.engine, role)
    finally:
        catalog.dispose()
        audit.dispose()
    return schema_states(settings)


def _grant_catalog_reads(engine: Engine, role: str) -> None:
    """The query side reads the catalog and never writes it: SELECT on its tables, nothing else."""
    from rag.catalog.models import Base

    with engine.begin() as conn:
        quoted = conn.dialect.identifier_preparer.quote(role)
        schema = conn.dialect.identifier_preparer.quote(conn.execute(text("SELECT current_schema()")).scalar_one())
        conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {quoted}"))
        for name in [t.name for t in Base.metadata.sorted_tables] + [_CATALOG_VERSION_TABLE]:
            conn.execute(text(f"GRANT SELECT ON {conn.dialect.identifier_preparer.quote(name)} TO {quoted}"))


def require_current_schema(settings: Settings) -> None:
    """Refuse to serve from a store whose schema is behind (or ahead of) this code's scripts."""
    behind = [s for s in schema_states(settings) if not s.up_to_date]
    if behind:
        detail = ", ".join(f"{s.store} at {s.current or 'no schema'} (this version needs {s.head})" for s in behind)
        raise ConfigurationError(f"database schema is not current: {detail}; run `enclave db upgrade` as the "
                                 "schema owner first")


def ensure_schema(settings: Settings) -> None:
    """For the query side: upgrade in place when embedded (SQLite files), otherwise only check."""
    if embedded(settings):
        if not all(s.up_to_date for s in schema_states(settings)):
            upgrade_databases(settings)
        return
    require_current_schema(settings)
