"""Erasure with real components: a hipaa-redacted corpus ingested twice (two index generations on
disk), then a document or a data subject erased; probes, receipts, holds and the audit log checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from lifecycle_home import DISCHARGE, DISCHARGE_PHRASES, SUBJECT, lifecycle_settings, stores, template_home

from rag.config import load_settings
from rag.lifecycle.erase import LifecycleStores, erase_document, erase_subject
from rag.lifecycle.holds import LegalHoldError
from rag.lifecycle.probes import scan_bytes
from rag.lifecycle.receipts import verify_receipt
from rag.lifecycle.subjects import placeholder_token, subject_key

__all__ = ["stores", "template_home"]  # fixtures, from lifecycle_home


def _generations(home: Path, name: str) -> list[str]:
    return sorted(p.name for p in (home / "index" / name).glob("gen-*"))

def test_erasing_a_document_removes_every_byte_of_it_from_every_generation_and_the_receipt_verifies(
        stores: LifecycleStores) -> None:
    home = stores.home
    assert _generations(home, "vectors") == ["gen-00000001", "gen-00000002"]
    assert scan_bytes([home], DISCHARGE_PHRASES).hits  # the probe sees the text while it is there
    doc_chunks = [c for c, v in stores.catalog.chunk_views(stores.catalog.live_chunk_ids().tolist()).items()
                  if v.source_uri == DISCHARGE]
    assert doc_chunks

    receipt = erase_document(stores, DISCHARGE, user="dpo")

    body = receipt["receipt"]
    assert body["complete"] and body["probes"]["clean"], body["probes"]
    assert body["probes"]["needles"]["text_windows"] > 0 and body["probes"]["needles"]["vector_prefixes"] > 0
    before, after = body["counts"]["before"], body["counts"]["after"]
    assert before["catalog_chunks"] == before["index_vectors"] == before["bm25_postings"] == len(doc_chunks)
    assert set(after.values()) == {0}
    assert body["generations"]["before"]["vectors"] == "gen-00000002"
    assert body["generations"]["after"]["vectors"] == "gen-00000003"
    assert body["rewrite"]["stale_generations_removed"] == 2
    assert _generations(home, "vectors") == ["gen-00000003"] and _generations(home, "bm25") == ["gen-00000003"]
    # independently of the receipt: no byte under ENCLAVE_HOME holds the text, and searches miss it
    assert scan_bytes([home], DISCHARGE_PHRASES).hits == {}
    erased = set(doc_chunks)
    assert not erased & set(stores.lexical().ids().tolist())
    index = stores.vector_index()
    assert index is not None and not erased & set(index.ids().tolist())
    assert all(i not in erased for i, _ in stores.lexical().search("hemicolectomy adenocarcinoma neuropathy", 10))
    assert stores.catalog.counts().documents == 7  # the others stay

    assert verify_receipt(receipt, stores.audit).ok
    edited = json.loads(json.dumps(receipt))
    edited["receipt"]["counts"]["before"]["catalog_chunks"] += 1
    check = verify_receipt(edited, stores.audit)
    assert not check.ok and "edited" in (check.problem or "")


def test_erasing_a_subject_removes_every_chunk_that_held_it_and_its_keyed_token_everywhere(
        stores: LifecycleStores) -> None:
    home = stores.home
    token = f":{placeholder_token(b'', SUBJECT)}>".encode()
    key = subject_key(b"", SUBJECT)
    assert scan_bytes([home], [token]).hits  # the hash operator wrote the subject's token into chunks
    assert scan_bytes([home], [SUBJECT.encode()]).hits == {}  # and never the name

    receipt = erase_subject(stores, SUBJECT, user="dpo", entity_type="PERSON")

    body = receipt["receipt"]
    assert body["complete"], body["probes"]
    assert {d["uri"] for d in body["documents"]} == {DISCHARGE, "oncology/clinic-letter.txt"}
    assert body["counts"]["before"]["subject_index_rows"] >= 2 and body["counts"]["after"]["subject_index_rows"] == 0
    assert scan_bytes([home], [token, key.encode(), SUBJECT.encode(), SUBJECT.lower().encode()]).hits == {}
    text = json.dumps(receipt)
    assert SUBJECT not in text and token.decode() not in text and key not in text
    assert verify_receipt(receipt, stores.audit).ok
    # documents keep their chunks that never held the subject
    assert stores.catalog.counts().documents == 8


def test_the_audit_log_keeps_no_personal_data_of_a_question(stores: LifecycleStores) -> None:
    from rag.query import QueryEngine

    engine = QueryEngine(lifecycle_settings(stores.home))
    try:
        found = engine.search(f"What did the discharge summary say about {SUBJECT}?", user="clinician",
                              groups=["oncology"])
    finally:
        engine.close()
    assert found.result.hits
    [record] = [r for r in stores.audit.records() if r.kind == "search"]
    assert record.body["question_redacted"].endswith("about <PERSON>?")
    audit_db = stores.home / "audit.db"
    token = f":{placeholder_token(b'', SUBJECT)}>".encode()
    assert scan_bytes([audit_db], [b"Okonkwo", b"okonkwo", b"Margaret", token]).hits == {}
    # so erasing the subject afterwards finds nothing of it in the audit log either
    assert erase_subject(stores, SUBJECT, user="dpo")["receipt"]["complete"]


def test_a_held_document_is_refused_by_name_until_released_and_every_hold_change_is_audited(
        stores: LifecycleStores) -> None:
    from rag.cli import main

    runner = CliRunner()
    placed = runner.invoke(main, ["hold", "add", "--document", DISCHARGE, "--reason", "litigation 2026-17",
                                  "--user", "counsel"])
    assert placed.exit_code == 0, placed.output
    with pytest.raises(LegalHoldError, match="litigation 2026-17"):
        erase_document(stores, DISCHARGE, user="dpo")
    with pytest.raises(LegalHoldError, match="hold #1"):
        erase_subject(stores, SUBJECT, user="dpo")
    assert stores.catalog.counts().documents == 8  # nothing was erased
    listed = runner.invoke(main, ["hold", "list"])
    assert "litigation 2026-17" in listed.output

    released = runner.invoke(main, ["hold", "release", "1", "--user", "counsel", "--reason", "settled"])
    assert released.exit_code == 0, released.output
    receipt_file = stores.home.parent / "receipt.json"
    erased = runner.invoke(main, ["erase", "--document", DISCHARGE, "--user", "dpo", "--receipt", str(receipt_file)])
    assert erased.exit_code == 0, erased.output
    assert runner.invoke(main, ["erase", "verify", str(receipt_file)]).exit_code == 0
    edited = json.loads(receipt_file.read_text())
    edited["receipt"]["by"] = "someone-else"
    receipt_file.write_text(json.dumps(edited))
    refused = runner.invoke(main, ["erase", "verify", str(receipt_file)])
    assert refused.exit_code == 1 and "edited" in refused.output

    events = [(r.kind, (r.body["event"] or {}).get("action")) for r in stores.audit.records()]
    assert events == [("hold", "add"), ("hold", "release"), ("erase", None)]
    assert stores.audit.verify().ok


def test_the_subject_token_is_the_one_the_redaction_operator_writes() -> None:
    from rag.policy import load_policy
    from rag.redaction import PresidioRedactor

    settings = load_settings()
    redactor = PresidioRedactor(load_policy("hipaa", settings.policies_dir), tenant_key=b"k" * 32)
    assert redactor.keyed_token("  margaret   OKONKWO ") == placeholder_token(b"k" * 32, "Margaret Okonkwo")
    assert np.array_equal(np.array([subject_key(b"k" * 32, "a b")]), np.array([subject_key(b"k" * 32, "A  B")]))


def test_the_compliance_report_shows_sources_policies_holds_erasures_and_nothing_personal(
        stores: LifecycleStores, tmp_path: Path) -> None:
    from rag.cli import main

    hold = stores.holds().add(scope="source", target="sample", reason="regulator inquiry 7", user="counsel")
    stores.holds().release(hold.id, user="counsel")
    receipt = erase_subject(stores, SUBJECT, user="dpo", entity_type="PERSON")
    page = tmp_path / "report.html"
    out = CliRunner().invoke(main, ["compliance", "report", "--html", str(page)])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert [s["name"] for s in report["sources"]] == ["sample"] and report["sources"][0]["documents"] == 8
    assert {p["name"] for p in report["policies"]["in_force"]} == {"hipaa"}
    assert report["entities_removed"]["PERSON"] > 0
    assert [r["name"] for r in report["retention"]["rules"]] == ["clinical-records", "finance-requests"]
    assert [(h["reason"], h["active"]) for h in report["holds"]] == [("regulator inquiry 7", False)]
    assert [e["seq"] for e in report["erasures"]] == [receipt["audit"]["seq"]]
    assert [e["event"]["action"] for e in report["hold_changes"]] == ["add", "release"]
    assert report["audit_chain"]["ok"]
    html = page.read_text()
    assert "regulator inquiry 7" in html and str(receipt["audit"]["seq"]) in html and "<table>" in html
    assert SUBJECT not in out.output and SUBJECT not in html


def test_an_erased_document_is_not_ingested_again_while_its_file_is_unchanged(
        stores: LifecycleStores, template_home: Path) -> None:
    from connectors.filesystem import FileShareSource
    from rag.ingest import IngestionComponents, run_ingestion

    erase_document(stores, DISCHARGE, user="dpo")
    corpus = template_home.parent / "corpus"
    components = IngestionComponents(lifecycle_settings(stores.home))
    try:
        out = run_ingestion(components, FileShareSource(corpus, name="sample"), "filesystem", str(corpus))
    finally:
        components.close()
    assert out.success, out.failure
    assert (out.counts.new, out.counts.changed, out.counts.documents_written) == (0, 0, 0)
    assert out.counts.still_quarantined == 2  # the empty file, and the erased one
    assert {q.reason for q in stores.catalog.quarantine_list() if q.uri == DISCHARGE} == {"erased"}
    assert scan_bytes([stores.home], DISCHARGE_PHRASES).hits == {}


def test_a_subject_in_clear_is_matched_as_a_whole_word_only(stores: LifecycleStores) -> None:
    from rag.lifecycle.erase import subject_target

    assert subject_target(stores.catalog, b"", "Data Protection").chunk_ids  # the handbook says it, in clear
    assert subject_target(stores.catalog, b"", "protect").chunk_ids == ()  # not a part of "protection"
