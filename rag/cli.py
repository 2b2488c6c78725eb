"""The ``enclave`` command: ingest, status, and (with the query service) search, ask, serve, audit, eval.

``ingest`` runs the very Dagster job that ``dagster dev`` shows, in process (one code path, many
doors); it imports the code location lazily, so the library itself never depends on Dagster.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from rag.config import load_settings
from rag.errors import EnclaveError


def _echo_counts(title: str, counts: dict[str, Any]) -> None:
    click.echo(title)
    for key, value in counts.items():
        if isinstance(value, dict):
            click.echo(f"  {key}:")
            if not value:
                click.echo("    (none)")
            for k, v in sorted(value.items()):
                click.echo(f"    {k:<22} {v}")
        else:
            click.echo(f"  {key:<24} {value}")


@click.group()
def main() -> None:
    """Enclave: RAG over your own documents, on your own hardware."""


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--source", "source_name", default="", help="Catalog name of the source (default: directory name).")
@click.option("--policy", default="", help="Redaction policy name (policies/NAME.yaml) or file.")
@click.option("--groups", default="", help="Comma-separated groups for documents without an .access.json.")
@click.option("--public", is_flag=True, help="Documents without an .access.json are public.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def ingest(path: str, source_name: str, policy: str, groups: str, public: bool, progress: bool) -> None:
    """Ingest the documents under PATH: parse, redact, embed, index (incremental)."""
    if public and groups:
        raise click.UsageError("give --groups or --public, not both")
    from pipelines.run import run_ingest

    outcome = run_ingest(path, source_name=source_name, policy=policy,
                         groups=[g.strip() for g in groups.split(",") if g.strip()], public=public,
                         progress=progress and sys.stderr.isatty())
    c = outcome.counts
    summary = {
        "new": c.get("new", 0), "changed": c.get("changed", 0), "unchanged": c.get("unchanged", 0),
        "deleted": c.get("deleted", 0), "quarantined": c.get("quarantined", 0),
        "access_changed": c.get("access_changed", 0), "chunks_written": c.get("chunks_written", 0),
        "chunks_embedded": c.get("chunks_embedded", 0),
        "pii_removed_by_type": c.get("entities_removed", {}),
        "quarantine_by_reason": c.get("quarantine_by_reason", {}),
    }
    _echo_counts(f"ingestion run {outcome.dagster_run_id}: {'completed' if outcome.success else 'FAILED'}", summary)
    if not outcome.success:
        click.echo(f"error: {outcome.failure}", err=True)
        sys.exit(2)


@main.command()
@click.option("--quarantine", is_flag=True, help="List quarantined files with their reasons.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(quarantine: bool, as_json: bool) -> None:
    """What the catalog holds: documents, chunks, quarantine, PII removed by type."""
    from rag.catalog.store import CatalogStore

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
    data = {"documents": counts.documents, "chunks": counts.chunks, "embedded_chunks": counts.embedded_chunks,
            "quarantined": counts.quarantined, "quarantine_by_reason": counts.quarantine_by_reason,
            "pii_removed_by_type": counts.entities_removed,
            "last_run": latest.status if latest else "none"}
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _echo_counts(f"catalog {settings.database_url.split('@')[-1]}", data)


@main.command()
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
            click.echo(f"--- chunk {chunk.id} of {doc_uri} (v{chunk.document_version}) access={json.dumps(chunk.access)}"
                       f" policy={chunk.policy_name} removed={json.dumps(chunk.entity_counts)}")
            click.echo(chunk.text)


def _groups(groups: str) -> list[str]:
    return [g.strip() for g in groups.split(",") if g.strip()]


@main.command()
@click.argument("question")
@click.option("--user", required=True, help="Who is asking (recorded in the audit log).")
@click.option("--groups", default="", help="Comma-separated groups of the user.")
@click.option("--k", default=10, show_default=True)
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--purpose", default=None, help="Why (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True)
def search(question: str, user: str, groups: str, k: int, mode: str, purpose: str | None, as_json: bool) -> None:
    """Retrieval only: the chunks USER may see that best match QUESTION (audited)."""
    from rag.query import QueryEngine

    engine = QueryEngine(load_settings())
    out = engine.search(question, user=user, groups=_groups(groups), k=k, mode=mode, purpose=purpose)  # type: ignore[arg-type]
    hits = [{"chunk_id": h.chunk_id, "document_id": h.document_id, "source_uri": h.source_uri,
             "score": round(h.score, 6), "text": h.text} for h in out.result.hits]
    if as_json:
        click.echo(json.dumps({"audit_id": out.audit.seq, "question_redacted": out.result.question, "hits": hits},
                              indent=2))
    else:
        for i, h in enumerate(hits, 1):
            click.echo(f"{i:>2}. [{h['score']:.4f}] {h['source_uri']} (chunk {h['chunk_id']})")
            click.echo("    " + str(h["text"])[:200].replace("\n", " "))
        click.echo(f"audit record {out.audit.seq}")
    engine.close()


@main.command()
@click.argument("question")
@click.option("--user", required=True)
@click.option("--groups", default="")
@click.option("--k", default=5, show_default=True)
@click.option("--purpose", default=None)
@click.option("--json", "as_json", is_flag=True)
def ask(question: str, user: str, groups: str, k: int, purpose: str | None, as_json: bool) -> None:
    """A cited answer from the self-hosted model, from what USER may see (audited)."""
    from rag.query import QueryEngine

    engine = QueryEngine(load_settings())
    out = engine.ask(question, user=user, groups=_groups(groups), k=k, purpose=purpose)
    citations = [{"passage_id": p.passage_id, "document_id": p.document_id, "source_uri": p.source_uri,
                  "chunk_id": p.chunk_id} for p in out.answer.citations]
    if as_json:
        click.echo(json.dumps({"answer": out.answer.text, "outcome": out.answer.outcome, "citations": citations,
                               "audit_id": out.audit.seq}, indent=2))
    else:
        click.echo(out.answer.text)
        for c in citations:
            click.echo(f"  [{c['passage_id']}] {c['source_uri']} (chunk {c['chunk_id']})")
        click.echo(f"outcome {out.answer.outcome}; audit record {out.audit.seq}")
    engine.close()
    if out.answer.outcome in ("error", "timeout"):
        sys.exit(3)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
def serve(host: str, port: int) -> None:
    """Run the HTTP query service (OpenAPI docs at /docs)."""
    import uvicorn

    from rag.service.app import create_app

    uvicorn.run(create_app(load_settings()), host=host, port=port, log_level="info")


@main.group()
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
    n = log.export(Path(out_file), since=_when(since), until=_when(until), user=user, fmt=fmt)  # type: ignore[arg-type]
    click.echo(f"exported {n} records to {out_file}")



@main.group("eval")
def eval_group() -> None:
    """Measure retrieval quality, PII leakage and access leaks on your own golden sets.

    Each command prints a summary, or its full report as JSON with --json, and writes a
    self-contained HTML page with plots with --html FILE.
    """


def _report_out(data: dict[str, Any], as_json: bool, html_file: str | None, title: str,
                sections: Callable[[], list[Any]]) -> bool:
    """Write the HTML page when asked; print the JSON report when asked. True when the summary is still to print."""
    if html_file:
        from pathlib import Path

        from rag.eval.report import write_html

        write_html(Path(html_file), title, sections())
    if as_json:
        click.echo(json.dumps(data, indent=2))
    return not as_json


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@eval_group.command("retrieval")
@click.option("--topics", "topics_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="TREC <top>, <DOC><DOCNO> (CACM), id<TAB>query or JSONL topics.")
@click.option("--qrels", "qrels_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="TREC qrels naming documents by file stem or by path in the source.")
@click.option("--k", default=1000, show_default=True, help="Documents retrieved per topic.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["dense", "bm25", "hybrid"]),
              help="Repeat for several; all three by default.")
@click.option("--user", default="evaluation", show_default=True, help="Who searches (recorded in the audit log).")
@click.option("--groups", default="", help="Comma-separated groups of that user.")
@click.option("--run-out", default=None, type=click.Path(dir_okay=False),
              help="TREC run file (FILE.MODE for each mode when there are several).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False), help="Write an HTML report.")
def eval_retrieval(topics_file: str, qrels_file: str, k: int, modes: tuple[str, ...], user: str, groups: str,
                   run_out: str | None, as_json: bool, html_file: str | None) -> None:
    """MAP, P@10, P@30, nDCG@10, recall@100 per mode over the ingested corpus (searches are audited)."""
    from pathlib import Path

    from rag.eval import retrieval as ev
    from rag.eval.report import Section
    from rag.eval.topics import read_qrels, read_topics
    from rag.query import QueryEngine

    topics, qrels = read_topics(Path(topics_file)), read_qrels(Path(qrels_file))
    engine = QueryEngine(load_settings())
    try:
        reports = ev.evaluate_modes(engine, topics, qrels, modes or ("dense", "bm25", "hybrid"),  # type: ignore[arg-type]
                                    k, user, _groups(groups))
    finally:
        engine.close()
    data = ev.to_json(reports, topics, qrels, k)
    run_files = []
    if run_out:
        for r in reports:
            path = Path(run_out if len(reports) == 1 else f"{run_out}.{r.mode}")
            path.write_text("\n".join(ev.trec_run_lines(r)) + "\n", encoding="utf-8")
            run_files.append(str(path))
        data["run_files"] = run_files

    def sections() -> list[Section]:
        per_topic = [{"topic": q, "mode": r.mode, **m} for r in reports for q, m in sorted(r.per_topic.items())]
        return [Section("Aggregate", rows=[{"mode": r.mode, **r.aggregate} for r in reports],
                        bars={r.mode: r.aggregate for r in reports},
                        note=f"{data['judged_topics']} judged topics of {len(topics)}; {k} documents per topic."),
                Section("Per topic", rows=per_topic)]

    if not _report_out(data, as_json, html_file, "Retrieval evaluation", sections):
        return
    click.echo(f"{len(topics)} topics, {data['judged_topics']} with relevant documents")
    if data["judged_topics_without_query"]:
        click.echo(f"{len(data['judged_topics_without_query'])} judged topics have no query in {topics_file}")
    click.echo(f"{'mode':<8}" + "".join(f"{m:>12}" for m in ev.MEASURES))
    for r in reports:
        click.echo(f"{r.mode:<8}" + "".join(f"{r.aggregate[m]:>12.4f}" for m in ev.MEASURES))
    for f in run_files:
        click.echo(f"run written to {f}")


@eval_group.command("pii")
@click.option("--docs", "docs_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Directory holding the labelled documents.")
@click.option("--labels", "labels_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help='JSONL: {"file": ..., "entities": [{"type": ..., "value": ...}]} per document.')
@click.option("--policy", default="", help="Redaction policy name or file (default: ENCLAVE_POLICY).")
@click.option("--must", "must_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="JSON list of entity types that must not survive (default: the policy's types).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report (with leaked values) as JSON.")
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False), help="Write an HTML report.")
def eval_pii(docs_dir: str, labels_file: str, policy: str, must_file: str | None, as_json: bool,
             html_file: str | None) -> None:
    """Redact labelled documents exactly as ingestion would (nothing is stored) and count what survives."""
    from pathlib import Path

    from rag.eval.pii import evaluate_pii_files, read_labels, read_must
    from rag.eval.report import Section

    settings = load_settings()
    must = read_must(Path(must_file)) if must_file else None
    data = evaluate_pii_files(Path(docs_dir), read_labels(Path(labels_file)), settings, policy or settings.policy,
                              settings.tenant_key.get_secret_value().encode(), must, must_file or "policy").to_json()
    types, overall = data["types"], data["overall"]

    def sections() -> list[Section]:
        rows = [{"entity": t, **row} for t, row in types.items()]
        recall = {t: row["recall"] for t, row in types.items() if row["must_redact"] and row["recall"] is not None}
        return [Section("Recall of must-redact types", rows=rows, bars={data["policy"]: recall},
                        note=(f"Policy {data['policy']}, {data['documents']} documents, {data['chunks']} chunks. "
                              f"Overall recall {_rate(overall['recall'])}, precision {_rate(overall['precision'])} "
                              f"({overall['removed_spans']} spans removed).")),
                Section("Removed spans by type", rows=[{"entity": t, "removed": n}
                                                       for t, n in overall["removed_by_type"].items()],
                        bars={"removed": {t: float(n) for t, n in overall["removed_by_type"].items()}}),
                Section("Quarantined (nothing stored)", rows=[{"file": f, "reason": r}
                                                              for f, r in data["quarantined"].items()])]

    if not _report_out(data, as_json, html_file, "PII evaluation", sections):
        return
    click.echo(f"policy {data['policy']}: {data['documents']} documents, {data['chunks']} chunks; "
               f"must-redact types from {data['must_redact_from']}")
    click.echo(f"{'entity':<22}{'labelled':>9}{'leaked':>8}{'recall':>8}")
    for t, row in types.items():
        if row["must_redact"]:
            click.echo(f"{t:<22}{row['labelled']:>9}{row['leaked']:>8}{_rate(row['recall']):>8}")
    click.echo(f"overall recall {_rate(overall['recall'])} ({overall['leaked']} of {overall['labelled']} values leak), "
               f"precision {_rate(overall['precision'])} ({overall['removed_spans']} spans removed)")
    uncovered = [t for t, row in types.items() if not row["must_redact"] and not row["in_policy"] and row["leaked"]]
    if uncovered:
        click.echo("labelled types the policy does not list (values surviving): "
                   + ", ".join(f"{t} ({types[t]['leaked']}/{types[t]['labelled']})" for t in uncovered))
    for f, reason in data["quarantined"].items():
        click.echo(f"quarantined, nothing stored: {f} ({reason})")
    if data["missing"]:
        click.echo(f"{len(data['missing'])} labelled files not found under {docs_dir}")
    if data["leaked_values"]:
        click.echo("leaked values are listed only in the --json report")


@eval_group.command("access")
@click.option("--docs", "docs_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The ingested directory: its .access.json files are the oracle.")
@click.option("--source", "source_name", default="", help="Catalog name of that source (default: directory name).")
@click.option("--probes", "probes_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help='JSONL: {"user": ..., "groups": [...], "question": ...} per probe.')
@click.option("--default-groups", default="", help="The --groups ingestion was given, for files without a rule.")
@click.option("--default-public", is_flag=True, help="Ingestion was given --public, for files without a rule.")
@click.option("--no-ask", is_flag=True, help="Check search hits only (no model calls).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--html", "html_file", default=None, type=click.Path(dir_okay=False), help="Write an HTML report.")
def eval_access(docs_dir: str, source_name: str, probes_file: str, default_groups: str, default_public: bool,
                no_ask: bool, as_json: bool, html_file: str | None) -> None:
    """Probe (user, groups, question) against the ingested DOCS; leaks must be 0 (exit 1 otherwise)."""
    from pathlib import Path

    from connectors.base import AccessRule
    from rag.eval.access import check_access, read_probes, source_documents, source_rules
    from rag.eval.report import Section
    from rag.query import QueryEngine

    if default_public and default_groups:
        raise click.UsageError("give --default-groups or --default-public, not both")
    default = (AccessRule(public=True) if default_public
               else AccessRule(groups=frozenset(_groups(default_groups))) if default_groups else None)
    probes, rules = read_probes(Path(probes_file)), source_rules(Path(docs_dir), default)
    engine = QueryEngine(load_settings())
    try:
        documents = source_documents(engine.catalog, source_name or Path(docs_dir).resolve().name)
        report = check_access(engine, probes, rules, documents, ask=not no_ask)
    finally:
        engine.close()
    data = report.to_json()

    def sections() -> list[Section]:
        kinds = {"search hit": data["hits_checked"], "prompt passage": data["prompt_passages_checked"],
                 "citation": data["citations_checked"]}
        leaks = {k: float(sum(1 for x in data["leak_details"] if x["where"] == k)) for k in kinds}
        return [Section("Checked and leaked", rows=[{"kind": k, "checked": n, "leaks": int(leaks[k])}
                                                    for k, n in kinds.items()],
                        bars={"checked": {k: float(n) for k, n in kinds.items()}, "leaks": leaks},
                        note=f"{data['probes']} probes; {data['leaks']} leaks (must be 0); "
                             f"{data['not_judged_other_sources']} items from other sources not judged."),
                Section("Leaks", rows=data["leak_details"])]

    if _report_out(data, as_json, html_file, "Access evaluation", sections):
        checked = ("search only (--no-ask)" if no_ask else f"{data['prompt_passages_checked']} prompt passages, "
                                                            f"{data['citations_checked']} citations")
        click.echo(f"{data['probes']} probes, {data['hits_checked']} hits, {checked} checked: {data['leaks']} leaks")
        if data["not_judged_other_sources"]:
            click.echo(f"{data['not_judged_other_sources']} items from other sources of the catalog not judged")
        for leak in data["leak_details"]:
            click.echo(f"  LEAK probe {leak['probe']} ({leak['user']}): {leak['where']} from {leak['uri']} "
                       f"({leak['why']})")
    if data["leaks"]:
        sys.exit(1)


def run() -> None:
    try:
        main(standalone_mode=True)
    except EnclaveError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
