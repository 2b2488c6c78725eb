"""``enclave search``, ``ask`` and ``serve``: the query side, every search and answer audited."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, cast

import click

from rag.cli.options import parse_groups
from rag.config import load_settings

if TYPE_CHECKING:
    from rag.retrieval import Mode


@click.command()
@click.argument("question")
@click.option("--user", required=True, help="Who is asking (recorded in the audit log).")
@click.option("--groups", callback=parse_groups, default="", help="Comma-separated groups of the user.")
@click.option("--k", default=10, show_default=True)
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--purpose", default=None, help="Why (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True)
def search(question: str, user: str, groups: tuple[str, ...], k: int, mode: str, purpose: str | None,
           as_json: bool) -> None:
    """Retrieval only: the chunks USER may see that best match QUESTION (audited)."""
    from rag.query import QueryEngine

    engine = QueryEngine(load_settings())
    # "cli": the operator named the user; no identity was verified
    out = engine.search(question, user=user, groups=list(groups), k=k, mode=cast("Mode", mode), purpose=purpose,
                        via="cli")
    # per-role view (after the audit record): originals for ENCLAVE_ORIGINAL_VIEW_GROUPS, tokens otherwise
    texts = engine.render([h.text for h in out.result.hits], user=user, groups=groups, via="cli",
                          request_id=out.request_id)
    hits = [{"chunk_id": h.chunk_id, "document_id": h.document_id, "source_uri": h.source_uri,
             "score": round(h.score, 6), "text": t} for h, t in zip(out.result.hits, texts, strict=True)]
    if as_json:
        click.echo(json.dumps({"audit_id": out.audit.seq, "question_redacted": out.result.question, "hits": hits},
                              indent=2))
    else:
        for i, h in enumerate(hits, 1):
            click.echo(f"{i:>2}. [{h['score']:.4f}] {h['source_uri']} (chunk {h['chunk_id']})")
            click.echo("    " + str(h["text"])[:200].replace("\n", " "))
        click.echo(f"audit record {out.audit.seq}")
    engine.close()


@click.command()
@click.argument("question")
@click.option("--user", required=True)
@click.option("--groups", callback=parse_groups, default="")
@click.option("--k", default=5, show_default=True)
@click.option("--purpose", default=None)
@click.option("--json", "as_json", is_flag=True)
def ask(question: str, user: str, groups: tuple[str, ...], k: int, purpose: str | None, as_json: bool) -> None:
    """A cited answer from the self-hosted model, from what USER may see (audited)."""
    from rag.query import QueryEngine

    engine = QueryEngine(load_settings())
    out = engine.ask(question, user=user, groups=list(groups), k=k, purpose=purpose, via="cli")
    citations = [{"passage_id": p.passage_id, "document_id": p.document_id, "source_uri": p.source_uri,
                  "chunk_id": p.chunk_id} for p in out.answer.citations]
    [answer] = engine.render([out.answer.text], user=user, groups=groups, via="cli", request_id=out.request_id)
    if as_json:
        click.echo(json.dumps({"answer": answer, "outcome": out.answer.outcome, "citations": citations,
                               "audit_id": out.audit.seq}, indent=2))
    else:
        click.echo(answer)
        for c in citations:
            click.echo(f"  [{c['passage_id']}] {c['source_uri']} (chunk {c['chunk_id']})")
        click.echo(f"outcome {out.answer.outcome}; audit record {out.audit.seq}")
    engine.close()
    if out.answer.outcome in ("error", "timeout"):
        sys.exit(3)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True)
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Service processes sharing the port, catalog, audit chain and index files "
                   "[default: ENCLAVE_SERVICE_WORKERS].")
def serve(host: str, port: int, workers: int | None) -> None:
    """Run the HTTP query service (OpenAPI docs at /docs)."""
    import uvicorn

    from rag.schema import ensure_schema

    settings = load_settings()
    ensure_schema(settings)  # once, before any worker starts (embedded homes only; checked elsewhere)
    workers = workers or settings.service_workers
    if workers == 1:
        from rag.service.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)
        return
    # Each worker process builds its own app (and engine) from the same ENCLAVE_* environment.
    uvicorn.run("rag.service.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info", access_log=False)
