"""Ingestion assets: source_manifest → redacted_chunks → chunk_embeddings → vector_index.

Each asset calls one step of :mod:`rag.ingest` and reports its counts. Assets keep their data in
the catalog and the index directory, never in Dagster's IO managers (they return
MaterializeResult), and their metadata carries counts, hashes and model ids only, never document
text. Parsing, chunking and redaction of a document happen in one step inside redacted_chunks,
in worker processes, so unredacted text is never written anywhere.
"""

import sys
from dataclasses import asdict

import dagster as dg
from tqdm import tqdm

from pipelines.config import IngestConfig
from pipelines.resources import EnclaveResource
from rag.ingest import embed_run, plan_run, planned_run, publish_run, redact_run, start_run


@dg.asset(group_name="ingestion", kinds={"python"})
def source_manifest(context: dg.AssetExecutionContext, config: IngestConfig,
                    enclave: EnclaveResource) -> dg.MaterializeResult[None]:
    """What the source holds now against the catalog; deletions and access changes are applied here."""
    components = enclave.components
    source = config.source(enclave.settings)
    connector = source.connector
    run_id = start_run(connector, source.kind, source.location, components.catalog, components.policy(source.policy),
                       components.version, dagster_run_id=context.run_id)
    planned = plan_run(run_id, connector, components.catalog, enclave.settings.policies_dir)
    counts = planned.manifest.counts()
    return dg.MaterializeResult(metadata={
        "source": connector.name,
        **{k: dg.MetadataValue.int(getattr(counts, k))
           for k in ("new", "changed", "unchanged", "deleted", "still_quarantined", "access_changed")},
        "policy": planned.policy.name, "policy_hash": planned.policy.content_hash,
        "pipeline_version": planned.version,
    })


@dg.asset(group_name="ingestion", deps=[source_manifest], kinds={"python"})
def redacted_chunks(context: dg.AssetExecutionContext, config: IngestConfig,
                    enclave: EnclaveResource) -> dg.MaterializeResult[None]:
    """Parse, chunk and redact new and changed documents; quarantine what cannot be ingested."""
    components = enclave.components
    planned = planned_run(components.catalog, context.run_id)
    bar = tqdm(total=len(planned.manifest.to_process), desc="redact", unit="doc", file=sys.stderr,
               disable=not enclave.show_progress)
    stats = redact_run(planned, config.source(enclave.settings).connector, components.catalog,
                       components.redaction, on_progress=bar.update)
    bar.close()
    context.log.info(f"documents written {stats.stored}, quarantined {stats.quarantined}")
    return dg.MaterializeResult(metadata={
        "documents_written": stats.stored, "quarantined": stats.quarantined, "chunks_written": stats.chunks_written,
        "quarantine_by_reason": dg.MetadataValue.json(dict(stats.quarantine_by_reason)),
        "entities_removed": dg.MetadataValue.json(dict(stats.entities_removed)),
        "policy": planned.policy.name, "policy_hash": planned.policy.content_hash,
        "seconds": round(stats.seconds, 3), "policy_file": planned.policy.file,
    })


@dg.asset(group_name="ingestion", deps=[redacted_chunks], kinds={"python"})
def chunk_embeddings(context: dg.AssetExecutionContext, enclave: EnclaveResource) -> dg.MaterializeResult[None]:
    """Embed every chunk that has no vector from the current model."""
    components = enclave.components
    catalog, embedder = components.catalog, components.embedder
    run = catalog.run_for_dagster(context.run_id)
    bar = tqdm(total=catalog.count_chunks_needing_embedding(embedder.model_id), desc="embed", unit="chunk",
               file=sys.stderr, disable=not enclave.show_progress)
    stats = embed_run(catalog, embedder, run.id if run is not None else None, on_progress=bar.update)
    bar.close()
    return dg.MaterializeResult(metadata={
        "chunks_embedded": stats.embedded, "embedding_model": embedder.model_id,
        "weights_sha256": embedder.weights_sha256, "precision": embedder.precision, "seconds": round(stats.seconds, 3)})


@dg.asset(group_name="ingestion", deps=[chunk_embeddings], kinds={"faiss"})
def vector_index(context: dg.AssetExecutionContext, enclave: EnclaveResource) -> dg.MaterializeResult[None]:
    """Make the FAISS and BM25 indexes hold exactly the catalog's live chunks; saved atomically."""
    components = enclave.components
    index = components.index()
    run = components.catalog.run_for_dagster(context.run_id)
    report = publish_run(components.catalog, index, components.lexical(), run.id if run is not None else None)
    return dg.MaterializeResult(metadata={
        **asdict(report), "index_version": index.version, "embedding_model": index.model_id,
        "index_backend": index.build.describe()})
