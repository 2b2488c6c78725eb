"""rag.ingest without its orchestrator: each step on its own, in order, and a whole run in one call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from connectors.base import AccessRule, SourceDocument
from connectors.filesystem import FileShareSource
from rag.catalog.models import Chunk
from rag.config import load_settings
from rag.ingest import (
    IndexReport,
    IngestionComponents,
    IngestionRunMissingError,
    Manifest,
    RunCounts,
    check_index,
    check_residual_pii,
    embed_run,
    plan_run,
    planned_run,
    publish_run,
    redact_run,
    run_counts,
    run_ingestion,
    start_run,
)


@pytest.fixture
def components(enclave_home: Path) -> Iterator[IngestionComponents]:
    built = IngestionComponents(load_settings(parse_workers=1))
    yield built
    built.close()


def test_each_step_runs_on_its_own_and_leaves_the_catalog_where_the_next_one_starts(
        components: IngestionComponents, sample_corpus: Path) -> None:
    catalog, options = components.catalog, components.redaction
    connector = FileShareSource(sample_corpus, name="sample")

    run_id = start_run(connector, "filesystem", str(sample_corpus), catalog, components.policy("hipaa"),
                       components.version, dagster_run_id="dagster-run-1")
    started = catalog.run(run_id)
    assert started is not None and started.status == "running"
    planned = plan_run(run_id, connector, catalog, options.policies_dir)
    assert planned.manifest.counts() == RunCounts(new=7)
    assert planned.policy.name == "hipaa" and Path(planned.policy.file).name == "hipaa.yaml"
    assert planned_run(catalog, "dagster-run-1") == planned  # what the next asset reads back
    assert catalog.counts().documents == 0

    redacted = redact_run(planned, connector, catalog, options)
    assert (redacted.stored, redacted.quarantined, dict(redacted.quarantine_by_reason)) == (6, 1, {"empty": 1})
    assert catalog.counts().chunks == redacted.chunks_written > 0
    assert catalog.counts().embedded_chunks == 0

    pii = check_residual_pii(catalog, options.policies_dir, options.tenant_key, planned.policy)
    assert pii.passed and pii.chunks_flagged == 0

    embedded = embed_run(catalog, components.embedder, planned.run_id)
    assert embedded.embedded == redacted.chunks_written == catalog.counts().embedded_chunks

    index = components.index()
    assert not check_index(catalog, index).passed  # embedded chunks not yet in the index
    published = publish_run(catalog, index, components.lexical(), planned.run_id)
    assert published.vectors == published.added == redacted.chunks_written
    assert check_index(catalog, index).passed

    counts = run_counts(catalog, planned.run_id)
    assert (counts.new, counts.documents_written, counts.quarantined) == (7, 6, 1)
    assert counts.chunks_written == counts.chunks_embedded == redacted.chunks_written
    assert counts.index is not None and counts.index.vectors == redacted.chunks_written
    assert counts.entities_removed == dict(redacted.entities_removed) and counts.entities_removed


def test_a_whole_run_in_process_needs_no_orchestrator_and_a_second_run_changes_nothing(
        components: IngestionComponents, sample_corpus: Path) -> None:
    connector = FileShareSource(sample_corpus, name="sample")
    first = run_ingestion(components, connector, "filesystem", str(sample_corpus))
    assert first.success, first.failure
    assert first.dagster_run_id is None and first.run_id is not None
    run = components.catalog.run(first.run_id)
    assert run is not None and (run.status, run.failure) == ("completed", None) and (run.seconds or 0) > 0
    assert (first.counts.new, first.counts.documents_written) == (7, 6)
    second = run_ingestion(components, connector, "filesystem", str(sample_corpus))
    assert second.success, second.failure
    assert (second.counts.unchanged, second.counts.chunks_written, second.counts.chunks_embedded) == (6, 0, 0)
    index = components.index()
    assert index.ids().tolist() == sorted(components.catalog.embedded_chunk_ids(index.model_id).tolist())


def test_a_run_without_access_rules_fails_with_the_reason_and_writes_nothing(
        components: IngestionComponents, sample_corpus: Path) -> None:
    (sample_corpus / ".access.json").unlink()
    out = run_ingestion(components, FileShareSource(sample_corpus, name="sample"), "filesystem", str(sample_corpus))
    assert not out.success and "no access rule" in (out.failure or "")
    assert components.catalog.counts().documents == 0
    run = components.catalog.run(out.run_id or 0)
    assert run is not None and run.status == "failed" and run.seconds is not None
    assert (run.failure or "").startswith("AccessRuleMissingError: ")


def test_a_run_whose_residual_pii_check_fails_is_recorded_failed(components: IngestionComponents,
                                                                 sample_corpus: Path) -> None:
    connector = FileShareSource(sample_corpus, name="sample")
    assert run_ingestion(components, connector, "filesystem", str(sample_corpus)).success
    with components.catalog.session() as s, s.begin():  # chunks under a policy that no longer exists
        s.execute(update(Chunk).values(pii_checked=False, policy_name="retired-policy"))
    out = run_ingestion(components, connector, "filesystem", str(sample_corpus))
    assert not out.success and (out.failure or "").startswith("check no_residual_pii failed")
    run = components.catalog.run(out.run_id or 0)
    assert run is not None and run.status == "failed" and run.failure == out.failure


def test_a_step_that_continues_a_run_nobody_planned_says_so(components: IngestionComponents) -> None:
    with pytest.raises(IngestionRunMissingError, match="materialize source_manifest first"):
        planned_run(components.catalog, "no-such-dagster-run")


def test_index_matches_catalog_fails_when_the_index_lacks_or_keeps_a_chunk(
        components: IngestionComponents, sample_corpus: Path) -> None:
    out = run_ingestion(components, FileShareSource(sample_corpus, name="sample"), "filesystem", str(sample_corpus))
    assert out.success, out.failure
    catalog, index = components.catalog, components.index()
    ids = index.ids()
    # a vector lost from the index: missing
    index.reconcile(ids[1:], lambda chosen: catalog.embeddings_for(chosen, index.dim))
    report = check_index(catalog, index)
    assert not report.passed and (report.missing_from_index, report.stale_in_index) == (1, 0)
    # a chunk deleted from the catalog but left in the index: stale
    index.reconcile(ids, lambda chosen: catalog.embeddings_for(chosen, index.dim))
    assert check_index(catalog, index).passed
    source_id = catalog.source_id("sample")
    assert source_id is not None
    catalog.delete_documents(source_id, ["staff-handbook.txt"])
    report = check_index(catalog, index)
    assert not report.passed and report.stale_in_index > 0 and report.missing_from_index == 0


def test_run_counts_round_trip_and_read_older_runs_as_zero() -> None:
    counts = RunCounts(new=3, quarantine_by_reason={"empty": 1}, index=IndexReport(added=2, vectors=2, kind="flat"))
    assert RunCounts.from_json(counts.to_json()) == counts
    older = RunCounts.from_json({"new": 1, "index": {"added": 1, "retired_field": 5}, "retired": 0})
    assert older == RunCounts(new=1, index=IndexReport(added=1))


def test_the_manifest_round_trips_through_its_json_without_text() -> None:
    docs = (SourceDocument("a/b.txt", "0" * 64, 12, AccessRule(groups=frozenset({"x", "y"})), "b.txt"),
            SourceDocument("c.pdf", "1" * 64, 34, AccessRule(public=True), "c.pdf"))
    manifest = Manifest(4, docs, new=1, changed=1, unchanged=2, deleted=("gone.txt",), still_quarantined=1)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert set(manifest.to_json()) == {"source_id", "deleted", "counts", "to_process"}
