"""End-to-end ingestion through the real Dagster job: incremental, deletions, access, deny by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from pipelines.run import run_ingest
from rag.catalog.models import Chunk, Document, IngestionRun
from rag.catalog.store import CatalogStore
from rag.cli import main
from rag.config import Settings
from rag.index import FaissIndex


def _state(home: Path) -> dict[str, object]:
    """Everything a run leaves behind that matters: documents, chunks, index ids and version."""
    settings = Settings(home=home)
    catalog = CatalogStore(settings.database_url)
    with catalog.session() as s:
        docs = sorted((d.uri, d.sha256, d.version, json.dumps(d.access, sort_keys=True))
                      for d in s.scalars(select(Document)))
        chunks = sorted((c.id, c.document_id, c.ordinal, c.content_hash) for c in s.scalars(select(Chunk)))
    manifest = json.loads((settings.index_dir / "vectors" / "manifest.json").read_text())
    index = FaissIndex(settings.index_dir / "vectors", manifest["dim"], manifest["model_id"], device="cpu")
    catalog.dispose()
    return {"documents": docs, "chunks": chunks, "index_ids": index.ids().tolist(),
            "index_generation": manifest["generation"]}


def _latest_run(home: Path) -> IngestionRun:
    catalog = CatalogStore(Settings(home=home).database_url)
    run = catalog.latest_run()
    catalog.dispose()
    assert run is not None
    return run


def test_first_ingest_indexes_every_chunk_and_quarantines_the_empty_file(enclave_home: Path,
                                                                         sample_corpus: Path) -> None:
    out = run_ingest(str(sample_corpus), source_name="sample")
    assert out.success, out.failure
    assert out.counts.new == 7
    assert out.counts.quarantine_by_reason == {"empty": 1}
    run = _latest_run(enclave_home)
    assert (run.status, run.failure, run.dagster_run_id) == ("completed", None, out.dagster_run_id)
    assert run.seconds is not None and run.seconds > 0 and run.finished_at is not None
    state = _state(enclave_home)
    assert len(state["documents"]) == 6  # type: ignore[arg-type]  # _state values are plain objects
    assert state["index_ids"] == [c[0] for c in state["chunks"]]  # type: ignore[union-attr]  # _state values are plain objects


def test_reingest_of_an_unchanged_tree_writes_nothing(enclave_home: Path, sample_corpus: Path) -> None:
    assert run_ingest(str(sample_corpus), source_name="sample").success
    before = _state(enclave_home)
    out = run_ingest(str(sample_corpus), source_name="sample")
    assert out.success
    assert (out.counts.new, out.counts.changed, out.counts.chunks_written) == (0, 0, 0)
    assert out.counts.unchanged == 6 and out.counts.still_quarantined == 1
    assert _state(enclave_home) == before  # same rows, same ids, same index generation


def test_changed_and_deleted_files_are_reflected_in_catalog_and_index(enclave_home: Path,
                                                                      sample_corpus: Path) -> None:
    assert run_ingest(str(sample_corpus), source_name="sample").success
    before = _state(enclave_home)
    (sample_corpus / "staff-handbook.txt").write_text(
        "Staff handbook, second edition.\n\nBadges are worn at all times.")
    (sample_corpus / "hr" / "leave-policy.csv").unlink()
    out = run_ingest(str(sample_corpus), source_name="sample")
    assert out.success
    assert (out.counts.changed, out.counts.deleted) == (1, 1)
    after = _state(enclave_home)
    uris = {d[0]: d for d in after["documents"]}  # type: ignore[union-attr]  # _state values are plain objects
    assert "hr/leave-policy.csv" not in uris
    assert uris["staff-handbook.txt"][2] == 2  # version bumped
    old_ids = {c[0] for c in before["chunks"]}  # type: ignore[union-attr]  # _state values are plain objects
    new_ids = {c[0] for c in after["chunks"]}  # type: ignore[union-attr]  # _state values are plain objects
    assert after["index_ids"] == sorted(new_ids)
    assert new_ids - old_ids, "the changed document got new chunks"
    # chunk ids of the deleted and replaced documents are gone from the index, never reused
    assert not (old_ids - new_ids) & set(after["index_ids"])  # type: ignore[arg-type]  # _state values are plain objects


def test_a_changed_access_rule_retags_chunks_without_reprocessing(enclave_home: Path, sample_corpus: Path) -> None:
    assert run_ingest(str(sample_corpus), source_name="sample").success
    (sample_corpus / "finance" / ".access.json").write_text(json.dumps({"groups": ["audit"]}))
    out = run_ingest(str(sample_corpus), source_name="sample")
    assert out.success and out.counts.access_changed == 1 and out.counts.chunks_written == 0
    catalog = CatalogStore(Settings(home=enclave_home).database_url)
    with catalog.session() as s:
        accesses = {json.dumps(c.access) for c in s.scalars(select(Chunk).join(Document)
                                                           .where(Document.uri == "finance/wire-transfer.md"))}
    assert accesses == {json.dumps({"groups": ["audit"]})}


def test_documents_without_an_access_rule_are_refused_and_nothing_is_written(enclave_home: Path,
                                                                            sample_corpus: Path) -> None:
    (sample_corpus / ".access.json").unlink()  # staff-handbook.txt now has no rule
    out = run_ingest(str(sample_corpus), source_name="sample")
    assert not out.success
    assert "no access rule" in (out.failure or "") and "staff-handbook.txt" in (out.failure or "")
    catalog = CatalogStore(Settings(home=enclave_home).database_url)
    assert catalog.counts().documents == 0
    # the refusal is on record as a failed run, with its reason (written by the job's failure hook)
    run = _latest_run(enclave_home)
    assert run.status == "failed" and run.seconds is not None
    assert (run.failure or "").startswith("step source_manifest: AccessRuleMissingError: ")
    status = CliRunner().invoke(main, ["status", "--json"], env={"ENCLAVE_HOME": str(enclave_home)})
    assert status.exit_code == 0, status.output
    shown = json.loads(status.output)
    assert shown["last_run"] == "failed" and "no access rule" in shown["last_run_failure"]
    assert "(cpu build, from faiss-cpu " in shown["index_backend"]


def test_a_blocking_check_that_fails_fails_the_run_on_record(enclave_home: Path, sample_corpus: Path) -> None:
    assert run_ingest(str(sample_corpus), source_name="sample").success
    # chunks left unverified under a policy that no longer exists: the residual-PII check cannot vouch for them
    catalog = CatalogStore(Settings(home=enclave_home).database_url)
    with catalog.session() as s, s.begin():
        s.execute(update(Chunk).values(pii_checked=False, policy_name="retired-policy"))
    catalog.dispose()
    out = run_ingest(str(sample_corpus), source_name="sample")
    assert not out.success and "no_residual_pii" in (out.failure or "")
    run = _latest_run(enclave_home)
    assert run.status == "failed" and run.seconds is not None
    assert "no_residual_pii" in (run.failure or "") and run.dagster_run_id == out.dagster_run_id


def test_default_groups_apply_where_no_access_file_does(enclave_home: Path, sample_corpus: Path) -> None:
    (sample_corpus / ".access.json").unlink()
    out = run_ingest(str(sample_corpus), source_name="sample", groups=["staff"])
    assert out.success
    catalog = CatalogStore(Settings(home=enclave_home).database_url)
    with catalog.session() as s:
        doc = s.scalars(select(Document).where(Document.uri == "staff-handbook.txt")).one()
    assert doc.access == {"groups": ["staff"]}


@pytest.mark.postgres
def test_ingest_works_the_same_on_postgresql(tmp_path: Path, sample_corpus: Path, own_postgres_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    postgres_url = own_postgres_url
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path / "pg-home"))
    monkeypatch.setenv("ENCLAVE_DATABASE_URL", postgres_url)
    first = run_ingest(str(sample_corpus), source_name="sample")
    assert first.success, first.failure
    second = run_ingest(str(sample_corpus), source_name="sample")
    assert second.success and second.counts.chunks_written == 0 and second.counts.unchanged == 6
    catalog = CatalogStore(postgres_url)
    counts = catalog.counts()
    catalog.dispose()
    assert counts.documents == 6 and counts.quarantined == 1 and counts.embedded_chunks == counts.chunks


def test_the_redacted_sample_holds_no_planted_pii(enclave_home: Path, sample_corpus: Path) -> None:
    # hipaa: the default policy does not know medical record numbers; the hospital demo uses hipaa
    assert run_ingest(str(sample_corpus), source_name="sample", policy="hipaa").success
    planted = ["Margaret Okonkwo", "MRN-4471902", "(555) 201-7788", "42 Larkspur Avenue", "GB82WEST12345698765432",
               "4111 1111 1111 1111", "thomas.whitfield@example.org", "+44 20 7946 0958", "Thomas Whitfield"]
    for path in enclave_home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in planted:
                assert value.encode() not in data, f"{value!r} found in {path.name}"



def test_a_policy_file_outside_the_policies_directory_is_used_by_workers_and_the_check(
        enclave_home: Path, sample_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_PII_RECHECK_FRACTION", "1.0")  # the check re-scans every chunk
    site = tmp_path / "site-policies" / "records.yaml"
    site.parent.mkdir()
    root = Path(__file__).resolve().parents[1]
    site.write_text((root / "policies" / "default.yaml").read_text().replace("name: default", "name: site-records", 1))
    out = run_ingest(str(sample_corpus), source_name="sample", policy=str(site))
    assert out.success, out.failure
    settings = Settings(home=enclave_home)
    catalog = CatalogStore(settings.database_url)
    with catalog.session() as s:
        assert set(s.scalars(select(Document.policy_name))) == {"site-records"}
    counts = catalog.counts()
    catalog.dispose()
    assert counts.embedded_chunks == counts.chunks > 0  # the check passed, so embedding ran
