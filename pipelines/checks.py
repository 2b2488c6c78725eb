"""Asset checks: a second-pass PII scan of new chunks (blocking) and index/catalog consistency (rag.ingest)."""

from typing import Any

import dagster as dg

from pipelines.assets import redacted_chunks, vector_index
from pipelines.resources import EnclaveResource
from rag.ingest import check_index, check_residual_pii, run_policy


@dg.asset_check(asset=redacted_chunks, blocking=True, name="no_residual_pii")
def no_residual_pii(context: dg.AssetCheckExecutionContext, enclave: EnclaveResource) -> dg.AssetCheckResult:
    """The independent residual detector (rag.residual: patterns + vocabulary, no NER) over stored
    chunks no worker verified (and a sample of those it did); any finding blocks embedding. See
    rag.ingest.check_residual_pii."""
    components = enclave.components
    options = components.redaction
    report = check_residual_pii(components.catalog, options.policies_dir, options.tenant_key,
                                run_policy(components.catalog, context.run.run_id))
    metadata: dict[str, Any] = {"chunks_checked": report.chunks_checked,
                                "detector": "rag.residual (patterns + vocabulary, no NER)"}
    if report.policy_unavailable is not None:
        metadata.update(policy_unavailable=report.policy_unavailable, error=report.error or "")
    else:
        metadata.update(chunks_flagged=report.chunks_flagged,
                        residual_by_type=dg.MetadataValue.json(dict(report.residual_by_type)))
    return dg.AssetCheckResult(passed=report.passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)


# Blocking: an index that disagrees with the catalog fails the run rather than passing with a warning.
@dg.asset_check(asset=vector_index, blocking=True, name="index_matches_catalog")
def index_matches_catalog(enclave: EnclaveResource) -> dg.AssetCheckResult:
    """The vectors in the index are exactly the live, embedded chunks of the catalog."""
    report = check_index(enclave.components.catalog, enclave.components.index())
    return dg.AssetCheckResult(passed=report.passed, severity=dg.AssetCheckSeverity.ERROR, metadata={
        "index_vectors": report.index_vectors, "catalog_chunks": report.catalog_chunks,
        "missing_from_index": report.missing_from_index, "stale_in_index": report.stale_in_index,
        "chunks_without_embedding": report.chunks_without_embedding, "index_version": report.index_version})
