"""``enclave erase``, ``erase verify`` and ``hold``: the compliance officer's lifecycle commands.

Thin shells over :mod:`rag.lifecycle`; the operator names themself with ``--user`` (recorded in
the audit log with ``authenticated_via: cli``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from rag.config import load_settings

_USER = click.option("--user", required=True, help="Who acts (recorded in the audit log).")


def _stores() -> Any:
    from rag.lifecycle.erase import LifecycleStores

    return LifecycleStores.from_settings(load_settings())


def _write_receipt(receipt: dict[str, Any], out: str | None) -> None:
    text = json.dumps(receipt, indent=2, sort_keys=True)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
        body = receipt["receipt"]
        state = "complete" if body["complete"] else "INCOMPLETE (a probe found erased content; see probes)"
        click.echo(f"erased {len(body['documents'])} document(s), "
                   f"{body['counts']['before']['catalog_chunks']} chunk(s): {state}; receipt {out} "
                   f"(audit seq {receipt['audit']['seq']})")
    else:
        click.echo(text)
    if not receipt["receipt"]["complete"]:
        sys.exit(1)


@click.group(invoke_without_command=True)
@click.option("--document", "uri", default=None, help="The document's uri, as `enclave chunks` shows it.")
@click.option("--source", default=None, help="Only the document of this source (default: every source).")
@click.option("--subject", default=None, help="A value identifying a data subject (a name, an e-mail...).")
@click.option("--type", "entity_type", default=None, help="Only where the subject was found as this entity type.")
@click.option("--user", default=None, help="Who erases (recorded in the audit log and the receipt).")
@click.option("--receipt", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the receipt here (default: print it).")
@click.pass_context
def erase(ctx: click.Context, uri: str | None, source: str | None, subject: str | None, entity_type: str | None,
          user: str | None, out: str | None) -> None:
    """Erase a document or a data subject from every store, with a receipt sealed in the audit chain."""
    if ctx.invoked_subcommand is not None:
        return
    if (uri is None) == (subject is None):
        raise click.UsageError("name exactly one of --document URI or --subject VALUE")
    if not user:
        raise click.UsageError("--user is required: the receipt and the audit record name who erased")
    from rag.lifecycle.erase import erase_document, erase_subject

    stores = _stores()
    try:
        if uri is not None:
            receipt = erase_document(stores, uri, user=user, source=source)
        else:
            assert subject is not None
            receipt = erase_subject(stores, subject, user=user, entity_type=entity_type)
    finally:
        stores.close()
    _write_receipt(receipt, out)


@erase.command("verify")
@click.argument("receipt_file", type=click.Path(exists=True, dir_okay=False))
def erase_verify(receipt_file: str) -> None:
    """Check a receipt against the audit chain; exit 1 when it was edited or its record is not there."""
    from rag.audit import AuditLog
    from rag.lifecycle.receipts import load_receipt, verify_receipt

    receipt = load_receipt(Path(receipt_file))
    log = AuditLog(load_settings().audit_database_url)
    log.migrate()
    try:
        check = verify_receipt(receipt, log)
    finally:
        log.dispose()
    if check.ok:
        click.echo(f"ok: receipt sealed at audit seq {check.seq}, unedited, chain verifies")
        return
    click.echo(f"INVALID: {check.problem}", err=True)
    sys.exit(1)


@click.group()
def hold() -> None:
    """Place, list and release legal holds (held documents are never erased)."""


def _hold_target(uri: str | None, source: str | None) -> tuple[str, str]:
    if (uri is None) == (source is None):
        raise click.UsageError("name exactly one of --document URI or --source NAME")
    return ("document", uri) if uri is not None else ("source", source)  # type: ignore[return-value]  # one is set


@hold.command("add")
@click.option("--document", "uri", default=None)
@click.option("--source", default=None)
@click.option("--reason", required=True, help="Why (a matter, a case number): named in every refusal.")
@_USER
def hold_add(uri: str | None, source: str | None, reason: str, user: str) -> None:
    """Place a hold on a document (every source) or a whole source."""
    scope, target = _hold_target(uri, source)
    stores = _stores()
    try:
        view = stores.holds().add(scope=scope, target=target, reason=reason, user=user)
    finally:
        stores.close()
    click.echo(f"placed {view.describe()}")


@hold.command("list")
@click.option("--all", "include_released", is_flag=True, help="Include released holds.")
def hold_list(include_released: bool) -> None:
    """List active holds (and released ones with --all)."""
    stores = _stores()
    try:
        views = stores.holds().all(include_released)
    finally:
        stores.close()
    for v in views:
        released = f"  released by {v.released_by} at {v.released_at:%Y-%m-%d %H:%M}" if v.released_at else ""
        click.echo(f"#{v.id}\t{v.scope}\t{v.target}\t{v.reason}\t{v.created_by}\t{v.created_at:%Y-%m-%d %H:%M}"
                   f"{released}")
    if not views:
        click.echo("no holds")


@hold.command("release")
@click.argument("hold_id", type=int)
@click.option("--reason", default="", help="Why the hold ends (recorded in the audit log).")
@_USER
def hold_release(hold_id: int, reason: str, user: str) -> None:
    """Release a hold by its id."""
    stores = _stores()
    try:
        view = stores.holds().release(hold_id, user=user, reason=reason)
    finally:
        stores.close()
    click.echo(f"released {view.describe()}")


@click.group()
def retention() -> None:
    """Apply the retention rules (policies/retention.yaml): erase or pseudonymise what is due, skip holds."""


@retention.command("apply")
@click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Rules file (default: retention.yaml in the policies directory).")
@click.option("--as-of", "as_of", default=None, help="ISO date/time the periods are counted to (default: now).")
@click.option("--receipt", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the run's receipt here (default: print it).")
@_USER
def retention_apply(rules_file: str | None, as_of: str | None, out: str | None, user: str) -> None:
    """One retention run, with one receipt sealed in the audit chain."""
    from datetime import UTC, datetime

    from rag.lifecycle.retention import apply_retention, load_retention

    settings = load_settings()
    rules = load_retention(Path(rules_file) if rules_file else settings.policies_dir / "retention.yaml")
    now = None
    if as_of:
        parsed = datetime.fromisoformat(as_of)
        now = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    stores = _stores()
    try:
        receipt = apply_retention(stores, rules, user=user, now=now)
    finally:
        stores.close()
    body = receipt["receipt"]
    if out:
        click.echo(f"retention: erased {len(body['documents'])}, pseudonymised {len(body['pseudonymised'])}, "
                   f"skipped under hold {len(body['skipped_held'])}")
    _write_receipt(receipt, out)


@click.command()
@click.argument("token")
@click.option("--purpose", required=True, help="Why (a case, a lawful basis): recorded in the audit log.")
@click.option("--groups", "groups", required=True, help="Your groups; one must be in ENCLAVE_REVEAL_GROUPS.")
@_USER
def reveal(token: str, purpose: str, groups: str, user: str) -> None:
    """Re-identify one pseudonym (e.g. PERSON_7F3A9C21) from the vault; audited, refused without role or purpose."""
    from rag.audit import AuditLog
    from rag.catalog.store import CatalogStore
    from rag.lifecycle.vault import Vault

    settings = load_settings()
    catalog, log = CatalogStore(settings.database_url), AuditLog(settings.audit_database_url)
    catalog.migrate()
    log.migrate()
    try:
        out = Vault.from_settings(settings, catalog, log).reveal(
            token, user=user, groups=[g.strip() for g in groups.split(",") if g.strip()], purpose=purpose, via="cli")
    finally:
        catalog.dispose()
        log.dispose()
    if out.value is None:
        click.echo(f"{out.token}: not in the vault (erased, or never issued); audit seq {out.audit_seq}", err=True)
        sys.exit(1)
    click.echo(out.value)


@click.group()
def compliance() -> None:
    """Records of processing and audit evidence for a compliance officer or an auditor."""


@compliance.command("report")
@click.option("--since", default=None, help="ISO date/time (UTC if no zone): events from then.")
@click.option("--until", default=None, help="ISO date/time: events before then.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as one HTML page.")
def compliance_report(since: str | None, until: str | None, html_file: str | None) -> None:
    """Sources, policies and their hashes, entities removed, retention rules, holds, erasures and re-identifications."""
    from rag.cli.audit import _when
    from rag.lifecycle.report import compliance_report as build
    from rag.lifecycle.report import render_html

    stores = _stores()
    try:
        report = build(stores, load_settings().policies_dir, since=_when(since), until=_when(until))
    finally:
        stores.close()
    if html_file:
        Path(html_file).write_text(render_html(report), encoding="utf-8")
    click.echo(json.dumps(report, indent=2, sort_keys=True))
