"""Erasure on a PostgreSQL catalog and audit log: the rows are gone, VACUUM FULL rewrote the tables,
no row of any catalog table holds the erased text, and the receipt verifies against the chain there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lifecycle_home import DISCHARGE

from connectors.filesystem import FileShareSource
from rag.config import load_settings
from rag.ingest import IngestionComponents, run_ingestion
from rag.lifecycle.erase import LifecycleStores, erase_document
from rag.lifecycle.probes import scan_bytes, scan_postgres
from rag.lifecycle.receipts import verify_receipt

pytestmark = pytest.mark.postgres

PHRASES = ("right hemicolectomy for stage III colon adenocarcinoma", "Mild grade 1 neuropathy in both hands")


def test_erasure_leaves_no_row_of_the_postgresql_catalog_holding_the_text(
        postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENCLAVE_DATABASE_URL", "ENCLAVE_AUDIT_DATABASE_URL", "ENCLAVE_HOME", "ENCLAVE_TENANT_KEY"):
        monkeypatch.delenv(name, raising=False)
    corpus = tmp_path / "corpus"
    shutil.copytree(Path(__file__).parent / "fixtures" / "sample-corpus", corpus)
    settings = load_settings(home=tmp_path / "home", database_url=postgres_url, parse_workers=1, policy="hipaa")
    components = IngestionComponents(settings)
    try:
        out = run_ingestion(components, FileShareSource(corpus, name="sample"), "filesystem", str(corpus))
        assert out.success, out.failure
    finally:
        components.close()
    stores = LifecycleStores.from_settings(settings)
    try:
        assert scan_postgres(stores.catalog, PHRASES).hits == {"postgresql:chunks": 2}
        receipt = erase_document(stores, DISCHARGE, user="dpo")
        body = receipt["receipt"]
        assert body["complete"], body["probes"]
        assert body["probes"]["database"]["files"] > 0 and body["probes"]["database"]["hits"] == {}
        assert scan_postgres(stores.catalog, PHRASES).hits == {}
        assert scan_bytes([settings.home], [p.encode() for p in PHRASES]).hits == {}
        assert verify_receipt(receipt, stores.audit).ok
    finally:
        stores.close()
