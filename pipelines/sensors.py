"""A sensor that launches ingestion when files in the watched source appear, change or go.

It compares a fingerprint of the listing (paths, sizes, modification times): cheap enough to run
every minute on a large share; the job itself then decides by content hash what really changed.
A second sensor records ingestion runs that Dagster failed outside any step.
"""


import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from pipelines.jobs import ingest_documents_job
from pipelines.resources import EnclaveResource


@dataclass(frozen=True)
class WatchedSource:
    path: str
    source_name: str
    policy: str
    groups: tuple[str, ...]
    public: bool

    @classmethod
    def from_env(cls) -> "WatchedSource | None":
        path = os.environ.get("ENCLAVE_WATCH_PATH", "")
        if not path:
            return None
        groups = tuple(g for g in os.environ.get("ENCLAVE_WATCH_GROUPS", "").split(",") if g)
        return cls(path=path, source_name=os.environ.get("ENCLAVE_WATCH_SOURCE", ""),
                   policy=os.environ.get("ENCLAVE_POLICY", ""), groups=groups,
                   public=os.environ.get("ENCLAVE_WATCH_PUBLIC", "") == "1")

    def run_config(self) -> dict[str, Any]:
        cfg = {"path": self.path, "source_name": self.source_name, "policy": self.policy,
               "groups": list(self.groups), "public": self.public}
        return {"ops": {"source_manifest": {"config": cfg}, "redacted_chunks": {"config": cfg}}}


def listing_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            digest.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dg.sensor(job=ingest_documents_job, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.STOPPED)
def watched_source_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    watched = WatchedSource.from_env()
    if watched is None:
        return dg.SkipReason("ENCLAVE_WATCH_PATH is not set")
    root = Path(watched.path)
    if not root.is_dir():
        return dg.SkipReason(f"watched path {root} is not a directory")
    fingerprint = listing_fingerprint(root)
    if fingerprint == context.cursor:
        return dg.SkipReason("no new, changed or deleted files")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=fingerprint, run_config=watched.run_config())],
                           cursor=fingerprint)


@dg.run_failure_sensor(monitored_jobs=[ingest_documents_job], default_status=dg.DefaultSensorStatus.RUNNING)
def ingestion_run_failures(context: dg.RunFailureSensorContext, enclave: EnclaveResource) -> None:
    """A Dagster run that failed outside any step (cancelled, its process lost) fails its ingestion run too.

    Needs the daemon (``dagster dev`` starts one); step failures are recorded without it by the
    job's failure hook, whose reason this keeps.
    """
    catalog = enclave.components.catalog
    run = catalog.run_for_dagster(context.dagster_run.run_id)
    if run is not None and run.status != "failed":
        catalog.finish_run(run.id, "failed", f"the Dagster run failed: {context.failure_event.message}")
