"""``enclave db upgrade`` and ``db status``: schema migrations as their own deployment step.

Run ``upgrade`` as the schema owner (the database URLs name the owner) before starting or after
updating the service; the service itself connects as the app role and only checks the revision.
"""

from __future__ import annotations

import sys

import click

from rag.config import load_settings


@click.group("db")
def db() -> None:
    """Create or upgrade the catalog and audit schemas (run as the schema owner)."""


@db.command("upgrade")
@click.option("--app-role", default=None,
              help="PostgreSQL role the service connects as (default ENCLAVE_AUDIT_APP_ROLE): it gets SELECT on "
                   "the catalog, SELECT and INSERT on the audit records, nothing more.")
def db_upgrade(app_role: str | None) -> None:
    """Bring the catalog and the audit log to the newest schema revision."""
    from rag.schema import upgrade_databases

    for state in upgrade_databases(load_settings(), app_role=app_role):
        click.echo(f"{state.store}: at {state.current}")


@db.command("status")
def db_status() -> None:
    """Show each store's schema revision; exit 1 when one is behind."""
    from rag.schema import schema_states

    states = schema_states(load_settings())
    for s in states:
        click.echo(f"{s.store}: at {s.current or 'no schema'}, this version needs {s.head}"
                   + ("" if s.up_to_date else " (run `enclave db upgrade`)"))
    if not all(s.up_to_date for s in states):
        sys.exit(1)
