"""A running service follows a newly published index generation under load, without a failed request.

The sample corpus is ingested, the HTTP service started on loopback, and clients search without
pause while a second ingestion run adds a document. Every request must succeed; the new document
must be found within a few seconds of the run publishing its generation, without a restart; and
each audit record names the index generation its search used, the old one or a newer one.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from llm_server import serving

from pipelines.run import run_ingest
from rag.audit import AuditLog
from rag.config import Settings
from rag.generations import GenerationDirectory
from rag.index import FaissIndex
from rag.service.app import create_app
from rag.service.auth import issue_token

JWT_KEY = "test-signing-key-that-is-long-enough-for-hs256"
NEW_WORD = "quokkaberry"  # in no document until the second run
FOLLOW_WITHIN_S = 5.0


@pytest.fixture
def corpus_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Settings]]:
    from conftest import SAMPLE_CORPUS

    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLE_CORPUS, corpus)
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ENCLAVE_DATABASE_URL", raising=False)
    monkeypatch.delenv("ENCLAVE_AUDIT_DATABASE_URL", raising=False)
    out = run_ingest(str(corpus), source_name="sample")
    assert out.success, out.failure
    yield corpus, Settings(home=tmp_path / "home", jwt_key=JWT_KEY)


@pytest.fixture
def service(corpus_and_home: tuple[Path, Settings]) -> Iterator[str]:
    _, settings = corpus_and_home
    with serving(create_app(settings), startup_s=120) as url:
        yield url


def _vector_version(settings: Settings) -> str:
    manifest = GenerationDirectory(settings.index_dir / "vectors").manifest()
    assert manifest is not None
    return f"gen-{manifest['generation']}:{manifest['index_sha256'][:16]}"


def test_the_service_follows_a_new_generation_under_load_without_a_failed_request(
        corpus_and_home: tuple[Path, Settings], service: str) -> None:
    corpus, settings = corpus_and_home
    headers = {"Authorization": f"Bearer {issue_token(settings, 'visitor', ['visitors'])}"}
    old_version = _vector_version(settings)
    statuses: list[int] = []
    stop = threading.Event()

    def client(question: str) -> None:
        with httpx.Client(base_url=service, timeout=60, trust_env=False) as http:
            while not stop.is_set():
                try:
                    statuses.append(http.post("/v1/search", json={"question": question}, headers=headers).status_code)
                except httpx.HTTPError:
                    statuses.append(0)

    clients = [threading.Thread(target=client, args=(q,)) for q in ("visiting hours", "car park", NEW_WORD)]
    for c in clients:
        c.start()
    try:
        time.sleep(1.0)
        (corpus / "public" / "quokka-notice.txt").write_text(
            f"Notice to visitors: the {NEW_WORD} stall by the main entrance is open on weekdays.\n")
        assert run_ingest(str(corpus), source_name="sample").success
        published = time.monotonic()
        new_version = _vector_version(settings)
        assert new_version != old_version
        found_after = None
        with httpx.Client(base_url=service, timeout=60, trust_env=False) as http:
            while time.monotonic() - published < FOLLOW_WITHIN_S:
                reply = http.post("/v1/search", json={"question": NEW_WORD}, headers=headers)
                statuses.append(reply.status_code)
                if any(h["source_uri"].endswith("quokka-notice.txt") for h in reply.json()["hits"]):
                    found_after = time.monotonic() - published
                    found_seq = reply.json()["audit_id"]
                    break
                time.sleep(0.1)
        time.sleep(0.5)  # load goes on across the new generation
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=60)
    assert found_after is not None, f"the new document was not found within {FOLLOW_WITHIN_S} s of publication"
    assert len(statuses) > 20 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    log = AuditLog(settings.audit_database_url)
    try:
        assert log.verify().ok
        records = list(log.records())
    finally:
        log.dispose()
    versions = [r.body["index_version"] for r in records]
    assert versions[0] == old_version and versions[-1] == new_version
    # every search was answered by the old generation or one published since, never by nothing
    first, last = _generation(old_version), _generation(new_version)
    assert all(first <= _generation(v) <= last for v in versions), set(versions)
    [found] = [r for r in records if r.seq == found_seq]
    assert found.body["index_version"] == new_version  # the record names the generation that answered


def _generation(version: str) -> int:
    return int(version.split(":")[0].removeprefix("gen-"))


def test_an_index_refreshes_to_the_newest_generation_after_the_one_it_held_was_removed(
        corpus_and_home: tuple[Path, Settings]) -> None:
    _, settings = corpus_and_home
    from rag.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(settings.embedding_model)
    reader = FaissIndex(settings.index_dir / "vectors", embedder.dimension, embedder.model_id)
    writer = FaissIndex(settings.index_dir / "vectors", embedder.dimension, embedder.model_id)
    before = reader.loaded_version
    writer.save()  # a new generation; the one the reader holds is removed from disk
    writer.save()
    assert not (settings.index_dir / "vectors" / f"gen-{reader.generation:08d}").exists()
    assert reader.refresh() is True
    assert reader.loaded_version == writer.loaded_version != before
    assert len(reader) == len(writer)
