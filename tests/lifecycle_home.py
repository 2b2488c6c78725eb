"""A hipaa-redacted copy of the sample corpus ingested twice, for the lifecycle tests: the first index
generation of each index is put back on disk beside the second (a stale generation erasure must clear)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.filesystem import FileShareSource
from rag.config import Settings, load_settings
from rag.ingest import IngestionComponents, run_ingestion
from rag.lifecycle.erase import LifecycleStores

DISCHARGE = "oncology/discharge-summary.txt"
SUBJECT = "Margaret Okonkwo"
# Content only the discharge summary holds (the probes' own windows are checked as well).
DISCHARGE_PHRASES = (b"right hemicolectomy for stage III colon adenocarcinoma",
                     b"Mild grade 1 neuropathy in both hands")
LETTER = ("Clinic letter\n\nDear colleague, I saw Margaret Okonkwo in the oncology clinic today. "
          "She reports tingling in her fingertips since the last cycle and asks about cold sensitivity. "
          "We agreed to continue treatment with the reduced oxaliplatin dose and review in a fortnight.\n")


def lifecycle_settings(home: Path) -> Settings:
    return load_settings(home=home, parse_workers=1, policy="hipaa", database_url="", audit_database_url="")


def _ingest(home: Path, corpus: Path) -> None:
    components = IngestionComponents(lifecycle_settings(home))
    try:
        out = run_ingestion(components, FileShareSource(corpus, name="sample"), "filesystem", str(corpus))
        assert out.success, out.failure
    finally:
        components.close()


@pytest.fixture(scope="module")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home ingested twice; the first generation of each index is kept aside on disk (a stale generation)."""
    root = tmp_path_factory.mktemp("lifecycle")
    corpus = root / "corpus"
    shutil.copytree(Path(__file__).parent / "fixtures" / "sample-corpus", corpus)
    (corpus / "oncology" / "clinic-letter.txt").write_text(LETTER)
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("ENCLAVE_DATABASE_URL", "ENCLAVE_AUDIT_DATABASE_URL", "ENCLAVE_HOME", "ENCLAVE_TENANT_KEY"):
            mp.delenv(name, raising=False)
        _ingest(home, corpus)
        kept = root / "kept"
        for name in ("vectors", "bm25"):
            shutil.copytree(home / "index" / name / "gen-00000001", kept / name)
        (corpus / "public" / "notice.txt").write_text("The cafeteria opens at seven on weekdays and at nine on "
                                                      "weekends; the menu is posted by the lifts.\n")
        _ingest(home, corpus)
        for name in ("vectors", "bm25"):
            assert json.loads((home / "index" / name / "manifest.json").read_text())["generation"] == 2
            shutil.copytree(kept / name, home / "index" / name / "gen-00000001")
    return home


@pytest.fixture
def stores(template_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LifecycleStores]:
    home = tmp_path / "home"
    shutil.copytree(template_home, home)
    for name in ("ENCLAVE_DATABASE_URL", "ENCLAVE_AUDIT_DATABASE_URL", "ENCLAVE_TENANT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENCLAVE_HOME", str(home))
    built = LifecycleStores.from_settings(lifecycle_settings(home))
    yield built
    built.close()
