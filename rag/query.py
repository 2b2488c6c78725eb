"""QueryEngine: search and ask for a verified principal, audited before anything is returned.

The one code path behind ``enclave search``/``ask``, the HTTP service and ``enclave eval access``:

    search: Retriever (redact question, filter by access, hybrid rank) ─▶ AuditLog.append ─▶ hits
    ask:    search ─▶ Answerer (prompt, Generator, schema check) ─▶ AuditLog.append ─▶ answer

If the audit record cannot be written, the caller gets the error, not the result. A failure of
the model is an outcome that is audited like any other, never an unaudited exception. Any other
failure is audited by a record built from what is already known (never by re-running the step
that failed) and then raised as :class:`~rag.errors.RequestFailedError`; a request refused before
it reaches the engine (too large, invalid, over its rate) is audited by :meth:`record_refusal`.
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
from rag.errors import GenerationError, RequestFailedError
from rag.index import FaissIndex
from rag.lexical import Bm25Index
from rag.lifecycle.subjects import without_tokens
from rag.lifecycle.vault import Vault
from rag.llm.base import Generator, SamplingParams
from rag.plugins import distribution_of
from rag.policy import Policy, load_policy
from rag.redaction import PresidioRedactor
from rag.retrieval import CrossEncoderReranker, Hit, Mode, Retriever, SearchResult
from rag.schema import ensure_schema

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
        # Schemas are upgraded by `enclave db upgrade` (as their owner), not here: the service runs as
        # the app role. Only embedded SQLite homes, which have no roles, are upgraded in place.
        ensure_schema(settings)
        self.catalog = CatalogStore(settings.database_url)
        self.audit = AuditLog(settings.audit_database_url)
        self.policy: Policy = load_policy(settings.policy, settings.policies_dir)
        threads = settings.query_threads or 1
        self.embedder = SentenceTransformerEmbedder(settings.embedding_model, settings.device,
                                                    settings.embedding_batch_size, settings.embedding_precision,
                                                    threads=threads, query_models_dir=settings.models_dir,
                                                    query_encoder=settings.query_encoder)
        self.embedder.warm_up_query()  # the question path only: the service never embeds passages
        self.index = FaissIndex(settings.index_dir / "vectors", self.embedder.dimension, self.embedder.model_id,
                                settings.exact_index_max, settings.device, search_threads=settings.search_threads)
        log.info("query engine uses %s", self.index.build.describe())
        self.lexical = Bm25Index(settings.index_dir / "bm25")
        self.redactor = PresidioRedactor(self.policy, tenant_key=settings.tenant_key.get_secret_value().encode())
        reranker = CrossEncoderReranker(settings.rerank_model) if settings.rerank else None
        self.retriever = Retriever(self.catalog, self.embedder, self.index, self.lexical, self.redactor, reranker,
                                   question_batch=settings.query_batch)
        self.vault = Vault.from_settings(settings, self.catalog, self.audit)
        self._generator = generator
        self._generator_distribution: str | None = None
        self._answerer: Answerer | None = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        self.redactor.warm_up()
        self.embedder.warm_up_query()
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
        """Keyed hash of the question as asked: provable later, unreadable without the tenant key.

        Never fails: it runs on the error path too, where the question may be the very input that
        made a step fail (a lone surrogate is hashed by its code points, ``surrogatepass``).
        """
        key = self.settings.tenant_key.get_secret_value().encode()
        if key:
            raw = question.encode("utf-8", "surrogatepass")
            return "hmac-sha256:" + hmac.new(key, raw, hashlib.sha256).hexdigest()
        # without a tenant key an unkeyed hash of the raw question could be brute-forced: hash the
        # redacted one, and none at all when redaction did not produce it (never redact again here)
        if redacted is None:
            return "none:not-redacted"
        return "sha256-redacted:" + hashlib.sha256(redacted.encode("utf-8", "surrogatepass")).hexdigest()

    def audit_entry(self, *, kind: Kind, request_id: str, user: str, groups: tuple[str, ...], purpose: str | None,
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
            question_redacted=without_tokens(result.question) if result is not None else "",
            question_hash=self.question_hash(question, result.question if result is not None else None),
            chunks=tuple(RetrievedChunkRecord(h.chunk_id, h.document_id, h.document_version, h.content_hash,
                                              float(h.score), h.chunk_id in shown) for h in hits),
            policy_name=self.policy.name, policy_hash=self.policy.content_hash,
            index_version=result.index_version if result is not None and result.index_version
            else self.index.loaded_version,
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
        question = valid_unicode(question)
        purpose_redacted: str | None = None
        try:
            purpose_redacted = self._redact_purpose(purpose)
            result = self.retriever.search(question, g, k=k, mode=mode)
        except Exception as exc:
            raise self._failed(kind=kind, request_id=request_id, user=user, groups=g, purpose=purpose_redacted,
                               question=question, result=None, started=started, via=via, exc=exc) from exc
        outcome: Outcome = "ok" if result.hits else "no_results"
        record = self.audit.append(self.audit_entry(kind=kind, request_id=request_id, user=user, groups=g,
                                               purpose=purpose_redacted, question=question, result=result,
                                               shown=set(), outcome=outcome, started=started, via=via))
        return AuditedSearch(result, record, request_id)

    def ask(self, question: str, *, user: str, groups: list[str], k: int = 5, purpose: str | None = None,
            kind: Kind = "ask", request_id: str | None = None, via: str | None = None) -> AuditedAnswer:
        """A cited answer for ``user``, audited first. ``via`` is how that identity was verified (recorded)."""
        started = time.perf_counter()
        request_id = request_id or uuid.uuid4().hex
        g = tuple(sorted(set(groups)))
        question = valid_unicode(question)
        result: SearchResult | None = None
        purpose_redacted: str | None = None
        try:
            purpose_redacted = self._redact_purpose(purpose)
            result = self.retriever.search(question, g, k=k, mode="hybrid")
            passages = [passage_of(i, h) for i, h in enumerate(result.hits)]
            answer = self.answerer.answer(result.question, passages)
        except Exception as exc:
            raise self._failed(kind=kind, request_id=request_id, user=user, groups=g, purpose=purpose_redacted,
                               question=question, result=result, started=started, via=via, exc=exc) from exc
        by_label = {p.passage_id: p.chunk_id for p in passages}
        shown = {by_label[pid] for pid in answer.shown_passage_ids if pid in by_label}
        record = self.audit.append(self.audit_entry(kind=kind, request_id=request_id, user=user, groups=g,
                                               purpose=purpose_redacted, question=question, result=result,
                                               shown=shown,
                                               outcome=answer.outcome, started=started, via=via, answer=answer,
                                               error_type=answer.error))
        return AuditedAnswer(result, answer, record, request_id)

    def render(self, texts: list[str], *, user: str, groups: list[str] | tuple[str, ...], via: str | None,
               request_id: str) -> list[str]:
        """Per-role view, after generation and its audit record: pseudonyms back to originals for the groups
        allowed to see them (ENCLAVE_ORIGINAL_VIEW_GROUPS), audited; tokens for everyone else."""
        return self.vault.render(texts, user=user, groups=groups, via=via, request_id=request_id)

    def _redact_purpose(self, purpose: str | None) -> str | None:
        """The declared purpose is free text from the caller: it is stored redacted, like the question."""
        return self.retriever.redact_question(valid_unicode(purpose)) if purpose else purpose

    def _failure_entry(self, *, kind: Kind, request_id: str, user: str, groups: tuple[str, ...],
                       purpose: str | None, question: str | None, result: SearchResult | None, started: float,
                       via: str | None, outcome: Outcome, error_type: str) -> AuditEntry:
        """A record from what is known already: no redaction, no model, nothing that could fail again."""
        hits = result.hits if result is not None else ()
        llm: dict[str, Any] = {} if kind == "search" else {"llm_backend": self.settings.llm_backend}
        return AuditEntry(
            request_id=request_id, kind=kind, user=user, groups=groups, authenticated_via=via, purpose=purpose,
            question_redacted=result.question if result is not None else "",
            question_hash=(self.question_hash(question, result.question if result is not None else None)
                           if question is not None else "none:not-read"),
            chunks=tuple(RetrievedChunkRecord(h.chunk_id, h.document_id, h.document_version, h.content_hash,
                                              float(h.score), False) for h in hits),
            policy_name=self.policy.name, policy_hash=self.policy.content_hash, index_version=self.index.version,
            embedding_model=self.embedder.model_name, embedding_model_hash=self.embedder.weights_sha256,
            outcome=outcome, error_type=error_type, latency_ms=(time.perf_counter() - started) * 1000.0, **llm)

    def _failed(self, *, kind: Kind, request_id: str, user: str, groups: tuple[str, ...], purpose: str | None,
                question: str, result: SearchResult | None, started: float, via: str | None,
                exc: Exception) -> RequestFailedError:
        """Audit a failed request; the caller raises what this returns (the cause chained)."""
        error_type = type(exc).__name__
        self.audit.append(self._failure_entry(kind=kind, request_id=request_id, user=user, groups=groups,
                                              purpose=purpose, question=question, result=result,
                                              started=started, via=via, outcome="error", error_type=error_type))
        log.warning("request failed", extra={"request_id": request_id, "error": error_type})
        return RequestFailedError(request_id, error_type)

    def record_refusal(self, *, kind: Kind, request_id: str, user: str, groups: tuple[str, ...],
                       via: str | None, reason: str, started: float, outcome: Outcome = "refused") -> AuditRecord:
        """Audit a request refused before its question was read (too large, invalid, over its rate),
        or one that failed outside the engine (``outcome="error"``, ``reason`` the error type)."""
        return self.audit.append(self._failure_entry(kind=kind, request_id=request_id, user=user,
                                                     groups=tuple(sorted(set(groups))), purpose=None,
                                                     question=None, result=None, started=started, via=via,
                                                     outcome=outcome, error_type=reason))

    def close(self) -> None:
        self.catalog.dispose()
        self.audit.dispose()


def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD: a str from JSON may hold one, and no
    encoder downstream (the redactor, the keyed hash, the audit's canonical JSON) accepts it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def passage_of(i: int, h: Hit) -> Passage:
    return Passage(passage_id=f"P{i + 1}", chunk_id=h.chunk_id, document_id=h.document_id, source_uri=h.source_uri,
                   text=h.text)


def _sampling(params: SamplingParams) -> dict[str, Any]:
    return {"temperature": params.temperature, "max_tokens": params.max_tokens, "top_p": params.top_p,
            "seed": params.seed}
