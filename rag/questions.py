"""The question path's model work, done for concurrent requests together in two stage threads.

Every search redacts its question (spaCy NER + Presidio) and embeds the redacted text (the query
encoder). Run in each request's own thread, eight concurrent requests on two cores cost nearly
twice the CPU of the same requests one after another (measured: 20.2 against 11.2 ms per search):
the threads take turns on the GIL and evict each other's caches. The :class:`QuestionBatcher`
gives that work two threads: a request hands its question over and waits; the redaction thread
takes every question waiting at that moment and redacts them in one batched NER pass
(:meth:`~rag.redaction.PresidioRedactor.redact_many`), the embedding thread takes every redacted
question waiting for it and embeds them in one forward pass
(:meth:`~rag.embedding.SentenceTransformerEmbedder.embed_queries`), so one batch is embedded
(onnxruntime releases the GIL) while the next is redacted; each request gets its own result.
Batches form only from requests that are already waiting, so a lone request is never held back to
wait for company.

Each question is still redacted on its own terms (a batch is a list of independent texts), and a
failure is each request's own: when a batched step raises, its questions are retried one by one,
so the question that fails gets its exception (raised in the request's thread, where the query
engine audits it) and the others their results.

Each thread starts with the first question it gets and ends after a while with none; both are
daemons, so they never hold a process open.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

IDLE_EXIT_S = 30.0

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PreparedQuestion:
    redacted: str
    vector: np.ndarray | None  # shape (1, dim); None when the search needs no vector (BM25 only)


@dataclass(frozen=True)
class _Item:
    question: str
    embed: bool
    done: Future[PreparedQuestion]


def each_or_alone(batch: Callable[[list[T]], Sequence[R]], items: list[T]) -> list[R | BaseException]:
    """``batch(items)``, or where it raises, ``batch([item])`` for each item: the item that fails
    gets its own exception, the others their results."""
    if not items:
        return []
    try:
        results = list(batch(items))
        if len(results) == len(items):
            return list(results)
    except Exception as exc:  # noqa: BLE001 - re-run alone below, so each item's own error is the one it gets
        if len(items) == 1:
            return [exc]
    out: list[R | BaseException] = []
    for item in items:
        try:
            out.append(batch([item])[0])
        except Exception as exc:  # noqa: BLE001 - handed to the request it belongs to
            out.append(exc)
    return out


class _Worker(Generic[T]):
    """One daemon thread draining a queue in batches; restarts on demand after an idle exit."""

    def __init__(self, name: str, run: Callable[[list[T]], None], max_batch: int) -> None:
        self.name = name
        self._run = run
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches run (tests and the profile read these)
        self.items = 0

    def put(self, item: T) -> None:
        self._queue.put(item)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self.batches += 1
            self.items += len(batch)
            self._run(batch)


@dataclass(frozen=True)
class _Redacted:
    item: _Item
    text: str


class QuestionBatcher:
    """Redacts and embeds questions of concurrent requests together (module docstring).

    Two stages, each its own thread: redaction hands each redacted question to the embedding stage,
    so one batch is embedded (onnxruntime and torch release the GIL while they compute) while the
    next is redacted. ``max_batch`` 1 turns batching off: each question is then prepared in its
    caller's thread.
    """

    def __init__(self, redactor: Any, embedder: Any, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.redactor = redactor
        self.embedder = embedder
        self.max_batch = max_batch
        self._redaction: _Worker[_Item] = _Worker("enclave-questions-redact", self._run_redaction, max_batch)
        self._embedding: _Worker[_Redacted] = _Worker("enclave-questions-embed", self._run_embedding, max_batch)

    @property
    def batches(self) -> int:
        """Redaction batches run (each question is in exactly one)."""
        return self._redaction.batches

    @property
    def prepared(self) -> int:
        return self._redaction.items

    def prepare(self, question: str, *, embed: bool = True) -> PreparedQuestion:
        """The redacted question and, when ``embed``, its vector; raises what preparing it raised."""
        if self.max_batch == 1:
            redacted = self._redact([question])[0].text
            return PreparedQuestion(redacted, self.embedder.embed_query(redacted) if embed else None)
        done: Future[PreparedQuestion] = Future()
        self._redaction.put(_Item(question, embed, done))
        return done.result()

    def _redact(self, questions: list[str]) -> list[Any]:
        return list(self.redactor.redact_many(questions))

    def _run_redaction(self, items: list[_Item]) -> None:
        try:
            redacted = each_or_alone(self._redact, [i.question for i in items])
            for item, result in zip(items, redacted, strict=True):
                if isinstance(result, BaseException):
                    item.done.set_exception(result)
                elif item.embed:
                    self._embedding.put(_Redacted(item, result.text))
                else:
                    item.done.set_result(PreparedQuestion(result.text, None))
        except BaseException as exc:  # noqa: BLE001 - no request may wait forever on a failed batch
            _fail([i.done for i in items], exc)

    def _run_embedding(self, items: list[_Redacted]) -> None:
        try:
            vectors = each_or_alone(self.embedder.embed_queries, [r.text for r in items])
            for redacted, vector in zip(items, vectors, strict=True):
                if isinstance(vector, BaseException):
                    redacted.item.done.set_exception(vector)
                else:
                    row = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(1, -1))
                    redacted.item.done.set_result(PreparedQuestion(redacted.text, row))
        except BaseException as exc:  # noqa: BLE001 - no request may wait forever on a failed batch
            _fail([r.item.done for r in items], exc)


def _fail(futures: list[Future[PreparedQuestion]], exc: BaseException) -> None:
    for done in futures:
        if not done.done():
            done.set_exception(exc)
