"""Nightly ingestion of the watched source (ENCLAVE_WATCH_PATH and friends, see sensors.py)."""


import dagster as dg

from pipelines.jobs import ingest_documents_job
from pipelines.sensors import WatchedSource


@dg.schedule(job=ingest_documents_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED)
def nightly_ingest(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    watched = WatchedSource.from_env()
    if watched is None:
        return dg.SkipReason("ENCLAVE_WATCH_PATH is not set: no source to ingest")
    return dg.RunRequest(run_key=None, run_config=watched.run_config())
