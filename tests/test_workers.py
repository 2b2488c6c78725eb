"""rag.workers: a hostile file costs one quarantine entry, never the pool or its neighbours.

The transforms below stand in for the redactor at the worker boundary; they are module-level
so spawned workers can import them. Each misbehaves only for its marker key.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

from rag.errors import QuarantineReason
from rag.parsing import ParsedChunk, ParseLimits
from rag.workers import FileJob, FileOutcome, ParsePool, Transformed

LIMITS = ParseLimits(max_file_bytes=1 << 20, max_uncompressed_bytes=8 << 20, chunk_max_tokens=240)
MEMORY_MB = 2048

_factory_calls = 0


def _texts(batch: list[tuple[str, list[ParsedChunk]]]) -> list[Any]:
    return [[c.text.upper() for c in chunks] for _, chunks in batch]


def hanging_transform_factory() -> Any:
    def transform(batch: list[tuple[str, list[ParsedChunk]]]) -> list[Any]:
        if any(key == "hang" for key, _ in batch):
            time.sleep(600)
        return _texts(batch)

    return transform


def hungry_transform_factory() -> Any:
    def transform(batch: list[tuple[str, list[ParsedChunk]]]) -> list[Any]:
        if any(key == "hog" for key, _ in batch):
            hoard = bytearray(2 * MEMORY_MB << 20)
            return [hoard[:1]]
        return _texts(batch)

    return transform


def failing_transform_factory() -> Any:
    def transform(batch: list[tuple[str, list[ParsedChunk]]]) -> list[Any]:
        if any(key == "boom" for key, _ in batch):
            raise ValueError("redactor refused this text")
        if any(key == "crash" for key, _ in batch):
            os.kill(os.getpid(), signal.SIGSEGV)
        return _texts(batch)

    return transform


def counting_transform_factory() -> Any:
    global _factory_calls
    _factory_calls += 1

    def transform(batch: list[tuple[str, list[ParsedChunk]]]) -> list[Any]:
        return [Transformed(chunks=t, extra=(os.getpid(), _factory_calls)) for t in _texts(batch)]

    return transform


def _job(key: str, text: str = "") -> FileJob:
    return FileJob(key=key, filename=f"{key}.txt", data=(text or f"Document {key} has a sentence.").encode())


def _run(
    factory: Any, jobs: list[FileJob], timeout_s: float = 30, batch_chars: int = 200_000, workers: int = 1
) -> dict[str, FileOutcome]:
    # One worker unless the test is about several: each spawn imports the parsers (~5 s on 2 cores).
    pool = ParsePool(
        workers=workers, timeout_s=timeout_s, memory_mb=MEMORY_MB, limits=LIMITS, transform_factory=factory
    )
    with pool:
        return {o.key: o for o in pool.process(jobs, batch_chars=batch_chars)}


def test_hanging_file_is_quarantined_timeout_and_its_batch_neighbours_still_parse() -> None:
    jobs = [_job("a"), _job("hang"), _job("b"), _job("c")]
    outcomes = _run(hanging_transform_factory, jobs, timeout_s=1.0)
    assert outcomes["hang"].quarantine is not None
    assert outcomes["hang"].quarantine[0] is QuarantineReason.TIMEOUT
    for key in "abc":
        assert outcomes[key].quarantine is None
        assert outcomes[key].chunks == [f"DOCUMENT {key.upper()} HAS A SENTENCE."]


def test_memory_blow_up_is_quarantined_memory_and_the_pool_continues() -> None:
    jobs = [_job("hog"), _job("a"), _job("b")]
    outcomes = _run(hungry_transform_factory, jobs)
    assert outcomes["hog"].quarantine is not None
    assert outcomes["hog"].quarantine[0] is QuarantineReason.MEMORY
    assert outcomes["a"].chunks and outcomes["b"].chunks


def test_transform_exception_quarantines_only_that_file_as_redaction_failed_without_its_message() -> None:
    outcomes = _run(failing_transform_factory, [_job("a"), _job("boom"), _job("b")])
    reason, detail = outcomes["boom"].quarantine or (None, "")
    assert reason is QuarantineReason.REDACTION_FAILED
    assert "ValueError" in detail and "refused" not in detail
    assert outcomes["a"].chunks and outcomes["b"].chunks


def test_worker_crash_is_quarantined_corrupt_and_a_new_worker_takes_over() -> None:
    outcomes = _run(failing_transform_factory, [_job("crash"), _job("a"), _job("b")])
    assert outcomes["crash"].quarantine is not None
    assert outcomes["crash"].quarantine[0] is QuarantineReason.CORRUPT
    assert outcomes["a"].chunks and outcomes["b"].chunks


def test_transform_factory_runs_once_per_worker_not_per_batch() -> None:
    jobs = [_job(f"d{i}") for i in range(12)]
    # batch_chars=1: every file is its own batch, so 12 tasks over 2 workers.
    outcomes = _run(counting_transform_factory, jobs, batch_chars=1, workers=2)
    extras = [o.extra for o in outcomes.values()]
    assert len(extras) == 12
    assert all(calls == 1 for _, calls in extras)
    assert 1 <= len({pid for pid, _ in extras}) <= 2
    assert max(Counter(pid for pid, _ in extras).values()) > 1  # some worker served several batches


def test_without_a_transform_parsed_chunks_come_back_and_bad_files_are_quarantined() -> None:
    jobs = [_job("a"), FileJob("empty", "empty.txt", b""), FileJob("exe", "tool.exe", b"MZ")]
    outcomes = _run(None, jobs)
    assert outcomes["a"].chunks and isinstance(outcomes["a"].chunks[0], ParsedChunk)
    assert outcomes["empty"].quarantine is not None and outcomes["empty"].quarantine[0] is QuarantineReason.EMPTY
    assert outcomes["exe"].quarantine is not None and outcomes["exe"].quarantine[0] is QuarantineReason.UNSUPPORTED


def test_a_parse_that_outlasts_the_time_limit_is_stopped_by_the_in_worker_timer() -> None:
    # ~900 KB of short paragraphs: unstructured classifies each one, which takes far longer than a second
    text = "\n\n".join(f"Paragraph {i} of a long ward procedure, read line by line." for i in range(15_000))
    slow = FileJob("slow", "slow.txt", text.encode())
    assert len(slow.data) < LIMITS.max_file_bytes
    outcomes = _run(None, [_job("a"), slow, _job("b")], timeout_s=1.0)
    reason, detail = outcomes["slow"].quarantine or (None, "")
    # "parse exceeded" is the worker's own timer; a task pebble had to kill would say "task exceeded"
    assert (reason, detail) == (QuarantineReason.TIMEOUT, "parse exceeded 1 s")
    assert outcomes["a"].chunks and outcomes["b"].chunks
