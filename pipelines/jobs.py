"""Jobs: ingestion of a source, end to end, with its asset checks; a failed step fails the run on record."""

from __future__ import annotations

import dagster as dg

from pipelines.resources import EnclaveResource
from rag.errors import EnclaveError
from rag.ingest import failure_reason


@dg.failure_hook(required_resource_keys={"enclave"})
def record_failed_run(context: dg.HookContext) -> None:
    """Record the catalog's ingestion run as failed, with the reason and duration, when any step fails.

    A hook runs in the run's own process, so this holds for ``dagster dev``, schedules, sensors and
    ``enclave ingest`` alike, daemon or not (a blocking check that fails fails its step too).
    """
    enclave: EnclaveResource = context.resources.enclave
    try:
        catalog = enclave.components.catalog
    except EnclaveError:
        return  # the components never built (refused secrets, say), so no run was recorded
    run = catalog.run_for_dagster(context.run_id)
    if run is None:
        return
    exc = context.op_exception
    if isinstance(exc, dg.DagsterError):  # Dagster's own message: check and step names, no document text
        reason = f"step {context.op.name}: {type(exc).__name__}: {exc}"
    elif exc is not None:
        reason = f"step {context.op.name}: {failure_reason(exc)}"
    else:
        reason = f"step {context.op.name} failed"
    catalog.finish_run(run.id, "failed", reason)


ingest_documents_job = dg.define_asset_job(
    "ingest_documents_job",
    selection=dg.AssetSelection.groups("ingestion"),
    description="Scan a source, redact new and changed documents, embed and index them.",
    hooks={record_failed_run},
)
