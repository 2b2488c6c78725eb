"""``enclave audit verify`` and ``export``: what a compliance officer runs against the audit log."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, cast

import click

from rag.config import load_settings

if TYPE_CHECKING:
    from rag.audit import ExportFormat


@click.group()
def audit() -> None:
    """Export and verify the tamper-evident audit log."""


@audit.command("verify")
@click.option("--export", "export_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Verify an export file on its own instead of the live log.")
def audit_verify(export_file: str | None) -> None:
    """Recompute the hash chain; exit 1 naming the first bad record."""
    from pathlib import Path

    from rag.audit import AuditLog, verify_export

    if export_file:
        report = verify_export(Path(export_file))
    else:
        log = AuditLog(load_settings().audit_database_url)
        log.migrate()
        report = log.verify()
    if report.ok:
        click.echo(f"ok: {report.records} records, head {report.head_hash}")
        return
    click.echo(f"TAMPERED: first bad record seq={report.first_bad_seq}: {report.problem}", err=True)
    sys.exit(1)


def _when(value: str | None) -> Any:
    from datetime import UTC, datetime

    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@audit.command("export")
@click.option("--since", default=None, help="ISO date/time (UTC if no zone).")
@click.option("--until", default=None)
@click.option("--user", default=None)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False))
def audit_export(since: str | None, until: str | None, user: str | None, fmt: str, out_file: str) -> None:
    """Write records (and the chain head) to a file that verifies on its own."""
    from pathlib import Path

    from rag.audit import AuditLog

    log = AuditLog(load_settings().audit_database_url)
    log.migrate()
    n = log.export(Path(out_file), since=_when(since), until=_when(until), user=user,
                   fmt=cast("ExportFormat", fmt))  # click.Choice allowed only jsonl or csv
    click.echo(f"exported {n} records to {out_file}")
