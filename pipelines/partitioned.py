"""Partitioned ingestion: the run's documents fan out to parallel redact and embed steps (rag.partitions).

    plan_partitions ──▶ redact_partition × P ──▶ check_partitions ──▶ embed_partition × E ──▶ publish_index
    (scan, apply,        (parse+redact one        (merge counts, the     (one chunk-id partition,   (one atomic index
     one step per         hash bucket of uris)     residual-PII check:    `gpu` pool)                swap, the index
     busy bucket)                                  blocks embedding)                                 check)

The fan-outs are Dagster dynamic outputs, so each partition is its own step: the multiprocess
executor runs them in parallel on one host (``ingest_partitioned_job``), the celery executor on
workers across hosts (``ingest_partitioned_celery_job``, RabbitMQ as broker; infra/dagster/celery.yaml),
and on Kubernetes the run launcher starts each run in its own pod. Steps pass counts only, never
text: redacted chunks go to the catalog, vectors to the catalog, the index is built from it.
Embedding steps carry the ``gpu`` pool: the instance's pool limit (1 on a one-GPU host) keeps
them from sharing the card while redaction steps go on in parallel.
"""

from typing import Any

import dagster as dg
from pydantic import Field

from pipelines.config import IngestConfig
from pipelines.jobs import record_failed_run
from pipelines.resources import EnclaveResource
from rag.errors import MissingExtraError
from rag.ingest import check_index, check_residual_pii, plan_run, planned_run, publish_run, start_run
from rag.partitions import (
    Partition,
    busy_partitions,
    embed_part,
    merge_embed_counts,
    merge_redact_counts,
    partitions,
    redact_part,
)

GPU_POOL = "gpu"


class PartitionedIngestConfig(IngestConfig):
    redact_partitions: int = Field(default=8, ge=1, le=4096, description="Hash buckets of documents to redact.")
    embed_partitions: int = Field(default=2, ge=1, le=4096, description="Partitions of chunks to embed.")


@dg.op(out=dg.DynamicOut(Partition))
def plan_partitions(context: dg.OpExecutionContext, config: PartitionedIngestConfig,
                    enclave: EnclaveResource) -> Any:
    """Scan the source against the catalog, apply deletions and access changes, fan out the rest."""
    components = enclave.components
    source = config.source(enclave.settings)
    run_id = start_run(source.connector, source.kind, source.location, components.catalog,
                       components.policy(source.policy), components.version, dagster_run_id=context.run_id)
    planned = plan_run(run_id, source.connector, components.catalog, enclave.settings.policies_dir)
    for part in busy_partitions(planned.manifest, config.redact_partitions):
        yield dg.DynamicOutput(part, mapping_key=part.key)


@dg.op
def redact_partition(context: dg.OpExecutionContext, part: Partition, config: IngestConfig,
                     enclave: EnclaveResource) -> dict[str, Any]:
    """Parse, chunk and redact one partition's new and changed documents (in isolated workers)."""
    components = enclave.components
    planned = planned_run(components.catalog, context.run_id)
    stats = redact_part(planned, part, config.source(enclave.settings).connector, components.catalog,
                        components.redaction)
    context.log.info(f"partition {part.key}: documents written {stats.stored}, quarantined {stats.quarantined}")
    return stats.run_fields()


@dg.op(out=dg.DynamicOut(Partition))
def check_partitions(context: dg.OpExecutionContext, redacted: list[dict[str, Any]], config: PartitionedIngestConfig,
                     enclave: EnclaveResource) -> Any:
    """Record the run's redaction counts; the residual-PII check blocks embedding when it finds anything."""
    components = enclave.components
    planned = planned_run(components.catalog, context.run_id)
    components.catalog.update_run(planned.run_id, merge_redact_counts(redacted))
    options = components.redaction
    report = check_residual_pii(components.catalog, options.policies_dir, options.tenant_key, planned.policy)
    if not report.passed:
        raise dg.Failure(description="check no_residual_pii failed", metadata={
            "chunks_checked": report.chunks_checked, "chunks_flagged": report.chunks_flagged,
            "residual_by_type": dg.MetadataValue.json(dict(report.residual_by_type)),
            "policy_unavailable": report.policy_unavailable or ""})
    for part in partitions(config.embed_partitions):
        yield dg.DynamicOutput(part, mapping_key=part.key)


@dg.op(pool=GPU_POOL)
def embed_partition(part: Partition, enclave: EnclaveResource) -> dict[str, Any]:
    """Embed the chunks of one partition that have no vector from the current model."""
    return embed_part(enclave.components.catalog, enclave.components.embedder, part).run_fields()


@dg.op
def publish_index(context: dg.OpExecutionContext, embedded: list[dict[str, Any]],
                  enclave: EnclaveResource) -> dg.Output[None]:
    """One atomic index swap from what the catalog holds after every partition; then the index check."""
    components = enclave.components
    run = components.catalog.run_for_dagster(context.run_id)
    run_id = run.id if run is not None else None
    if run_id is not None:
        components.catalog.update_run(run_id, merge_embed_counts(embedded))
    index = components.index()
    report = publish_run(components.catalog, index, components.lexical(), run_id)
    consistency = check_index(components.catalog, index)
    if not consistency.passed:
        raise dg.Failure(description="check index_matches_catalog failed",
                         metadata={k: v for k, v in vars(consistency).items() if isinstance(v, int | str)})
    return dg.Output(None, metadata={"added": report.added, "removed": report.removed, "vectors": report.vectors,
                                     "index_version": index.version, "embedding_model": index.model_id})


@dg.graph
def ingest_partitioned() -> None:
    embedded = check_partitions(plan_partitions().map(redact_partition).collect()).map(embed_partition)
    publish_index(embedded.collect())


def _job(name: str, executor: dg.ExecutorDefinition) -> dg.JobDefinition:
    return ingest_partitioned.to_job(
        name=name, executor_def=executor, resource_defs={"enclave": EnclaveResource()}, hooks={record_failed_run},
        description="Partitioned ingestion of one source: parallel redact and embed steps, one atomic index publish.")


def multiprocess_job() -> dg.JobDefinition:
    """Partition steps in parallel processes of the run's host (``dg.reconstructable(multiprocess_job)``)."""
    return _job("ingest_partitioned_job", dg.multiprocess_executor)


def celery_job() -> dg.JobDefinition:
    """Partition steps on celery workers (the ``deploy`` extra; broker in the run config's ``execution``)."""
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise MissingExtraError("dagster-celery", "deploy") from exc
    return _job("ingest_partitioned_celery_job", celery_executor)


ingest_partitioned_job = multiprocess_job()


def partitioned_run_config(redact_partitions: int = 8, embed_partitions: int = 2, **source: object) -> dict[str, Any]:
    """Run config naming the source once for the three steps that open it (see IngestConfig)."""
    full = PartitionedIngestConfig(redact_partitions=redact_partitions, embed_partitions=embed_partitions,
                                   **source).model_dump()  # type: ignore[arg-type]  # validated here
    plain = IngestConfig(**{k: v for k, v in full.items() if k in IngestConfig.model_fields}).model_dump()
    return {"ops": {"plan_partitions": {"config": full}, "redact_partition": {"config": plain},
                    "check_partitions": {"config": full}}}
