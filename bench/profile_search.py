"""Where one search's time goes: per-stage CPU and a pyinstrument profile of QueryEngine.search.

    python bench/profile_search.py [--searches 300] [--home DIR] [--pad-chunks 0] [--profile-out FILE]

Without ``--home`` the sample corpus is ingested into a temporary ENCLAVE_HOME first. The engine is
warmed, then the load test's questions are searched in turn, one thread, as the service would for one
request (redact, access filter, dense + BM25, catalog, audit append). Reported: CPU ms per search
(``time.process_time``, all threads of this process) and wall ms, then each stage timed on its own
over the same questions, then pyinstrument's call tree of the searches (``--profile-out`` writes it
to a file as text).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from load_test import QUESTIONS, SAMPLE_CORPUS, USERS, enclave_command

from rag.config import load_settings
from rag.query import QueryEngine


def _ingest(home: Path) -> None:
    env = {**os.environ, "ENCLAVE_HOME": str(home), "ENCLAVE_POLICY": "hipaa"}
    for name in ("ENCLAVE_DATABASE_URL", "ENCLAVE_AUDIT_DATABASE_URL"):
        env.pop(name, None)
    subprocess.run([enclave_command(), "ingest", str(SAMPLE_CORPUS), "--source", "sample", "--policy", "hipaa",  # noqa: S603
                    "--no-progress"], env=env, check=True, capture_output=True)


def _stage(name: str, fn: Callable[[int], Any], n: int) -> tuple[str, float, float]:
    cpu, wall = [], []
    for i in range(n):
        c0, w0 = time.process_time(), time.perf_counter()
        fn(i)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return name, 1000 * statistics.mean(cpu), 1000 * statistics.median(wall)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--searches", type=int, default=300)
    ap.add_argument("--home", type=Path, default=None, help="an ingested ENCLAVE_HOME (default: ingest the sample)")
    ap.add_argument("--pad-chunks", type=int, default=0)
    ap.add_argument("--profile-out", type=Path, default=None)
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="enclave-profile-"))
    os.environ["ENCLAVE_HOME"] = str(home)
    os.environ["ENCLAVE_POLICY"] = "hipaa"
    if args.home is None:
        _ingest(home)
    settings = load_settings()
    if args.pad_chunks:
        from pad_index import pad

        pad(settings, args.pad_chunks)
    t0 = time.perf_counter()
    engine = QueryEngine(settings)
    engine.warm_up()
    print(f"engine ready in {time.perf_counter() - t0:.2f} s (imports before it not counted)")  # noqa: T201
    n = args.searches

    def search(i: int) -> Any:
        user = USERS[i % len(USERS)]
        return engine.search(QUESTIONS[i % len(QUESTIONS)], user=user.name, groups=list(user.groups))

    for i in range(20):
        search(i)
    retriever = engine.retriever
    redacted = [retriever.redact_question(q) for q in QUESTIONS]
    vectors = [engine.embedder.embed_query(r) for r in redacted]
    groups = [list(USERS[i % len(USERS)].groups) for i in range(len(USERS))]
    allowed = [retriever.access.allowed(g) for g in groups]
    stages = [
        _stage("search, end to end (audited)", search, n),
        _stage("  redact question", lambda i: retriever.redact_question(QUESTIONS[i % len(QUESTIONS)]), n),
        _stage("  embed question", lambda i: engine.embedder.embed_query(redacted[i % len(redacted)]), n),
        _stage("  access filter", lambda i: retriever.access.allowed(groups[i % len(groups)]), n),
        _stage("  dense search", lambda i: engine.index.search(vectors[i % len(vectors)], 50,
                                                               allowed_ids=allowed[i % len(allowed)]), n),
        _stage("  bm25 search", lambda i: engine.lexical.search(redacted[i % len(redacted)], 50,
                                                                allowed_ids=allowed[i % len(allowed)]), n),
        _stage("  catalog chunk views", lambda i: engine.catalog.chunk_views(list(allowed[1][:10])), n),
    ]
    print(f"{'stage':<32} {'CPU ms':>8} {'wall ms p50':>12}")  # noqa: T201
    for name, cpu, wall in stages:
        print(f"{name:<32} {cpu:>8.2f} {wall:>12.2f}")  # noqa: T201

    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    with profiler:
        for i in range(n):
            search(i)
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    if args.profile_out:
        args.profile_out.write_text(text)
    print(text)  # noqa: T201
    engine.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
