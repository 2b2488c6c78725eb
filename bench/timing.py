"""Timing the bench scripts share: latency percentiles in milliseconds and the median rate of runs.

Figures are medians of several runs (see bench/RESULTS.md); a rate is items per wall second.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np


def percentiles_ms(latencies_s: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of latencies given in seconds, in milliseconds (NaN for none)."""
    if len(latencies_s) == 0:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(latencies_s, dtype=np.float64) * 1000.0, [50, 99])
    return float(p50), float(p99)


def latencies_s(call: Callable[[int], object], count: int) -> list[float]:
    """Wall seconds of ``call(i)`` for i in range(count), one call at a time."""
    out = []
    for i in range(count):
        started = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - started)
    return out


def median_rate(items: int, call: Callable[[], object], runs: int) -> float:
    """Median over ``runs`` of ``items`` per wall second of one ``call()``."""
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates)
