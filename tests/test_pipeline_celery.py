"""Partitioned ingestion on dagster-celery: two worker processes on the RabbitMQ of this machine.

The catalog and Dagster's run and event storage are on PostgreSQL (dagster-postgres), as in a
deployment. One worker is killed (SIGKILL) while it redacts a partition: RabbitMQ hands the
unacknowledged step to the other worker (task_acks_late), and the run still ends with the catalog
and index of a single-process run, no document or chunk twice.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from celery_workers import BROKER, CeleryWorkers
from conftest import _scratch_database
from sqlalchemy.engine import make_url
from test_pipeline_partitioned import assert_same_vectors, snapshot

from pipelines.partitioned import celery_job, partitioned_run_config
from pipelines.run import run_ingest

pytest.importorskip("dagster_celery", reason="dagster-celery (the deploy extra) is not installed")
pytest.importorskip("dagster_postgres", reason="dagster-postgres (the deploy extra) is not installed")



def _rabbitmq_listening() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def catalog_url() -> Iterator[str]:
    yield from _scratch_database("ENCLAVE_TEST_POSTGRES_URL", 'CREATE DATABASE "{name}"',
                                 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dagster_storage_url() -> Iterator[str]:
    for url in _scratch_database("ENCLAVE_TEST_POSTGRES_URL", 'CREATE DATABASE "{name}"',
                                 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'):
        # dagster-postgres binds NOTIFY parameters client-side, as psycopg2 does (SQLAlchemy 2.1 defaults to psycopg 3)
        yield make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def _step_executions(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(step key, celery worker) of every step execution a worker reported for the run."""
    found = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.event_type_value != "ENGINE_EVENT" or not event.message:
            continue
        executing = re.search(r"Executing steps (\S+) in celery worker", event.message)  # "[CeleryExecutor] ..."
        if executing:
            worker = event.engine_event_data.metadata.get("Celery worker")
            found.append((executing.group(1), str(getattr(worker, "value", worker))))
    return found


@pytest.mark.slow  # two workers and a single-process baseline: minutes
def test_celery_run_on_two_workers_survives_a_killed_worker_and_matches_a_single_process_run(
        enclave_home: Path, tmp_path: Path, sample_corpus: Path, catalog_url: str, dagster_storage_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not _rabbitmq_listening():
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    single, parted = tmp_path / "single", tmp_path / "parted"
    assert run_ingest(str(sample_corpus), source_name="sample", home=str(single)).success
    expected, expected_vectors = snapshot(single)

    monkeypatch.setenv("ENCLAVE_HOME", str(parted))
    monkeypatch.setenv("ENCLAVE_DATABASE_URL", catalog_url)
    queue = f"enclave-test-{uuid.uuid4().hex[:8]}"
    workers = CeleryWorkers(2, queue, tmp_path, dict(os.environ))
    dagster_dir = tmp_path / "dagster"
    dagster_dir.mkdir()
    outcome: dict[str, Any] = {}
    try:
        workers.wait_ready()
        storage = {"storage": {"postgres": {"postgres_url": dagster_storage_url}}}
        with dg.instance_for_test(temp_dir=str(dagster_dir), overrides=storage) as instance:
            run_config = partitioned_run_config(path=str(sample_corpus), source_name="sample",
                                                redact_partitions=2, embed_partitions=2)
            run_config["execution"] = {"config": {"broker": BROKER, "backend": "rpc://", "config_source": {
                "task_default_queue": queue, "task_acks_late": True, "worker_prefetch_multiplier": 1}}}

            def execute() -> None:
                outcome["result"] = dg.execute_job(dg.reconstructable(celery_job), instance=instance,
                                                   run_config=run_config)

            thread = threading.Thread(target=execute, daemon=True)
            thread.start()
            killed: tuple[str, str] | None = None
            deadline = time.monotonic() + 600
            while killed is None and thread.is_alive() and time.monotonic() < deadline:
                runs = instance.get_runs(limit=1)
                if runs:
                    redacting = [e for e in _step_executions(instance, runs[0].run_id)
                                 if e[0].startswith("redact_partition[")]
                    if redacting:
                        killed = redacting[0]
                        workers.kill(killed[1])
                time.sleep(0.2)
            thread.join(timeout=max(1.0, deadline - time.monotonic()))
            assert killed is not None, "no redact step started on a worker"
            result = outcome.get("result")
            assert result is not None and result.success, workers.tail()
            executions = _step_executions(instance, result.run_id)
    finally:
        workers.stop()

    # the killed worker's step ran again, on the other worker, and the run used both
    attempts = [worker for step, worker in executions if step == killed[0]]
    assert len(attempts) == 2 and attempts[0] == killed[1] and attempts[1] != killed[1], executions
    got, got_vectors = snapshot(parted)
    assert got == expected
    assert_same_vectors(got_vectors, expected_vectors)
