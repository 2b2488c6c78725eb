"""Enclave's Dagster code location: ``dagster dev -m pipelines.definitions``."""

from __future__ import annotations

import dagster as dg

from pipelines import assets, checks
from pipelines.jobs import ingest_documents_job
from pipelines.partitioned import celery_job, ingest_partitioned_job
from pipelines.resources import EnclaveResource
from pipelines.retention import apply_retention_job, daily_retention
from pipelines.schedules import nightly_ingest
from pipelines.sensors import ingestion_run_failures, watched_source_sensor
from rag.config import enforce_offline, load_settings
from rag.errors import MissingExtraError

enforce_offline()
# Loading the code location in production without real secrets fails here, before any run.
load_settings().require_secrets()

jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = [
    ingest_documents_job,
    ingest_partitioned_job,
    apply_retention_job,
]
try:
    jobs.append(celery_job())
except MissingExtraError:  # dagster-celery (the deploy extra) is not installed: no celery job on this host
    pass

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=jobs,
    schedules=[nightly_ingest, daily_retention],
    sensors=[watched_source_sensor, ingestion_run_failures],
    resources={"enclave": EnclaveResource()},
)
