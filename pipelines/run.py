"""Run the ingestion job in process, the way the CLI and the tests do, on the code location's Definitions.

Registered as the ``dagster`` runner of the ``enclave.orchestrators`` entry-point group, which is
how ``enclave ingest`` finds this job without the library importing the code location.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dagster as dg

from pipelines.config import ingest_run_config
from pipelines.definitions import defs
from pipelines.resources import EnclaveResource
from rag.errors import EnclaveError
from rag.ingest import IngestOutcome, RunCounts


def _instance() -> dg.DagsterInstance:
    # With DAGSTER_HOME set, runs are recorded where `dagster dev` shows them; otherwise nothing persists.
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def run_ingest(path: str = "", *, source_name: str = "", policy: str = "", groups: Sequence[str] = (),
               public: bool = False, progress: bool = False, home: str = "", database_url: str = "",
               log_level: str = "WARNING", declared: str = "") -> IngestOutcome:
    """One ingestion run of the directory ``path``, or of the source ``declared`` in the sources file."""
    enclave = EnclaveResource(home=home, database_url=database_url, show_progress=progress)
    job = defs.resolve_job_def("ingest_documents_job")
    with _instance() as instance:
        result = job.execute_in_process(
            run_config={**ingest_run_config(path=path, declared=declared, source_name=source_name, policy=policy,
                                            groups=list(groups), public=public),
                        "loggers": {"console": {"config": {"log_level": log_level}}}},
            instance=instance, resources={"enclave": enclave}, raise_on_error=False)
        failure = None if result.success else _first_failure(result)
    try:
        catalog = enclave.components.catalog
    except EnclaveError:  # the run was refused before its components were built (secrets, say)
        return IngestOutcome(False, None, RunCounts(), failure, result.run_id)
    try:
        run = catalog.run_for_dagster(result.run_id)
        if run is not None and not result.success and run.status != "failed":
            # failed outside any step, so the job's failure hook did not record it
            catalog.finish_run(run.id, "failed", "the Dagster run failed outside its steps; see the Dagster run log")
            run = catalog.run(run.id)
        counts = RunCounts.from_json(run.counts) if run is not None else RunCounts()
    finally:
        enclave.components.close()
    return IngestOutcome(result.success, run.id if run is not None else None, counts, failure, result.run_id)


def _first_failure(result: Any) -> str:
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            err = data.user_failure_data or data.error
            cause = getattr(err, "cause", None)
            if cause is not None and cause.cls_name and cause.message:
                return str(cause.message).strip()
            if err is not None and getattr(err, "message", None):
                return str(err.message).strip()
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if evaluation is not None and not evaluation.passed:
                return f"asset check {evaluation.asset_check_key.name} failed: {dict(evaluation.metadata)}"
    return "the ingestion run failed; see the Dagster run log"


__all__ = ["IngestOutcome", "run_ingest"]
