"""Database engines and schema upgrades shared by the catalog and the audit log.

Both stores run on SQLite (one file in ``ENCLAVE_HOME``) or PostgreSQL with the same code. On
SQLite every connection uses WAL (readers never wait for the writer), ``synchronous=FULL`` (a
committed write survives a power cut) and enforced foreign keys, and transactions are begun by
SQLAlchemy, not the driver (SQLAlchemy's pysqlite recipe), so a writer can ask for
``BEGIN IMMEDIATE`` through the :data:`SQLITE_BEGIN` execution option and take the write lock
before it reads. Each store keeps its own Alembic scripts and version table;
:func:`upgrade_schema` runs them on a connection, and :func:`run_migrations` is what both
``env.py`` files call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, Engine, MetaData, create_engine, engine_from_config, event, pool
from sqlalchemy.engine import make_url

# Execution option naming the SQLite BEGIN mode of a connection's transactions (default DEFERRED).
SQLITE_BEGIN = "enclave_sqlite_begin"

IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]


def make_engine(url: str) -> Engine:
    """An engine for ``url``; on SQLite set up for durability, concurrent readers and explicit BEGIN."""
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def upgrade_schema(connection: Connection, script_location: Path, url: str) -> None:
    """Bring one store's schema to its newest Alembic revision, inside ``connection``'s transaction."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def run_migrations(target_metadata: MetaData, *, version_table: str = "alembic_version",
                   include_object: IncludeObject | None = None, render_as_batch: bool = False) -> None:
    """The body of a store's Alembic ``env.py``: on the connection :func:`upgrade_schema` passed, or a new one."""
    config = context.config
    options: dict[str, Any] = {"target_metadata": target_metadata, "version_table": version_table,
                               "render_as_batch": render_as_batch}
    if include_object is not None:
        options["include_object"] = include_object
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
