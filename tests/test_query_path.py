"""The query path's per-request costs are cached without changing what a search may return.

- the allowed ids of a group set are one array per access epoch, and change when access changes;
- the FAISS selector cached for that array follows removals (flat ``remove_ids``, HNSW tombstones);
- the BM25 mask cached for it follows a new generation;
- the single-question embedding path gives the vectors the batch path gives.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import insert, update
from test_index import DIM, _vectors  # unit vectors by id, as the index tests use them

from rag.catalog.models import Chunk, Document
from rag.catalog.store import CatalogStore
from rag.config import Settings
from rag.index import FaissIndex
from rag.retrieval import AccessMap


@pytest.fixture
def catalog(tmp_path: Path) -> CatalogStore:
    store = CatalogStore(f"sqlite:///{tmp_path / 'catalog.db'}")
    store.migrate()
    source = store.ensure_source("s", "test", "here")
    documents: list[tuple[str, dict[str, Any]]] = [
        ("public.txt", {"public": True}), ("onc.txt", {"groups": ["oncology"]}), ("fin.txt", {"groups": ["finance"]})]
    with store.engine.begin() as conn:
        for uri, access in documents:
            doc = conn.execute(insert(Document).values(
                source_id=source, uri=uri, sha256="0" * 64, size=0, access=access, policy_name="p",
                policy_hash="0" * 64, pipeline_version="t").returning(Document.id)).scalar_one()
            conn.execute(insert(Chunk), [{"document_id": doc, "document_version": 1, "ordinal": i, "text": f"{uri} {i}",
                                          "content_hash": hashlib.sha256(f"{uri}{i}".encode()).hexdigest(),
                                          "access": access, "policy_name": "p", "policy_hash": "0" * 64}
                                         for i in range(3)])
    return store


def _chunk_ids(catalog: CatalogStore, uri: str) -> set[int]:
    with catalog.session() as s:
        return set(s.scalars(Chunk.__table__.select().with_only_columns(Chunk.id)
                             .join(Document, Document.id == Chunk.document_id).where(Document.uri == uri)))


def test_a_group_set_gets_one_read_only_array_until_access_changes(catalog: CatalogStore) -> None:
    access = AccessMap(catalog, epoch_ttl_s=0.0)
    first = access.allowed(["oncology", "staff"])
    assert access.allowed(["staff", "oncology", "oncology"]) is first  # order and repeats do not matter
    assert not first.flags.writeable
    assert set(first.tolist()) == _chunk_ids(catalog, "public.txt") | _chunk_ids(catalog, "onc.txt")
    with catalog.engine.begin() as conn:  # oncology's document is re-tagged to finance
        conn.execute(update(Document).where(Document.uri == "onc.txt").values(access={"groups": ["finance"]},
                                                                             version=2))
        conn.execute(update(Chunk).where(Chunk.document_id.in_(
            Document.__table__.select().with_only_columns(Document.id).where(Document.uri == "onc.txt")
        )).values(access={"groups": ["finance"]}))
    after = access.allowed(["oncology", "staff"])
    assert after is not first
    assert set(after.tolist()) == _chunk_ids(catalog, "public.txt")


def test_within_the_epoch_interval_the_catalog_is_not_asked_again(catalog: CatalogStore) -> None:
    access = AccessMap(catalog, epoch_ttl_s=3600.0)
    first = access.allowed(["finance"])
    asked = 0
    original = catalog.access_epoch

    def counting() -> tuple[Any, ...]:
        nonlocal asked
        asked += 1
        return original()

    catalog.access_epoch = counting  # type: ignore[method-assign]  # counts the real call
    for _ in range(50):
        assert access.allowed(["finance"]) is first
    assert asked == 0


@pytest.mark.parametrize("exact_max", [1000, 10], ids=["flat", "hnsw"])
def test_a_cached_selector_never_returns_a_chunk_removed_after_it_was_built(tmp_path: Path, exact_max: int) -> None:
    idx = FaissIndex(tmp_path / "idx", DIM, "model@x", exact_max=exact_max, device="cpu")
    idx.reconcile(np.arange(1, 201), _vectors)
    allowed = np.arange(1, 201, 2)
    allowed.flags.writeable = False
    query = _vectors(np.array([51]))
    _, ids = idx.search(query, 5, allowed_ids=allowed)
    assert ids[0][0] == 51
    _, again = idx.search(query, 5, allowed_ids=allowed)  # from the cached selector
    assert again.tolist() == ids.tolist()
    idx.reconcile(np.setdiff1d(np.arange(1, 201), [51]), _vectors)  # chunk 51 deleted
    _, ids = idx.search(query, 5, allowed_ids=allowed)
    assert 51 not in ids[0].tolist()
    assert set(ids[0][ids[0] >= 0].tolist()) <= set(allowed.tolist())


def test_the_question_path_embeds_as_the_batch_path_does(tmp_path: Path) -> None:
    from rag.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(Settings(home=tmp_path).embedding_model, "cpu", threads=1)
    for question in ("How much is oxaliplatin reduced for grade 2 neuropathy?", "visiting hours", "<PERSON> phone"):
        one, batch = embedder.embed_query(question), embedder.embed([question])
        assert one.shape == batch.shape == (1, embedder.dimension) and one.dtype == np.float32
        assert float(one[0] @ batch[0]) > 0.9999
