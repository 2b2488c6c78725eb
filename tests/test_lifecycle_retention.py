"""Retention with real components: rules applied from Dagster and from the CLI erase or pseudonymise
what is due, skip what is held, and leave one verifiable receipt per run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from lifecycle_home import DISCHARGE, SUBJECT, stores, template_home
from sqlalchemy import func, select

from rag.catalog.models import Chunk, Document
from rag.errors import PolicyInvalidError
from rag.lifecycle.erase import LifecycleStores
from rag.lifecycle.models import SubjectChunk
from rag.lifecycle.probes import scan_bytes
from rag.lifecycle.receipts import verify_receipt
from rag.lifecycle.retention import load_retention
from rag.lifecycle.subjects import placeholder_token

__all__ = ["stores", "template_home"]  # fixtures, from lifecycle_home

POLICIES = Path(__file__).resolve().parent.parent / "policies"
WIRE = "finance/wire-transfer.md"


def _chunks_of(stores: LifecycleStores, uri: str) -> int:
    return sum(1 for v in stores.catalog.chunk_views(stores.catalog.live_chunk_ids().tolist()).values()
               if v.source_uri == uri)


def test_the_shipped_rules_validate_and_a_bad_period_is_refused(tmp_path: Path) -> None:
    rules = load_retention(POLICIES / "retention.yaml")
    assert [(r.name, r.action, r.days) for r in rules.rules] == [("clinical-records", "pseudonymise", 3650),
                                                                 ("finance-requests", "erase", 2555)]
    assert json.loads((POLICIES / "retention.schema.json").read_text())["title"] == "RetentionFile"
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: x, period: forever, action: erase}\n")
    with pytest.raises(PolicyInvalidError, match="period"):
        load_retention(bad)


def test_the_dagster_job_pseudonymises_what_is_due_and_skips_a_held_document(stores: LifecycleStores) -> None:
    from pipelines.resources import EnclaveResource
    from pipelines.retention import apply_retention_job

    stores.holds().add(scope="document", target=WIRE, reason="audit 2026", user="counsel")
    token = f":{placeholder_token(b'', SUBJECT)}>".encode()
    assert scan_bytes([stores.home], [token]).hits
    as_of = (datetime.now(UTC) + timedelta(days=11 * 365)).isoformat()

    result = apply_retention_job.execute_in_process(
        run_config={"ops": {"apply_retention_rules": {"config": {"as_of": as_of, "user": "scheduler"}}}},
        resources={"enclave": EnclaveResource(home=str(stores.home))})

    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}  # type: ignore[union-attr]
    assert (metadata["erased"], metadata["skipped_held"]) == (0, 1)  # the finance rule is due, but held
    assert metadata["pseudonymised"] == 3  # the three documents shared with group oncology
    assert _chunks_of(stores, WIRE) > 0 and _chunks_of(stores, DISCHARGE) > 0  # kept
    assert scan_bytes([stores.home], [token]).hits == {}  # the subject's link is gone from every byte
    with stores.catalog.session() as s:  # nor can the subject index find anyone in the oncology documents
        assert s.scalar(select(func.count()).select_from(SubjectChunk).join(Chunk).join(Document)
                        .where(Document.uri.like("oncology/%"))) == 0
    seq = int(metadata["receipt_audit_seq"])
    [record] = [r for r in stores.audit.records() if r.seq == seq]
    assert record.kind == "retention" and record.user == "scheduler"
    assert record.body["authenticated_via"] == "dagster"


def test_the_cli_erases_what_is_due_only_once_its_period_has_passed(stores: LifecycleStores, tmp_path: Path) -> None:
    from rag.cli import main

    runner = CliRunner()
    before = stores.catalog.counts().documents
    soon = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    early = runner.invoke(main, ["retention", "apply", "--as-of", soon, "--user", "dpo",
                                 "--receipt", str(tmp_path / "early.json")])
    assert early.exit_code == 0, early.output
    assert stores.catalog.counts().documents == before and _chunks_of(stores, WIRE) > 0

    later = (datetime.now(UTC) + timedelta(days=8 * 365)).isoformat()
    receipt_file = tmp_path / "later.json"
    due = runner.invoke(main, ["retention", "apply", "--as-of", later, "--user", "dpo", "--receipt", str(receipt_file)])
    assert due.exit_code == 0, due.output
    assert "erased 1" in due.output
    assert stores.catalog.counts().documents == before - 1 and _chunks_of(stores, WIRE) == 0
    receipt = json.loads(receipt_file.read_text())
    assert [d["uri"] for d in receipt["receipt"]["documents"]] == [WIRE] and receipt["receipt"]["complete"]
    assert receipt["receipt"]["requested"]["rules_sha256"] == load_retention(POLICIES / "retention.yaml").content_hash
    assert verify_receipt(receipt, stores.audit).ok
    assert runner.invoke(main, ["erase", "verify", str(receipt_file)]).exit_code == 0


def test_the_code_location_schedules_the_retention_job_daily() -> None:
    import dagster as dg

    from pipelines.definitions import defs

    schedule = defs.resolve_schedule_def("daily_retention")
    assert schedule.job_name == "apply_retention_job" and schedule.cron_schedule == "30 3 * * *"
    request = schedule.evaluate_tick(dg.build_schedule_context()).run_requests
    assert request is not None and len(request) == 1
