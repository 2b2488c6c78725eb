"""Pad an ingested ENCLAVE_HOME with synthetic chunks, for query-path figures at index sizes no test corpus reaches.

    python bench/pad_index.py --chunks 100000      (ENCLAVE_HOME / ENCLAVE_DATABASE_URL name the home)

The chunks are filler: text drawn from a fixed list of ordinary words (so BM25 has a vocabulary and
postings of a realistic shape), random unit vectors under the home's embedding model id (dense
search costs the same whatever the vectors mean), and access rules spread over a few dozen groups
with one chunk in eight public. They are inserted straight into the catalog as one synthetic
source, then the FAISS and BM25 indexes are synced from the catalog as ingestion does
(:func:`rag.ingest.sync_index`), which publishes a new generation of each.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import insert

from rag.catalog.models import Chunk, Document
from rag.catalog.store import CatalogStore
from rag.config import Settings, load_settings
from rag.embedding import SentenceTransformerEmbedder
from rag.index import FaissIndex
from rag.ingest import sync_index
from rag.lexical import Bm25Index

WORDS = ("admission ward patient dose infusion clinic nurse shift rota leave invoice payment supplier audit "
         "policy training report incident safety pharmacy theatre discharge referral appointment imaging "
         "laboratory sample result review consent record access meeting budget contract approval").split()
GROUPS = ["staff", "oncology", "finance", "hr"] + [f"ward-{i}" for i in range(1, 33)]
CHUNKS_PER_DOCUMENT = 50


def pad(settings: Settings, chunks: int, seed: int = 0, rules: dict[str, Any] | None = None) -> float:
    """Add ``chunks`` synthetic chunks and resync both indexes; returns the seconds it took.

    ``rules``, when given, receives each synthetic document's uri and access rule (JSON form), so a
    load test can judge hits on them as it judges the corpus's own.
    """
    started = time.perf_counter()
    rng = random.Random(seed)
    vectors = np.random.default_rng(seed)
    catalog = CatalogStore(settings.database_url)
    embedder = SentenceTransformerEmbedder(settings.embedding_model, "cpu")
    model_id = embedder.model_id
    source_id = catalog.ensure_source("synthetic-padding", "synthetic", "bench/pad_index.py")
    now = datetime.now(UTC)
    with catalog.engine.begin() as conn:
        for start in range(0, chunks, CHUNKS_PER_DOCUMENT):
            n = min(CHUNKS_PER_DOCUMENT, chunks - start)
            access = {"public": True} if rng.random() < 0.125 else {"groups": rng.sample(GROUPS, 2)}
            uri = f"synthetic/doc-{start // CHUNKS_PER_DOCUMENT:06d}.txt"
            if rules is not None:
                rules[uri] = access
            doc_id = conn.execute(insert(Document).values(
                source_id=source_id, uri=uri, sha256=hashlib.sha256(uri.encode()).hexdigest(), size=0, version=1,
                access=access, policy_name="synthetic", policy_hash="0" * 64, pipeline_version="synthetic",
                entity_counts={}, updated_at=now).returning(Document.id)).scalar_one()
            vecs = vectors.standard_normal((n, embedder.dimension)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            rows = []
            for j in range(n):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120)))
                rows.append({"document_id": doc_id, "document_version": 1, "ordinal": j, "text": text,
                             "content_hash": hashlib.sha256(text.encode()).hexdigest(), "access": access,
                             "policy_name": "synthetic", "policy_hash": "0" * 64, "entity_counts": {},
                             "pii_checked": True, "embedding": vecs[j].tobytes(), "embedding_model": model_id,
                             "created_at": now})
            conn.execute(insert(Chunk), rows)
    index = FaissIndex(settings.index_dir / "vectors", embedder.dimension, model_id, settings.exact_index_max)
    sync_index(catalog, index, Bm25Index(settings.index_dir / "bm25"))
    catalog.dispose()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"padded with {args.chunks} chunks in {pad(load_settings(), args.chunks, args.seed):.1f} s")  # noqa: T201


if __name__ == "__main__":
    main()
