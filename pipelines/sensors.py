"""A sensor that launches ingestion when documents of a source appear, change or go.

With a sources file (ENCLAVE_SOURCES_FILE) it watches every declared source, each with its own
fingerprint in the cursor and its own run; without one, the directory of ENCLAVE_WATCH_PATH. A
file share's fingerprint is its listing (paths, sizes, modification times), cheap enough to run
every minute on a large share; another source's is its scan (ids, hashes, access rules: the sql
and s3 connectors keep a hash cache, so only changed rows and objects are read). The job itself
then decides by content hash what really changed. A source that cannot be listed is logged and
skipped; the others are still watched. A second sensor records ingestion runs that Dagster
failed outside any step.
"""


import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from connectors.base import Connector
from pipelines.config import ingest_run_config
from pipelines.jobs import ingest_documents_job
from pipelines.resources import EnclaveResource
from rag.errors import EnclaveError, SourcesInvalidError
from rag.ingest import failure_reason
from rag.sources import Declaration, FileShareDeclaration, SourceContext, declared_sources, open_connector

SOURCE_TAG = "enclave/source"


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
        return ingest_run_config(path=self.path, source_name=self.source_name, policy=self.policy,
                                 groups=list(self.groups), public=self.public)


def listing_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            digest.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def scan_fingerprint(connector: Connector) -> str:
    digest = hashlib.sha256()
    for d in sorted(connector.scan(), key=lambda d: d.uri):
        access = json.dumps(d.access.to_json() if d.access else None, sort_keys=True)
        digest.update(f"{d.uri}\0{d.sha256}\0{access}\n".encode())
    return digest.hexdigest()


def source_fingerprint(source: Declaration, context: SourceContext) -> str:
    """What changes when the source's documents or their rules do (see the module docstring)."""
    if isinstance(source, FileShareDeclaration):
        root = Path(source.settings.root)
        if not root.is_dir():
            raise FileNotFoundError(f"source directory {root} does not exist")
        return listing_fingerprint(root)
    return scan_fingerprint(open_connector(source, context))


def declared_requests(enclave: EnclaveResource, cursor: str | None,
                      log: Any) -> tuple[list[dg.RunRequest], dict[str, str], list[str]]:
    """A run request for each declared source whose fingerprint moved; the new cursor; sources skipped."""
    declared = declared_sources(enclave.settings, os.environ)
    context = SourceContext.from_settings(enclave.settings)
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    requests: list[dg.RunRequest] = []
    skipped: list[str] = []
    for source in declared.sources:
        try:
            fingerprint = source_fingerprint(source, context)
        except (EnclaveError, OSError) as exc:
            log.warning(f"source {source.name} cannot be listed, skipped: {failure_reason(exc)}")
            skipped.append(source.name)
            continue
        if seen.get(source.name) != fingerprint:
            requests.append(dg.RunRequest(run_key=f"{source.name}:{fingerprint}",
                                          run_config=ingest_run_config(declared=source.name),
                                          tags={SOURCE_TAG: source.name}))
            seen[source.name] = fingerprint
    return requests, seen, skipped


@dg.sensor(job=ingest_documents_job, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.STOPPED)
def watched_source_sensor(context: dg.SensorEvaluationContext,
                          enclave: EnclaveResource) -> dg.SensorResult | dg.SkipReason:
    if enclave.settings.sources_file is not None:
        try:
            requests, cursor, skipped = declared_requests(enclave, context.cursor, context.log)
        except SourcesInvalidError as exc:
            return dg.SkipReason(str(exc))
        skip = None if requests else ("no new, changed or deleted documents"
                                      + (f"; not listable: {', '.join(skipped)}" if skipped else ""))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True), skip_reason=skip)
    watched = WatchedSource.from_env()
    if watched is None:
        return dg.SkipReason("neither ENCLAVE_SOURCES_FILE nor ENCLAVE_WATCH_PATH is set")
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
