"""Partitioned ingestion (pipelines/partitioned.py) against the single-process job: the same catalog and index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
from sqlalchemy import select

from pipelines.partitioned import multiprocess_job, partitioned_run_config
from pipelines.run import run_ingest
from rag.catalog.models import Chunk, Document, IngestionRun, QuarantineRecord
from rag.catalog.store import CatalogStore
from rag.config import Settings
from rag.index import FaissIndex
from rag.partitions import Partition, busy_partitions, manifest_part

Snapshot = dict[str, Any]


def snapshot(home: Path) -> tuple[Snapshot, dict[tuple[str, int], np.ndarray]]:
    """What a run leaves, by content (chunk ids depend on write order): documents, chunks, quarantine,
    the index's chunks, the run's counts; and the vectors by (uri, ordinal)."""
    settings = Settings(home=home)
    catalog = CatalogStore(settings.database_url)
    with catalog.session() as s:
        docs = sorted((d.uri, d.sha256, d.version, json.dumps(d.access, sort_keys=True), d.policy_hash,
                       d.pipeline_version) for d in s.scalars(select(Document)))
        rows = s.execute(select(Chunk, Document.uri).join(Document)).all()
        chunks = sorted((uri, c.ordinal, c.content_hash, c.text, json.dumps(c.access, sort_keys=True),
                         json.dumps(c.entity_counts, sort_keys=True), c.embedding_model) for c, uri in rows)
        key_of = {c.id: (uri, c.ordinal) for c, uri in rows}
        vectors = {(uri, c.ordinal): np.frombuffer(c.embedding, dtype=np.float32) for c, uri in rows
                   if c.embedding is not None}
        quarantine = sorted((q.uri, q.reason) for q in s.scalars(select(QuarantineRecord)))
        run = s.scalars(select(IngestionRun).order_by(IngestionRun.id.desc())).first()
        assert run is not None
        counts = {k: run.counts.get(k) for k in ("new", "changed", "unchanged", "deleted", "documents_written",
                                                 "quarantined", "chunks_written", "chunks_embedded",
                                                 "entities_removed", "quarantine_by_reason")}
        status = run.status
    catalog.dispose()
    manifest = json.loads((settings.index_dir / "vectors" / "manifest.json").read_text())
    index = FaissIndex(settings.index_dir / "vectors", manifest["dim"], manifest["model_id"], device="cpu")
    indexed = sorted(key_of[i] for i in index.ids().tolist())
    return ({"documents": docs, "chunks": chunks, "quarantine": quarantine, "indexed": indexed,
             "counts": counts, "status": status}, vectors)


def assert_same_vectors(a: dict[tuple[str, int], np.ndarray], b: dict[tuple[str, int], np.ndarray]) -> None:
    # batches differ between the runs (padding), so vectors agree to rounding, not bit for bit
    assert a.keys() == b.keys()
    for key in a:
        assert float(np.dot(a[key], b[key])) > 0.999, key


def run_partitioned(home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, dagster_dir: Path,
                    **config: Any) -> dg.ExecutionResult:
    monkeypatch.setenv("ENCLAVE_HOME", str(home))  # the step processes build their resource from it
    dagster_dir.mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(dagster_dir)) as instance:
        run_config = partitioned_run_config(path=str(corpus), source_name="sample", **config)
        # The forkserver outlives this test and keeps the environment it started with, so the
        # home goes to the step processes in the run's config, not only in ENCLAVE_HOME.
        run_config.setdefault("resources", {})["enclave"] = {"config": {"home": str(home)}}
        # a forkserver that imported the job once: each step process starts in a second, not twenty
        run_config["execution"] = {"config": {"start_method": {"forkserver": {
            "preload_modules": ["pipelines.partitioned", "rag.embedding", "rag.redaction"]}}}}
        result = dg.execute_job(dg.reconstructable(multiprocess_job), instance=instance, run_config=run_config)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        return result


def test_every_uri_falls_in_exactly_one_partition() -> None:
    uris = [f"dir{i % 7}/doc{i}.txt" for i in range(500)]
    parts = [Partition(i, 8) for i in range(8)]
    assert all(sum(p.holds_uri(u) for p in parts) == 1 for u in uris)
    assert min(sum(p.holds_uri(u) for u in uris) for p in parts) > 30  # the hash spreads them


@pytest.mark.slow  # one process per step on 2 cores: minutes
@pytest.mark.extended  # test_pipeline_celery runs the same job on 2 workers against a single-process run
def test_partitioned_multiprocess_run_gives_the_catalog_and_index_of_a_single_process_run(
        enclave_home: Path, tmp_path: Path, sample_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    single, parted = tmp_path / "single", tmp_path / "parted"
    assert run_ingest(str(sample_corpus), source_name="sample", home=str(single)).success
    result = run_partitioned(parted, sample_corpus, monkeypatch, tmp_path / "dagster",
                             redact_partitions=4, embed_partitions=2)
    redact_steps = {e.step_key for e in result.all_events if e.is_step_success and e.step_key
                    and e.step_key.startswith("redact_partition[")}
    embed_steps = {e.step_key for e in result.all_events if e.is_step_success and e.step_key
                   and e.step_key.startswith("embed_partition[")}
    assert len(redact_steps) >= 2 and len(embed_steps) == 2  # the work really was split
    expected, expected_vectors = snapshot(single)
    got, got_vectors = snapshot(parted)
    assert got == expected
    assert_same_vectors(got_vectors, expected_vectors)


@pytest.mark.slow  # one process per step on 2 cores: minutes
@pytest.mark.extended  # the celery test and the retry test cover the partitioned path in the default run
def test_a_partitioned_reingest_applies_changes_and_deletions_like_the_single_process_job(
        enclave_home: Path, tmp_path: Path, sample_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    single, parted = tmp_path / "single", tmp_path / "parted"
    assert run_ingest(str(sample_corpus), source_name="sample", home=str(single)).success
    run_partitioned(parted, sample_corpus, monkeypatch, tmp_path / "dagster", redact_partitions=3)
    victim = next(p for p in sorted(sample_corpus.rglob("*.txt")) if p.stat().st_size > 0)
    victim.unlink()
    edited = next(p for p in sorted(sample_corpus.rglob("*.md")))
    edited.write_text(edited.read_text() + "\n\nAddendum: the clinic moved to the third floor.\n")
    assert run_ingest(str(sample_corpus), source_name="sample", home=str(single)).success
    run_partitioned(parted, sample_corpus, monkeypatch, tmp_path / "dagster", redact_partitions=3)
    expected, expected_vectors = snapshot(single)
    got, got_vectors = snapshot(parted)
    assert got["counts"]["deleted"] == 1 and got["counts"]["changed"] == 1
    assert got == expected
    assert_same_vectors(got_vectors, expected_vectors)


def test_an_empty_plan_still_publishes_so_deletions_reach_the_index() -> None:
    from rag.ingest import Manifest

    empty = Manifest(source_id=1, to_process=(), new=0, changed=0, unchanged=3, deleted=("gone.txt",),
                     still_quarantined=0)
    assert busy_partitions(empty, 8) == [Partition(0, 8)]
    assert manifest_part(empty, Partition(0, 8)).deleted == ("gone.txt",)


def test_a_retried_partition_rewrites_nothing_and_counts_what_the_lost_attempt_wrote(
        enclave_home: Path, sample_corpus: Path) -> None:
    from connectors.filesystem import FileShareSource
    from rag.ingest import IngestionComponents, plan_run, start_run
    from rag.partitions import redact_part

    components = IngestionComponents(Settings(home=enclave_home))
    catalog = components.catalog
    connector = FileShareSource(sample_corpus, name="sample")
    run_id = start_run(connector, "filesystem", str(sample_corpus), catalog, components.policy(), components.version)
    planned = plan_run(run_id, connector, catalog, components.redaction.policies_dir)
    whole = Partition(0, 1)

    def written() -> list[tuple[str, int, int]]:
        with catalog.session() as s:
            return sorted((uri, version, chunk_id) for uri, version, chunk_id in
                          s.execute(select(Document.uri, Document.version, Chunk.id).join(Chunk)))

    first = redact_part(planned, whole, connector, catalog, components.redaction).run_fields()
    state = written()
    retried = redact_part(planned, whole, connector, catalog, components.redaction).run_fields()
    components.close()
    assert written() == state  # same versions, same chunk ids: nothing stored twice
    assert {k: v for k, v in retried.items() if k != "redact_seconds"} == \
        {k: v for k, v in first.items() if k != "redact_seconds"}
    assert first["documents_written"] == 6 and first["quarantined"] == 1
