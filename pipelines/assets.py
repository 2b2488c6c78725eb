"""Ingestion assets: source_manifest → redacted_chunks → chunk_embeddings → vector_index.

Assets keep their data in the catalog and the index directory, never in Dagster's IO managers
(they return MaterializeResult), and their metadata carries counts, hashes and model ids only,
never document text. Parsing, chunking and redaction of a document happen in one step inside
redacted_chunks, in worker processes, so unredacted text is never written anywhere.
"""


import sys
from typing import Any

import dagster as dg
from tqdm import tqdm

from connectors.base import AccessRule, SourceDocument
from pipelines.config import IngestConfig
from pipelines.resources import EnclaveResource
from rag.catalog.store import CatalogStore
from rag.ingest import (
    Manifest,
    apply_manifest,
    embed_chunks,
    pipeline_version,
    redact_documents,
    scan_source,
    sync_index,
)
from rag.policy import Policy, load_policy, resolve_policy_path


def _policy(config: IngestConfig, enclave: EnclaveResource) -> Policy:
    return load_policy(config.policy or enclave.settings.policy, enclave.settings.policies_dir)


def _manifest_json(m: Manifest) -> dict[str, Any]:
    return {"source_id": m.source_id, "counts": m.counts(), "deleted": list(m.deleted),
            "to_process": [{"uri": d.uri, "sha256": d.sha256, "size": d.size, "name": d.name,
                            "access": d.access.to_json() if d.access else None} for d in m.to_process]}


def _manifest_from_run(catalog: CatalogStore, run_id: str) -> tuple[int, Manifest]:
    run = catalog.run_for_dagster(run_id)
    if run is None:
        raise dg.Failure(f"no ingestion run recorded for Dagster run {run_id}; materialize source_manifest first")
    data = run.manifest
    docs = tuple(SourceDocument(uri=d["uri"], sha256=d["sha256"], size=d["size"], name=d["name"],
                                access=AccessRule.from_json(d["access"]) if d["access"] else None)
                 for d in data["to_process"])
    c = data["counts"]
    return run.id, Manifest(data["source_id"], docs, c["new"], c["changed"], c["unchanged"],
                            tuple(data["deleted"]), c["still_quarantined"])


@dg.asset(group_name="ingestion", kinds={"python"})
def source_manifest(context: dg.AssetExecutionContext, config: IngestConfig,
                    enclave: EnclaveResource) -> dg.MaterializeResult:
    """What the source holds now against the catalog; deletions and access changes are applied here."""
    catalog = enclave.catalog()
    policy = _policy(config, enclave)
    connector = config.connector()
    source_id = catalog.ensure_source(connector.name, config.kind, config.path)
    version = pipeline_version(enclave.parse_limits())
    manifest = scan_source(connector, catalog, source_id, policy, version)
    apply_manifest(manifest, catalog)
    run_id = catalog.start_run(source_id, policy.name, policy.content_hash, context.run_id)
    with catalog.session() as s, s.begin():
        from rag.catalog.models import IngestionRun

        run = s.get(IngestionRun, run_id)
        assert run is not None
        run.manifest = _manifest_json(manifest)
        run.counts = manifest.counts()
    return dg.MaterializeResult(metadata={
        "source": connector.name, **{k: dg.MetadataValue.int(v) for k, v in manifest.counts().items()},
        "policy": policy.name, "policy_hash": policy.content_hash, "pipeline_version": version,
    })


@dg.asset(group_name="ingestion", deps=[source_manifest], kinds={"python"})
def redacted_chunks(context: dg.AssetExecutionContext, config: IngestConfig,
                    enclave: EnclaveResource) -> dg.MaterializeResult:
    """Parse, chunk and redact new and changed documents; quarantine what cannot be ingested."""
    catalog = enclave.catalog()
    settings = enclave.settings
    policy = _policy(config, enclave)
    run_id, manifest = _manifest_from_run(catalog, context.run_id)
    bar = tqdm(total=len(manifest.to_process), desc="redact", unit="doc", file=sys.stderr,
               disable=not enclave.show_progress)
    stats = redact_documents(
        manifest, config.connector(), catalog, policy, enclave.parse_limits(),
        pipeline_version(enclave.parse_limits()), workers=settings.parse_workers,
        timeout_s=settings.parse_timeout_s, memory_mb=settings.parse_memory_mb,
        policies_dir=settings.policies_dir, tenant_key=settings.tenant_key.get_secret_value().encode(),
        run_id=run_id, on_progress=bar.update, recheck_fraction=settings.pii_recheck_fraction,
        policy_ref=config.policy or settings.policy)
    bar.close()
    counts = {"documents_written": stats.stored, "quarantined": stats.quarantined,
              "chunks_written": stats.chunks_written,
              "quarantine_by_reason": dict(stats.quarantine_by_reason),
              "entities_removed": dict(stats.entities_removed), "bytes_in": stats.bytes_in,
              "redact_seconds": round(stats.seconds, 3)}
    catalog.update_run(run_id, counts)
    context.log.info(f"documents written {stats.stored}, quarantined {stats.quarantined}")
    return dg.MaterializeResult(metadata={
        "documents_written": stats.stored, "quarantined": stats.quarantined, "chunks_written": stats.chunks_written,
        "quarantine_by_reason": dg.MetadataValue.json(dict(stats.quarantine_by_reason)),
        "entities_removed": dg.MetadataValue.json(dict(stats.entities_removed)),
        "policy": policy.name, "policy_hash": policy.content_hash, "seconds": round(stats.seconds, 3),
        # the file the workers loaded, so that no_residual_pii checks with the same one
        "policy_file": str(resolve_policy_path(config.policy or settings.policy, settings.policies_dir).resolve()),
    })


@dg.asset(group_name="ingestion", deps=[redacted_chunks], kinds={"python"})
def chunk_embeddings(context: dg.AssetExecutionContext, enclave: EnclaveResource) -> dg.MaterializeResult:
    """Embed every chunk that has no vector from the current model."""
    catalog = enclave.catalog()
    embedder = enclave.embedder()
    pending = catalog.count_chunks_needing_embedding(embedder.model_id)
    bar = tqdm(total=pending, desc="embed", unit="chunk", file=sys.stderr, disable=not enclave.show_progress)
    stats = embed_chunks(catalog, embedder, on_progress=bar.update)
    bar.close()
    run = catalog.run_for_dagster(context.run_id)
    if run is not None:
        catalog.update_run(run.id, {"chunks_embedded": stats.embedded, "embed_seconds": round(stats.seconds, 3)})
    return dg.MaterializeResult(metadata={
        "chunks_embedded": stats.embedded, "embedding_model": embedder.model_id,
        "weights_sha256": embedder.weights_sha256, "precision": embedder.precision, "seconds": round(stats.seconds, 3)})


@dg.asset(group_name="ingestion", deps=[chunk_embeddings], kinds={"faiss"})
def vector_index(context: dg.AssetExecutionContext, enclave: EnclaveResource) -> dg.MaterializeResult:
    """Make the FAISS and BM25 indexes hold exactly the catalog's live chunks; saved atomically."""
    catalog = enclave.catalog()
    index = enclave.index()
    report = sync_index(catalog, index, enclave.lexical())
    run = catalog.run_for_dagster(context.run_id)
    if run is not None:
        catalog.update_run(run.id, {"index": report}, status="completed")
    return dg.MaterializeResult(metadata={
        **{k: v for k, v in report.items() if isinstance(v, int | float | str | bool)},
        "index_version": index.version, "embedding_model": index.model_id})
