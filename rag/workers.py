"""Isolated parse workers: run :func:`rag.parsing.parse_bytes` (and redaction) in long-lived,
memory- and time-limited processes, so a hostile or broken file costs one quarantine entry and
never the pipeline.

Part of the ``redacted_chunks`` step (parse -> chunk -> redact, in memory). Workers are
spawned, not forked (no parent state, no torch threads carried over), each capped with
``RLIMIT_AS``; each file's parse is bounded by a SIGALRM timer inside the worker and each task
by pebble's timeout, which kills and replaces the worker. Small files travel in batches; the
optional transform (the lead's PII redactor) is built once per worker, in its initializer and
off the task clock, and applied to a whole batch in one call, so that only its output crosses
back to the parent process.

Failure handling: a batch whose task fails as a whole (timeout, worker death, MemoryError or a
transform exception) is retried file by file; the file that still fails is quarantined
TIMEOUT, MEMORY (MemoryError or killed by SIGKILL), CORRUPT (any other crash) or
REDACTION_FAILED (the transform raised).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from pebble import ProcessExpired, ProcessPool

from rag.errors import QuarantinedError, QuarantineReason
from rag.parsing import ParsedChunk, ParseLimits, parse_bytes

logger = logging.getLogger(__name__)

Transform = Callable[[list[tuple[str, list[ParsedChunk]]]], list[Any]]
TransformFactory = Callable[[], Transform]

# A task may take this many parse timeouts before pebble kills it: one for the parse the
# in-worker timer did not stop (C code ignores signals until it returns), one for the transform.
_TASK_TIMEOUTS = 2.0
_TASK_GRACE_S = 1.0


@dataclass(frozen=True)
class FileJob:
    """One file to parse. ``key`` is opaque to the pool (a document id, a content hash)."""

    key: str
    filename: str
    data: bytes


@dataclass(frozen=True)
class FileOutcome:
    """What became of one job: chunks (the transform's output when there is one) or a quarantine."""

    key: str
    chunks: list[Any] | None
    quarantine: tuple[QuarantineReason, str] | None
    extra: Any = None


@dataclass(frozen=True)
class Transformed:
    """A transform may return this per file to send back more than chunks (e.g. entity counts).

    It may also return a :class:`~rag.errors.QuarantinedError` for a file it refuses (quarantined
    with that reason; its neighbours in the batch are unaffected)."""

    chunks: list[Any]
    extra: Any = None


class _ParseTimeout(BaseException):  # noqa: N818 - BaseException so parsers' `except Exception` cannot swallow it
    """Raised inside a worker by the per-file timer."""


class TransformFailedError(Exception):
    """The transform raised for a batch; carries only the exception class name."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


# -- worker side ---------------------------------------------------------------------------

_worker_limits: ParseLimits | None = None
_worker_transform: Transform | None = None
_worker_transform_error: str | None = None


def _init_worker(memory_mb: int, limits: ParseLimits, factory: TransformFactory | None) -> None:
    global _worker_limits, _worker_transform, _worker_transform_error
    from rag.config import enforce_offline
    from rag.parsing import warm_up

    enforce_offline()
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    # RLIMIT_AS: parsing (unstructured, pdfminer, pandoc as a child process) and spaCy/torch
    # imports all run under 2 GiB of address space; an allocation past it is a MemoryError.
    cap = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    _worker_limits = limits
    # Heavy state loads here, once per worker and outside any task's clock: the parsers and,
    # when given, the transform (the redactor takes seconds to build).
    warm_up()
    if factory is not None:
        try:
            _worker_transform = factory()
        except Exception as exc:  # noqa: BLE001 - reported per file as REDACTION_FAILED, not a crash loop
            _worker_transform_error = f"transform factory raised {type(exc).__name__}"


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _ParseTimeout


def _parse_one(filename: str, data: bytes, timeout_s: float) -> list[ParsedChunk]:
    assert _worker_limits is not None, "worker not initialised"
    timed = threading.current_thread() is threading.main_thread()
    if timed:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return parse_bytes(data, filename, _worker_limits)
    except _ParseTimeout:
        raise QuarantinedError(QuarantineReason.TIMEOUT, f"parse exceeded {timeout_s:g} s") from None
    except MemoryError:
        raise QuarantinedError(QuarantineReason.MEMORY, "parse ran out of memory") from None
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _run_batch(jobs: list[tuple[str, str, bytes]], timeout_s: float) -> list[FileOutcome]:
    """Worker task: parse each file on its own, then transform the parsed ones in one call."""
    outcomes: dict[str, FileOutcome] = {}
    parsed: list[tuple[str, list[ParsedChunk]]] = []
    for key, filename, data in jobs:
        try:
            parsed.append((key, _parse_one(filename, data, timeout_s)))
        except QuarantinedError as exc:
            outcomes[key] = FileOutcome(key, None, (exc.reason, exc.detail))
    if parsed and _worker_transform_error is not None:
        raise TransformFailedError(_worker_transform_error)
    if parsed and _worker_transform is not None:
        try:
            results = _worker_transform(parsed)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any transform failure quarantines, never crashes
            raise TransformFailedError(type(exc).__name__) from None
        if len(results) != len(parsed):
            raise TransformFailedError(f"returned {len(results)} results for {len(parsed)} files")
        for (key, _), result in zip(parsed, results, strict=True):
            if isinstance(result, QuarantinedError):  # the transform refused this file with a reason
                outcomes[key] = FileOutcome(key, None, (result.reason, result.detail))
            elif isinstance(result, Transformed):
                outcomes[key] = FileOutcome(key, list(result.chunks), None, result.extra)
            else:
                outcomes[key] = FileOutcome(key, list(result), None)
    else:
        for key, chunks in parsed:
            outcomes[key] = FileOutcome(key, list(chunks), None)
    return [outcomes[key] for key, _, _ in jobs]


# -- parent side ---------------------------------------------------------------------------


class ParsePool:
    """A pool of isolated parse workers. Use as a context manager."""

    def __init__(
        self,
        workers: int,
        timeout_s: float,
        memory_mb: int,
        limits: ParseLimits,
        transform_factory: TransformFactory | None = None,
    ) -> None:
        self._workers = max(1, workers)
        self._timeout_s = timeout_s
        self._memory_mb = memory_mb
        self._limits = limits
        self._factory = transform_factory
        self._pool: ProcessPool | None = None

    def __enter__(self) -> ParsePool:
        self._pool = ProcessPool(
            max_workers=self._workers,
            initializer=_init_worker,
            initargs=(self._memory_mb, self._limits, self._factory),
            context=multiprocessing.get_context("spawn"),
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            if exc_type is None:
                self._pool.close()  # type: ignore[no-untyped-call]  # pebble leaves close() unannotated
            else:
                self._pool.stop()  # type: ignore[no-untyped-call]  # pebble leaves stop() unannotated
            self._pool.join()
            self._pool = None

    def process(self, jobs: Iterable[FileJob], batch_chars: int = 200_000) -> Iterator[FileOutcome]:
        """Parse every job; yield one outcome per job as they complete (any order)."""
        if self._pool is None:
            raise RuntimeError("ParsePool must be entered (with ParsePool(...) as pool) before process()")
        pending: dict[Future[list[FileOutcome]], list[FileJob]] = {}
        # Keep the pool busy but do not read every job into memory up front.
        max_in_flight = self._workers * 2
        batches = self._batches(jobs, batch_chars)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < max_in_flight:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                else:
                    pending[self._submit(batch)] = batch
            if not pending:
                break
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                batch = pending.pop(future)
                try:
                    yield from future.result()
                except (FutureTimeoutError, ProcessExpired, MemoryError, TransformFailedError) as exc:
                    if len(batch) > 1:
                        # One bad file must not sink its neighbours: retry each on its own.
                        for job in batch:
                            pending[self._submit([job])] = [job]
                    else:
                        yield self._failed(batch[0], exc)

    def _submit(self, batch: list[FileJob]) -> Future[list[FileOutcome]]:
        assert self._pool is not None
        payload = [(job.key, job.filename, job.data) for job in batch]
        deadline = self._timeout_s * _TASK_TIMEOUTS + _TASK_GRACE_S
        future: Future[list[FileOutcome]] = self._pool.schedule(
            _run_batch, args=(payload, self._timeout_s), timeout=deadline
        )
        return future

    @staticmethod
    def _batches(jobs: Iterable[FileJob], batch_chars: int) -> Iterator[list[FileJob]]:
        batch: list[FileJob] = []
        size = 0
        for job in jobs:
            if batch and size + len(job.data) > batch_chars:
                yield batch
                batch, size = [], 0
            batch.append(job)
            size += len(job.data)
        if batch:
            yield batch

    def _failed(self, job: FileJob, exc: BaseException) -> FileOutcome:
        if isinstance(exc, FutureTimeoutError):
            reason = (QuarantineReason.TIMEOUT, f"task exceeded {self._timeout_s * _TASK_TIMEOUTS:g} s")
        elif isinstance(exc, MemoryError):
            reason = (QuarantineReason.MEMORY, f"exceeded {self._memory_mb} MB")
        elif isinstance(exc, TransformFailedError):
            reason = (QuarantineReason.REDACTION_FAILED, f"transform raised {exc.kind}")
        elif isinstance(exc, ProcessExpired) and exc.exitcode == -signal.SIGKILL:
            reason = (QuarantineReason.MEMORY, "worker killed (SIGKILL, likely out of memory)")
        elif isinstance(exc, ProcessExpired):
            reason = (QuarantineReason.CORRUPT, f"worker died with exit code {exc.exitcode}")
        else:  # pragma: no cover - the except clause above lists every type
            reason = (QuarantineReason.CORRUPT, type(exc).__name__)
        logger.warning("quarantined document %s: %s (%s)", job.key, reason[0].value, reason[1])
        return FileOutcome(job.key, None, reason)
