"""Ingestion throughput per stage (parse, redact, embed, index) in documents/s and MB/s.

    python bench/ingest_throughput.py DIR [--runs 3] [--groups staff] [--json]

Each run ingests DIR into a fresh ENCLAVE_HOME through the real Dagster job (as `enclave ingest`)
and reads the stage timings the run recorded. Parsing and redaction are one step in the pipeline
(unredacted text never leaves the worker), so parse time is measured by a parse-only pass over the
same files with the same worker pool, and redaction is the difference. Medians over the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_only(directory: Path, workers: int) -> tuple[float, int]:
    from rag.config import load_settings
    from rag.parsing import ParseLimits
    from rag.workers import FileJob, ParsePool

    settings = load_settings()
    files = [p for p in sorted(directory.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    started = time.perf_counter()
    ok = 0
    with ParsePool(workers=workers, timeout_s=settings.parse_timeout_s, memory_mb=settings.parse_memory_mb,
                   limits=ParseLimits.from_settings(settings)) as pool:
        for outcome in pool.process(FileJob(str(p), p.name, p.read_bytes()) for p in files):
            ok += outcome.quarantine is None
    return time.perf_counter() - started, ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--groups", default="staff")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import os

    from pipelines.run import run_ingest

    files = [p for p in a.dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
    mb = sum(p.stat().st_size for p in files) / 2**20
    workers = int(os.environ.get("ENCLAVE_PARSE_WORKERS", os.cpu_count() or 1))
    rows = []
    for _ in range(a.runs):
        with tempfile.TemporaryDirectory() as home:
            started = time.perf_counter()
            out = run_ingest(str(a.dir), groups=a.groups.split(","), home=home)
            total = time.perf_counter() - started
            if not out.success:
                print(f"run failed: {out.failure}", file=sys.stderr)
                return 1
            parse_s, parsed = parse_only(a.dir, workers)
            c = out.counts
            rows.append({"total_s": total, "parse_s": parse_s,
                         "redact_s": max(0.0, c["redact_seconds"] - parse_s), "parse_redact_s": c["redact_seconds"],
                         "embed_s": c["embed_seconds"], "index_s": c["index"]["seconds"],
                         "documents": c["documents_written"], "quarantined": c["quarantined"],
                         "chunks": c["chunks_written"]})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    n = len(files)
    report = {
        "dir": str(a.dir), "files": n, "MB": round(mb, 2), "runs": a.runs, "median": med,
        "docs_per_s": {s: round(n / med[f"{s}_s"], 2) if med[f"{s}_s"] else None
                       for s in ("parse", "redact", "embed", "index", "total")},
        "MB_per_s": {s: round(mb / med[f"{s}_s"], 3) if med[f"{s}_s"] else None
                     for s in ("parse", "redact", "embed", "index", "total")},
    }
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{n} files, {mb:.2f} MB, median of {a.runs} runs "
              f"({med['documents']:.0f} ingested, {med['quarantined']:.0f} quarantined, {med['chunks']:.0f} chunks)")
        print(f"{'stage':<8}{'seconds':>10}{'docs/s':>10}{'MB/s':>10}")
        for s in ("parse", "redact", "embed", "index", "total"):
            print(f"{s:<8}{med[s + '_s']:>10.2f}{report['docs_per_s'][s] or 0:>10.2f}{report['MB_per_s'][s] or 0:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
