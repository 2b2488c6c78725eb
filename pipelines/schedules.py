"""Nightly ingestion: one run per source of the sources file, else of the watched directory (sensors.py)."""


import os

import dagster as dg

from pipelines.config import ingest_run_config
from pipelines.jobs import ingest_documents_job
from pipelines.resources import EnclaveResource
from pipelines.sensors import SOURCE_TAG, WatchedSource
from rag.errors import SourcesInvalidError
from rag.sources import declared_sources


@dg.schedule(job=ingest_documents_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED)
def nightly_ingest(context: dg.ScheduleEvaluationContext,
                   enclave: EnclaveResource) -> list[dg.RunRequest] | dg.RunRequest | dg.SkipReason:
    if enclave.settings.sources_file is not None:
        try:
            names = declared_sources(enclave.settings, os.environ).names
        except SourcesInvalidError as exc:
            return dg.SkipReason(str(exc))
        # one run each: a source that fails fails its own run only
        return [dg.RunRequest(run_key=None, run_config=ingest_run_config(declared=name), tags={SOURCE_TAG: name})
                for name in names]
    watched = WatchedSource.from_env()
    if watched is None:
        return dg.SkipReason("neither ENCLAVE_SOURCES_FILE nor ENCLAVE_WATCH_PATH is set: no source to ingest")
    return dg.RunRequest(run_key=None, run_config=watched.run_config())
