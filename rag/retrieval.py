"""Retriever: permission-aware hybrid search over the redacted chunks.

    question ─▶ redact (same policy as ingestion) ─▶ allowed ids for the user's groups
             ─▶ dense (FAISS, restricted by IDSelector) + BM25 (restricted by weight mask)
             ─▶ reciprocal rank fusion ─▶ optional cross-encoder rerank ─▶ re-check access ─▶ hits

The access filter is applied before ranking, inside both searches, so a chunk the user may not
see never competes for a place. Hits are then checked once more against the catalog's current
access rule, so a rule revoked a moment ago is honoured even before caches refresh.

Per-request fixed costs are kept off the path: the allowed ids of a group set are one array per
access epoch (so the FAISS selector and the BM25 mask built from it are cached with it), the
catalog's access epoch is asked at most every ``ACCESS_EPOCH_TTL_S`` (new grants show within that
time; revocations at once, through the re-check above), and a newly published index generation is
loaded by one request while the others go on searching the previous one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from connectors.base import AccessRule
from rag.catalog.store import CatalogStore, ChunkView
from rag.questions import QuestionBatcher

Mode = Literal["dense", "bm25", "hybrid"]
RRF_K = 60
ACCESS_EPOCH_TTL_S = 1.0
_ALLOWED_CACHE = 1024


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    document_id: int
    document_version: int
    source_uri: str
    score: float
    text: str
    content_hash: str
    dense_rank: int | None
    lexical_rank: int | None


@dataclass(frozen=True)
class SearchResult:
    question: str  # redacted
    hits: tuple[Hit, ...]
    mode: Mode
    candidates: int  # chunks the user may see
    index_version: str = ""  # the vector index generation searched (what the audit record names)


def rrf(rankings: Iterable[list[int]], k: int = RRF_K) -> dict[int, float]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, cid in enumerate(ranking):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (k + rank + 1)
    return scores


class AccessMap:
    """Which chunk ids each group may see; rebuilt when the catalog's documents change.

    :meth:`allowed` returns the same read-only array for the same group set until the epoch
    changes, so whatever is derived from it (FAISS selector, BM25 mask) can be cached by identity.
    """

    def __init__(self, catalog: CatalogStore, epoch_ttl_s: float = ACCESS_EPOCH_TTL_S) -> None:
        self.catalog = catalog
        self.epoch_ttl_s = epoch_ttl_s
        self._lock = threading.Lock()
        self._epoch: tuple[Any, ...] | None = None
        self._epoch_checked = -float("inf")
        self._public = np.zeros(0, dtype=np.int64)
        self._by_group: dict[str, np.ndarray] = {}
        self._allowed: dict[frozenset[str], np.ndarray] = {}

    def _current_epoch(self) -> tuple[Any, ...] | None:
        now = time.monotonic()
        if self._epoch is None or now - self._epoch_checked >= self.epoch_ttl_s:
            self._epoch_checked = now
            return self.catalog.access_epoch()
        return self._epoch

    def allowed(self, groups: Iterable[str]) -> np.ndarray:
        key = frozenset(groups)
        with self._lock:
            epoch = self._current_epoch()
            if epoch != self._epoch:
                public: list[int] = []
                by_group: dict[str, list[int]] = {}
                for cid, access in self.catalog.chunk_access().items():
                    rule = AccessRule.from_json(access)
                    if rule.public:
                        public.append(cid)
                    for g in rule.groups:
                        by_group.setdefault(g, []).append(cid)
                self._public = np.array(public, dtype=np.int64)
                self._by_group = {g: np.array(ids, dtype=np.int64) for g, ids in by_group.items()}
                self._allowed = {}
                self._epoch = epoch
            found = self._allowed.get(key)
            if found is not None:
                return found
            parts = [self._public] + [self._by_group[g] for g in key if g in self._by_group]
            ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
            ids.flags.writeable = False
            if len(self._allowed) >= _ALLOWED_CACHE:
                self._allowed.pop(next(iter(self._allowed)))
            self._allowed[key] = ids
            return ids


class Retriever:
    def __init__(self, catalog: CatalogStore, embedder: Any, index: Any, lexical: Any, redactor: Any,
                 reranker: Any | None = None, question_batch: int = 1) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.index = index
        self.lexical = lexical
        self.redactor = redactor
        self.reranker = reranker
        self.access = AccessMap(catalog)
        # Redaction and embedding of questions: in the caller's thread (1), or batched across
        # concurrent searches in one thread (rag.questions; the service's setting).
        self.questions = QuestionBatcher(redactor, embedder, max_batch=question_batch)

    def refresh(self) -> None:
        """Follow a newly published index generation (the BM25 index follows its own on search)."""
        self.index.refresh()

    def redact_question(self, question: str) -> str:
        return str(self.redactor.redact(question, self.redactor.detect(question)).text)

    def search(self, question: str, groups: Iterable[str], k: int = 10, mode: Mode = "hybrid",
               depth: int | None = None) -> SearchResult:
        groups = list(groups)
        allowed = self.access.allowed(groups)
        dense_wanted = mode in ("dense", "hybrid") and len(allowed) > 0
        prepared = self.questions.prepare(question, embed=dense_wanted)
        redacted = prepared.redacted
        self.refresh()
        version = self.index.loaded_version
        if len(allowed) == 0:
            return SearchResult(redacted, (), mode, 0, version)
        depth = depth or max(4 * k, 50)
        dense: list[int] = []
        lexical: list[int] = []
        if dense_wanted and prepared.vector is not None:
            _, ids, version = self.index.search_versioned(prepared.vector, depth, allowed_ids=allowed)
            dense = [int(i) for i in ids[0] if i >= 0]
        if mode in ("bm25", "hybrid"):
            lexical = [cid for cid, _ in self.lexical.search(redacted, depth, allowed_ids=allowed)]
        if mode == "dense":
            fused = {cid: 1.0 / (RRF_K + r + 1) for r, cid in enumerate(dense)}
        elif mode == "bm25":
            fused = {cid: 1.0 / (RRF_K + r + 1) for r, cid in enumerate(lexical)}
        else:
            fused = rrf([dense, lexical])
        ranked = sorted(fused, key=lambda c: (-fused[c], c))[: max(k, depth if self.reranker else k)]
        views = self.catalog.chunk_views(ranked)
        admitted = [c for c in ranked if c in views and AccessRule.from_json(views[c].access).admits(groups)]
        scores = {c: fused[c] for c in admitted}
        if self.reranker is not None and admitted:
            rr = self.reranker.score(redacted, [views[c].text for c in admitted])
            scores = dict(zip(admitted, (float(s) for s in rr), strict=True))
            admitted.sort(key=lambda c: -scores[c])
        dense_rank = {c: r for r, c in enumerate(dense)}
        lexical_rank = {c: r for r, c in enumerate(lexical)}
        hits = tuple(self._hit(views[c], scores[c], dense_rank.get(c), lexical_rank.get(c)) for c in admitted[:k])
        return SearchResult(redacted, hits, mode, int(len(allowed)), version)

    @staticmethod
    def _hit(v: ChunkView, score: float, dr: int | None, lr: int | None) -> Hit:
        return Hit(v.id, v.document_id, v.document_version, v.source_uri, score, v.text, v.content_hash, dr, lr)


class CrossEncoderReranker:
    """Optional rerank step (ENCLAVE_RERANK=true): a local cross-encoder model directory, never downloaded."""

    def __init__(self, model_path: str) -> None:
        from rag.errors import ConfigurationError

        if not model_path:
            raise ConfigurationError("ENCLAVE_RERANK is on but ENCLAVE_RERANK_MODEL names no local model directory")
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model_path, local_files_only=True)

    def score(self, query: str, texts: list[str]) -> list[float]:
        return [float(s) for s in self.model.predict([(query, t) for t in texts], show_progress_bar=False)]
