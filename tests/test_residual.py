"""The independent residual-PII check (rag.residual): a detector other than the one that redacted
(patterns + vocabulary, no NER), run in the workers and in the blocking no_residual_pii check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from pipelines.run import run_ingest
from rag.catalog.models import Chunk, Document, QuarantineRecord
from rag.catalog.store import CatalogStore
from rag.config import Settings
from rag.index import FaissIndex
from rag.policy import load_policy
from rag.redaction import PresidioRedactor
from rag.residual import ResidualScanner, check_chunks

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies"
# Names spaCy's small model does not take for people, in sentences with no cue word before them.
MISSED_BY_NER = ["The referral came from Вячеслав Воробьёв at the district clinic.",
                 "Follow-up is booked; Gráinne Ní Dhomhnaill will bring the diary.",
                 "Transport was arranged and Babajide Ogunleye signed the form.",
                 "The nurse spoke with Kudryavtsev about the dose.",
                 "Patient 佐藤健太 was seen today."]


@pytest.fixture(scope="module")
def ner_only() -> PresidioRedactor:
    """The default policy's redactor without its vocabulary detector: Presidio + spaCy NER + patterns."""
    redactor = PresidioRedactor(replace(load_policy("default", POLICIES), vocabulary=False))
    redactor.warm_up()
    return redactor


@pytest.fixture(scope="module")
def scanner() -> ResidualScanner:
    s = ResidualScanner(load_policy("default", POLICIES))
    s.warm_up()
    return s


def test_the_residual_detector_runs_no_ner_model(scanner: ResidualScanner) -> None:
    analyzer = scanner._analyzer
    assert analyzer is not None
    assert not analyzer.nlp_engine.nlp["en"].has_pipe("ner")
    names = {r.name for r in analyzer.registry.recognizers}
    assert "SpacyRecognizer" not in names and "VocabularyRecognizer" not in names
    assert {"CreditCardRecognizer", "IbanRecognizer", "EmailRecognizer", "PhoneRecognizer"} <= names


def test_it_finds_the_names_an_ner_redactor_let_through(ner_only: PresidioRedactor,
                                                        scanner: ResidualScanner) -> None:
    redacted = [r.text for r in ner_only.redact_many(MISSED_BY_NER)]
    assert redacted == MISSED_BY_NER  # the first detector removed nothing
    findings = scanner.scan(redacted)
    assert all(any(f.entity_type == "PERSON" for f in found) for found in findings), findings


def test_it_passes_what_the_default_policy_redacted(scanner: ResidualScanner) -> None:
    default = PresidioRedactor(load_policy("default", POLICIES))
    texts = MISSED_BY_NER + ["Call Mario Kappel at 212-555-0143 or write to mario.kappel@example.com.",
                             "Home visit at Kungsvägen 7, lgh 1102, 113 51 Stockholm, Sweden.",
                             "Oxaliplatin was reduced after the second cycle; review in March."]
    redacted = [r.text for r in default.redact_many(texts)]
    assert "<PERSON>" in redacted[0] and "<STREET_ADDRESS>" in redacted[6]
    assert scanner.scan(redacted) == [[] for _ in texts]


def test_check_chunks_reports_flagged_chunks_and_an_unavailable_policy(scanner: ResidualScanner) -> None:
    from rag.errors import PolicyInvalidError

    def scanner_for(name: str) -> ResidualScanner:
        if name != "default":
            raise PolicyInvalidError(f"policy {name} cannot be read")
        return scanner

    rows = [(1, "Nothing personal here.", "default"), (2, MISSED_BY_NER[2], "default"),
            (3, "Also clean.", "gone")]
    report, clean = check_chunks(rows, scanner_for)
    assert clean == [1] and report.flagged_chunks == [2] and report.by_type == {"PERSON": 1}
    assert report.policy_unavailable == "gone" and report.checked == 3 and not report.passed


def _write_ner_only_policy(tmp_path: Path) -> Path:
    site = tmp_path / "site-policies" / "ner-only.yaml"
    site.parent.mkdir()
    text = (POLICIES / "default.yaml").read_text().replace("name: default", "name: ner-only", 1)
    site.write_text(text.replace("  vocabulary: true", "  vocabulary: false", 1))
    return site


def test_a_document_redaction_left_a_name_in_is_quarantined_and_nothing_of_it_is_stored(
        enclave_home: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "referral.txt").write_text("Referral letter\n\n" + MISSED_BY_NER[0] + "\n")
    (docs / "rota.txt").write_text("Ward rota\n\nThe night shift starts at eight; badges are worn at all times.\n")
    out = run_ingest(str(docs), source_name="clinic", policy=str(_write_ner_only_policy(tmp_path)), public=True)
    assert out.success, out.failure
    assert out.counts.quarantine_by_reason == {"residual_pii": 1}
    settings = Settings(home=enclave_home)
    catalog = CatalogStore(settings.database_url)
    with catalog.session() as s:
        assert set(s.scalars(select(Document.uri))) == {"rota.txt"}
        record = s.scalars(select(QuarantineRecord)).one()
        assert (record.uri, record.reason) == ("referral.txt", "residual_pii")
        assert "PERSON" in record.detail and "Воробьёв" not in record.detail
    catalog.dispose()
    for path in enclave_home.rglob("*"):
        if path.is_file():
            assert "Воробьёв".encode() not in path.read_bytes(), path.name


def test_no_residual_pii_fails_and_keeps_an_unverified_chunk_out_of_the_index(
        enclave_home: Path, sample_corpus: Path) -> None:
    assert run_ingest(str(sample_corpus), source_name="sample").success
    settings = Settings(home=enclave_home)
    catalog = CatalogStore(settings.database_url)
    with catalog.session() as s, s.begin():
        # a chunk no worker verified (stored by an older pipeline, say) that still holds a name
        first = s.scalars(select(Chunk).order_by(Chunk.id)).first()
        assert first is not None
        extra = Chunk(document_id=first.document_id, document_version=first.document_version, ordinal=99,
                      text=MISSED_BY_NER[2], content_hash="0" * 64, access=first.access,
                      policy_name=first.policy_name, policy_hash=first.policy_hash, entity_counts={},
                      pii_checked=False)
        s.add(extra)
        s.flush()
        chunk_id = extra.id
    catalog.dispose()
    out = run_ingest(str(sample_corpus), source_name="sample")
    assert not out.success  # the blocking check failed; embedding and indexing did not run
    catalog = CatalogStore(settings.database_url)
    with catalog.session() as s:
        chunk = s.get(Chunk, chunk_id)
        assert chunk is not None and chunk.embedding is None and not chunk.pii_checked
    catalog.dispose()
    manifest = json.loads((settings.index_dir / "vectors" / "manifest.json").read_text())
    index = FaissIndex(settings.index_dir / "vectors", manifest["dim"], manifest["model_id"], device="cpu")
    assert chunk_id not in index.ids().tolist()


def test_pii_free_text_redaction_leaves_alone_passes_the_check(scanner: ResidualScanner) -> None:
    # what redaction judged ordinary words ("Antiemetics:" read as a speaker label, a title in
    # headline style whose words the text also writes in lower case) is no residual name
    redactor = PresidioRedactor(load_policy("default", POLICIES))
    texts = ["Supportive care\n\nAntiemetics: Ondansetron 8 mg and Dexamethasone 8 mg before the infusion.",
             "Scatter Storage Techniques\n\nScatter storage techniques as a method for symbol tables are reviewed."]
    redacted = [r.text for r in redactor.redact_many(texts)]
    assert redacted == texts
    assert scanner.scan(redacted) == [[], []]
