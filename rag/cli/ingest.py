"""``enclave ingest``, ``status`` and ``chunks``: put documents in, and see what the catalog holds.

``ingest`` takes a directory or sources declared in the sources file (``--source NAME``,
``--all-sources``), and runs the very Dagster job that ``dagster dev`` shows, in process (one code path, many
doors). It finds the job through the ``enclave.orchestrators`` entry point
(:func:`rag.ingest.ingest_runner`), so the library never imports the code location.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

import click

from rag.cli.display import echo_counts
from rag.cli.options import parse_groups
from rag.config import load_settings

if TYPE_CHECKING:
    from rag.ingest import IngestOutcome


@click.command()
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--source", "source_name", default="",
              help="With PATH: catalog name of the source (default: directory name). Without PATH: the source "
                   "of that name in the sources file (ENCLAVE_SOURCES_FILE).")
@click.option("--all-sources", is_flag=True, help="Ingest every source of the sources file, one run each.")
@click.option("--policy", default="", help="Redaction policy name (policies/NAME.yaml) or file.")
@click.option("--groups", callback=parse_groups, default="",
              help="Comma-separated groups for documents without an .access.json.")
@click.option("--public", is_flag=True, help="Documents without an .access.json are public.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def ingest(path: str | None, source_name: str, all_sources: bool, policy: str, groups: tuple[str, ...],
           public: bool, progress: bool) -> None:
    """Ingest the documents under PATH, or declared sources: parse, redact, embed, index (incremental).

    With several sources, each runs on its own: one that fails is reported with its reason and the
    others still run; the exit status is 2 when any failed.
    """
    if public and groups:
        raise click.UsageError("give --groups or --public, not both")
    from rag.ingest import ingest_runner

    runner = ingest_runner()
    show = progress and sys.stderr.isatty()
    if path is not None:
        if all_sources:
            raise click.UsageError("give PATH or --all-sources, not both")
        outcomes = [(source_name, runner(path, source_name=source_name, policy=policy, groups=list(groups),
                                         public=public, progress=show))]
    else:
        if not (source_name or all_sources) or (source_name and all_sources):
            raise click.UsageError("give PATH, --source NAME (a declared source) or --all-sources")
        if groups or public:
            raise click.UsageError("a declared source's default access is in the sources file, not --groups/--public")
        names = _declared_names(source_name)
        outcomes = [(name, runner(declared=name, policy=policy, progress=show)) for name in names]
    for name, outcome in outcomes:
        _echo_outcome(name, outcome)
    failed = [name or "-" for name, outcome in outcomes if not outcome.success]
    if len(outcomes) > 1:
        click.echo(f"{len(outcomes) - len(failed)} of {len(outcomes)} sources completed"
                   + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(2)


def _declared_names(source_name: str) -> list[str]:
    """The declared sources to ingest; the sources file is validated whole before any run starts."""
    from rag.errors import SourcesInvalidError
    from rag.sources import declared_sources

    try:
        declared = declared_sources(load_settings(), os.environ)
        if source_name:
            declared.get(source_name)
    except SourcesInvalidError as exc:
        raise click.ClickException(str(exc)) from None
    return [source_name] if source_name else declared.names


def _echo_outcome(name: str, outcome: IngestOutcome) -> None:
    c = outcome.counts
    summary = {
        "new": c.new, "changed": c.changed, "unchanged": c.unchanged, "deleted": c.deleted,
        "quarantined": c.quarantined, "access_changed": c.access_changed, "chunks_written": c.chunks_written,
        "chunks_embedded": c.chunks_embedded, "pii_removed_by_type": dict(c.entities_removed),
        "quarantine_by_reason": dict(c.quarantine_by_reason),
    }
    label = f"source {name}, " if name else ""
    echo_counts(f"{label}ingestion run {outcome.dagster_run_id}: {'completed' if outcome.success else 'FAILED'}",
                summary)
    if not outcome.success:
        click.echo(f"error{f' ({name})' if name else ''}: {outcome.failure}", err=True)


@click.command()
@click.option("--quarantine", is_flag=True, help="List quarantined files with their reasons.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(quarantine: bool, as_json: bool) -> None:
    """What the catalog holds: documents, chunks, quarantine, PII removed by type; the faiss build in use."""
    from rag.catalog.store import CatalogStore
    from rag.errors import ConfigurationError
    from rag.index import faiss_build

    settings = load_settings()
    catalog = CatalogStore(settings.database_url)
    catalog.migrate()
    if quarantine:
        rows = [{"uri": q.uri, "reason": q.reason, "detail": q.detail, "sha256": q.sha256, "size": q.size}
                for q in catalog.quarantine_list()]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            for r in rows:
                click.echo(f"{r['reason']:<20} {r['uri']}  ({r['detail']})")
            click.echo(f"{len(rows)} quarantined")
        return
    counts = catalog.counts()
    latest = catalog.latest_run()
    data: dict[str, object] = {
        "documents": counts.documents, "chunks": counts.chunks, "embedded_chunks": counts.embedded_chunks,
        "quarantined": counts.quarantined, "quarantine_by_reason": counts.quarantine_by_reason,
        "pii_removed_by_type": counts.entities_removed}
    try:
        data["index_backend"] = faiss_build().describe()
    except ConfigurationError as exc:
        data["index_backend"] = f"unavailable: {exc}"
    data["last_run"] = latest.status if latest else "none"
    if latest is not None:
        data["last_run_seconds"] = latest.seconds
        if latest.failure:
            data["last_run_failure"] = latest.failure
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        echo_counts(f"catalog {settings.database_url.split('@')[-1]}", data)


@click.command()
@click.option("--limit", default=5, show_default=True, help="How many chunks to show.")
@click.option("--uri", default="", help="Only chunks of documents whose uri contains this.")
def chunks(limit: int, uri: str) -> None:
    """Show stored chunks as they were indexed: redacted text, access rule, policy."""
    from sqlalchemy import select

    from rag.catalog.models import Chunk, Document
    from rag.catalog.store import CatalogStore

    settings = load_settings()
    catalog = CatalogStore(settings.database_url)
    catalog.migrate()
    with catalog.session() as s:
        q = select(Chunk, Document.uri).join(Document).order_by(Chunk.id).limit(limit)
        if uri:
            q = q.where(Document.uri.contains(uri))
        for chunk, doc_uri in s.execute(q):
            click.echo(f"--- chunk {chunk.id} of {doc_uri} (v{chunk.document_version})"
                       f" access={json.dumps(chunk.access)} policy={chunk.policy_name}"
                       f" removed={json.dumps(chunk.entity_counts)}")
            click.echo(chunk.text)
