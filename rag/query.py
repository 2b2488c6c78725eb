"""QueryEngine: search and ask for a verified principal, audited before anything is returned.

The one code path behind ``enclave search``/``ask``, the HTTP service and ``enclave eval access``:

    search: Retriever (redact question, filter by access, hybrid rank) ─▶ AuditLog.append ─▶ hits
    ask:    search ─▶ Answerer (prompt, Generator, schema check) ─▶ AuditLog.append ─▶ answer

If the audit record cannot be written, the caller gets the error, not the result. A failure of
the model is an outcome that is audited like any other, never an unaudited exception.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rag.answer import Answer, Answerer, Passage
from rag.audit import AuditEntry, AuditLog, AuditRecord, Kind, Outcome, RetrievedChunkRecord
from rag.catalog.store import CatalogStore
from rag.config import Settings
from rag.embedding import SentenceTransformerEmbedder
from rag.errors import GenerationError
from rag.index import FaissIndex
from rag.lexical import Bm25Index
from rag.llm.base import Generator, SamplingParams
from rag.plugins import distribution_of
from rag.policy import Policy, load_policy
from rag.redaction import PresidioRedactor
from rag.retrieval import CrossEncoderReranker, Hit, Mode, Retriever, SearchResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditedSearch:
    result: SearchResult
    audit: AuditRecord
    request_id: str


@dataclass(frozen=True)
class AuditedAnswer:
    result: SearchResult
    answer: Answer
    audit: AuditRecord
    request_id: str


class QueryEngine:
    def __init__(self, settings: Settings, *, generator: Generator | None = None) -> None:
        settings.require_secrets()  # questions are redacted and hashed under the tenant key
        self.settings = settings
        self.catalog = CatalogStore(settings.database_url)
        self.catalog.migrate()
        self.audit = AuditLog(settings.audit_database_url)
        self.audit.migrate(app_role=settings.audit_app_role or None)
        self.policy: Policy = load_policy(settings.policy, settings.policies_dir)
        self.embedder = SentenceTransformerEmbedder(settings.embedding_model, settings.device,
                                                    settings.embedding_batch_size, settings.embedding_precision)
        self.index = FaissIndex(settings.index_dir / "vectors", self.embedder.dimension, self.embedder.model_id,
                                settings.exact_index_max, settings.device, search_threads=settings.search_threads)
        log.info("query engine uses %s", self.index.build.describe())
        self.lexical = Bm25Index(settings.index_dir / "bm25")
        self.redactor = PresidioRedactor(self.policy, tenant_key=settings.tenant_key.get_secret_value().encode())
        reranker = CrossEncoderReranker(settings.rerank_model) if settings.rerank else None
        self.retriever = Retriever(self.catalog, self.embedder, self.index, self.lexical, self.redactor, reranker)
        self._generator = generator
        self._generator_distribution: str | None = None
        self._answerer: Answerer | None = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        self.redactor.warm_up()
        self.embedder.warm_up()
        # Load the model now, not in the first reader's time to first token. A model server that
        # is down is not a reason to refuse to start: each answer then says so (outcome "error").
        warm = getattr(self.answerer.generator, "warm_up", None)
        if warm is not None:
            try:
                warm()
            except GenerationError as exc:
                log.warning("the model is not ready: %s", exc)

    @property
    def answerer(self) -> Answerer:
        with self._lock:
            if self._answerer is None:
                if self._generator is None:
                    from rag.llm.base import generator_distribution, generator_for

                    self._generator = generator_for(self.settings)
                    self._generator_distribution = generator_distribution(self.settings.llm_backend,
                                                                          self.settings.allowed_plugins)
                else:
                    self._generator_distribution = distribution_of(self._generator)
                self._answerer = Answerer.from_settings(self.settings, self._generator)
            return self._answerer

    def question_hash(self, question: str, redacted: str | None) -> str:
        """Keyed hash of the question as asked: provable later, unreadable without the tenant key."""
        key = self.settings.tenant_key.get_secret_value().encode()
        if key:
            return "hmac-sha256:" + hmac.new(key, question.encode(), hashlib.sha256).hexdigest()
        # without a tenant key an unkeyed hash of the raw question could be brute-forced: hash the
        # redacted one (already computed by retrieval; redacted again only if retrieval failed first)
        if redacted is None:
            redacted = self.retriever.redact_question(question)
        return "sha256-redacted:" + hashlib.sha256(redacted.encode()).hexdigest()

    def _entry(self, *, kind: Kind, request_id: str, user: str, groups: tuple[str, ...], purpose: str | None,
               question: str, result: SearchResult | None, shown: set[int], outcome: Outcome, started: float,
               via: str | None, answer: Answer | None = None, error_type: str | None = None,
               extra: dict[str, Any] | None = None) -> AuditEntry:
        """The audit entry of one request; ``extra`` sets further AuditEntry fields (rag.conversation's
        prompt/answer stages and turns, the model named before it answered)."""
        gen = answer.generation if answer is not None else None
        llm: dict[str, Any] = {}
        if kind != "search":
            params = self.answerer.params
            llm = {"llm_backend": gen.backend if gen else self.settings.llm_backend,
                   "llm_distribution": self._generator_distribution,
                   "llm_model": gen.model if gen else None, "llm_weights_hash": gen.model_hash if gen else None,
                   "sampling": _sampling(params),
                   "prompt_template_version": answer.prompt_template_version if answer
                   else self.answerer.PROMPT_TEMPLATE_VERSION,
                   "answer": answer.text if answer else None,
                   "prompt_tokens": gen.prompt_tokens if gen else None,
                   "completion_tokens": gen.completion_tokens if gen else None}
        hits = result.hits if result is not None else ()
        return AuditEntry(
            request_id=request_id, kind=kind, user=user, groups=groups, authenticated_via=via, purpose=purpose,
            question_redacted=result.question if result is not None else "",
            question_hash=self.question_hash(question, result.question if result is not None else None),
            chunks=tuple(RetrievedChunkRecord(h.chunk_id, h.document_id, h.document_version, h.content_hash,
                                              float(h.score), h.chunk_id in shown) for h in hits),
            policy_name=self.policy.name, policy_hash=self.policy.content_hash, index_version=self.index.version,
            embedding_model=self.embedder.model_name, embedding_model_hash=self.embedder.weights_sha256,
            outcome=outcome, error_type=error_type,
            latency_ms=(time.perf_counter() - started) * 1000.0, **{**llm, **(extra or {})})

    def search(self, question: str, *, user: str, groups: list[str], k: int = 10, mode: Mode = "hybrid",
               purpose: str | None = None, kind: Kind = "search", request_id: str | None = None,
               via: str | None = None) -> AuditedSearch:
        """Hits for ``user``, audited first. ``via`` is how that identity was verified (recorded)."""
        started = time.perf_counter()
        # The service passes its own id, so its reply, an error body and the audit record name the same one.
        request_id = request_id or uuid.uuid4().hex
        g = tuple(sorted(set(groups)))
        try:
            result = self.retriever.search(question, g, k=k, mode=mode)
        except Exception as exc:
            self.audit.append(self._entry(kind=kind, request_id=request_id, user=user, groups=g, purpose=purpose,
                                          question=question, result=None, shown=set(), outcome="error",
                                          started=started, via=via, error_type=type(exc).__name__))
            raise
        outcome: Outcome = "ok" if result.hits else "no_results"
        record = self.audit.append(self._entry(kind=kind, request_id=request_id, user=user, groups=g,
                                               purpose=purpose, question=question, result=result, shown=set(),
                                               outcome=outcome, started=started, via=via))
        return AuditedSearch(result, record, request_id)

    def ask(self, question: str, *, user: str, groups: list[str], k: int = 5, purpose: str | None = None,
            kind: Kind = "ask", request_id: str | None = None, via: str | None = None) -> AuditedAnswer:
        """A cited answer for ``user``, audited first. ``via`` is how that identity was verified (recorded)."""
        started = time.perf_counter()
        request_id = request_id or uuid.uuid4().hex
        g = tuple(sorted(set(groups)))
        result: SearchResult | None = None
        try:
            result = self.retriever.search(question, g, k=k, mode="hybrid")
            passages = [_passage(i, h) for i, h in enumerate(result.hits)]
            answer = self.answerer.answer(result.question, passages)
        except Exception as exc:
            self.audit.append(self._entry(kind=kind, request_id=request_id, user=user, groups=g, purpose=purpose,
                                          question=question, result=result, shown=set(), outcome="error",
                                          started=started, via=via, error_type=type(exc).__name__))
            raise
        by_label = {p.passage_id: p.chunk_id for p in passages}
        shown = {by_label[pid] for pid in answer.shown_passage_ids if pid in by_label}
        record = self.audit.append(self._entry(kind=kind, request_id=request_id, user=user, groups=g,
                                               purpose=purpose, question=question, result=result, shown=shown,
                                               outcome=answer.outcome, started=started, via=via, answer=answer,
                                               error_type=answer.error))
        return AuditedAnswer(result, answer, record, request_id)

    def close(self) -> None:
        self.catalog.dispose()
        self.audit.dispose()


def _passage(i: int, h: Hit) -> Passage:
    return Passage(passage_id=f"P{i + 1}", chunk_id=h.chunk_id, document_id=h.document_id, source_uri=h.source_uri,
                   text=h.text)


def _sampling(params: SamplingParams) -> dict[str, Any]:
    return {"temperature": params.temperature, "max_tokens": params.max_tokens, "top_p": params.top_p,
            "seed": params.seed}
