"""Admission to the model: a bounded queue in front of generation, so overload is refused, not piled up.

A model serves a few generations at a time (llama.cpp in process: one). Without a bound, every
caller past those waits, and under load the wait grows until clients time out while the service
still burns CPU on their answers. :class:`GenerationQueue` admits at most ``concurrency``
running generations plus ``max_waiting`` waiting ones; one more is refused at once with
:class:`GenerationBusyError`, which the HTTP service turns into ``503`` with ``Retry-After``.

Admission and the wait are separate steps: :meth:`GenerationQueue.admit` decides now (so the
service can still answer 503 before it commits an audit record or sends a byte), and the
returned :class:`Ticket` waits for a free slot when entered, holding it until the generation
ends.
"""

from __future__ import annotations

import math
import threading
import time
from types import TracebackType

from rag.errors import EnclaveError


class GenerationBusyError(EnclaveError):
    """Too many generations are running or waiting; try again after ``retry_after_s`` seconds."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(
            f"the model is busy ({waiting} requests already waiting); try again in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class Ticket:
    """One admitted generation: ``with ticket:`` waits for a slot and holds it; release is idempotent."""

    def __init__(self, queue: GenerationQueue) -> None:
        self._queue = queue
        self._started: float | None = None
        self._done = False

    def __enter__(self) -> Ticket:
        self._queue._slots.acquire()
        self._started = time.monotonic()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        """Give the place back (and the slot, when entered). Safe to call twice."""
        if self._done:
            return
        self._done = True
        if self._started is not None:
            self._queue._slots.release()
            self._queue._record(time.monotonic() - self._started)
        self._queue._leave()


class GenerationQueue:
    """At most ``concurrency`` generations at once and ``max_waiting`` more in line."""

    # A first guess of one generation's duration, replaced by measurements as they come.
    INITIAL_ESTIMATE_S = 10.0

    def __init__(self, concurrency: int = 1, max_waiting: int = 8) -> None:
        if concurrency < 1 or max_waiting < 0:
            raise ValueError("concurrency must be at least 1 and max_waiting not negative")
        self.concurrency = concurrency
        self.max_waiting = max_waiting
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._admitted = 0
        self._mean_s = self.INITIAL_ESTIMATE_S

    @property
    def admitted(self) -> int:
        """Generations running or waiting now."""
        with self._lock:
            return self._admitted

    def admit(self) -> Ticket:
        """A place in line, or :class:`GenerationBusyError` when the line is full."""
        with self._lock:
            if self._admitted >= self.concurrency + self.max_waiting:
                waiting = self._admitted - self.concurrency
                raise GenerationBusyError(waiting, self._retry_after(waiting))
            self._admitted += 1
        return Ticket(self)

    def _retry_after(self, waiting: int) -> int:
        # Time for the line ahead to drain, from the running mean of recent generations.
        return max(1, math.ceil(self._mean_s * (waiting + 1) / self.concurrency))

    def _record(self, elapsed_s: float) -> None:
        with self._lock:
            self._mean_s = 0.8 * self._mean_s + 0.2 * elapsed_s

    def _leave(self) -> None:
        with self._lock:
            self._admitted -= 1
