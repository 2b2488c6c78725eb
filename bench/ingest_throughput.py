"""Ingestion throughput per stage (parse, redact, embed, index) in documents/s and MB/s, and the
same job done by the Haystack peer in the same run.

    python bench/ingest_throughput.py DIR_OR_TAR_GZ [--runs 3] [--groups staff] [--json]
        [--peer /tmp/peer/bin/python]      # also run ../shared/bench/peer_haystack.py each run

Each run ingests the corpus into a fresh ENCLAVE_HOME through the real Dagster job (as `enclave
ingest`, default policy) and reads the stage timings the run recorded. Parsing and redaction are
one step in the pipeline (unredacted text never leaves the worker), so parse time is measured by
a parse-only pass over the same files with the same worker pool, and redaction is the difference.
Enclave's total is the wall time of the whole job, including starting workers and loading models
and the no_residual_pii check; the peer's total is the sum of its stages after its models were
loaded (its own report), so the ratio is conservative. Runs alternate peer and Enclave; the
ratio is taken per run and its median reported, with the medians of both totals.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEER_SCRIPT = ROOT.parent / "shared" / "bench" / "peer_haystack.py"
STAGES = ("parse", "redact", "embed", "index", "total")


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


def enclave_run(directory: Path, groups: list[str], workers: int) -> dict[str, Any]:
    from pipelines.run import run_ingest

    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        out = run_ingest(str(directory), groups=groups, home=home)
        total = time.perf_counter() - started
        if not out.success:
            raise SystemExit(f"run failed: {out.failure}")
    parse_s, _ = parse_only(directory, workers)
    c = out.counts
    return {"total_s": total, "parse_s": parse_s, "redact_s": max(0.0, c.redact_seconds - parse_s),
            "parse_redact_s": c.redact_seconds, "embed_s": c.embed_seconds,
            "index_s": c.index.seconds if c.index is not None else 0.0,
            "documents": c.documents_written, "quarantined": c.quarantined, "chunks": c.chunks_written}


def peer_run(python: str, directory: Path) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([python, str(PEER_SCRIPT), str(directory)], capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"peer failed: {proc.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def corpus_dir(path: Path, scratch: Path) -> Path:
    if path.is_dir():
        return path
    with tarfile.open(path) as tar:
        tar.extractall(scratch, filter="data")
    return scratch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", type=Path, help="a directory, or a .tar.gz of one (e.g. cacm/docs.tar.gz)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--groups", default="staff")
    ap.add_argument("--peer", metavar="PYTHON", help="the peer venv's python: run peer_haystack.py each run too")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    workers = int(os.environ.get("ENCLAVE_PARSE_WORKERS", os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as scratch:
        directory = corpus_dir(a.corpus, Path(scratch))
        files = [p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")]
        mb = sum(p.stat().st_size for p in files) / 2**20
        rows, peers = [], []
        for _ in range(a.runs):
            if a.peer:
                peers.append(peer_run(a.peer, directory))
            rows.append(enclave_run(directory, a.groups.split(","), workers))
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    n = len(files)
    report: dict[str, Any] = {
        "corpus": str(a.corpus), "files": n, "MB": round(mb, 2), "runs": a.runs, "cpus": os.cpu_count(),
        "workers": workers, "median": med, "per_run": rows,
        "docs_per_s": {s: round(n / med[f"{s}_s"], 2) if med[f"{s}_s"] else None for s in STAGES},
        "MB_per_s": {s: round(mb / med[f"{s}_s"], 3) if med[f"{s}_s"] else None for s in STAGES},
    }
    if peers:
        ratios = [p["total_s"] / r["total_s"] for p, r in zip(peers, rows, strict=True)]
        report["peer"] = {
            "per_run": peers, "median_total_s": statistics.median(p["total_s"] for p in peers),
            "median_docs_per_s": statistics.median(p["docs_per_s"] for p in peers),
            "median_seconds": {k: statistics.median(p["seconds"][k] for p in peers) for k in peers[0]["seconds"]},
            "converted": peers[0]["files"] - peers[0]["failed"], "chunks": peers[0]["chunks"],
            "speedup_per_run": [round(x, 3) for x in ratios], "speedup_median": round(statistics.median(ratios), 3)}
    if a.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{n} files, {mb:.2f} MB, median of {a.runs} runs, {os.cpu_count()} CPUs, {workers} workers "
          f"({med['documents']:.0f} ingested, {med['quarantined']:.0f} quarantined, {med['chunks']:.0f} chunks)")
    print(f"{'stage':<8}{'seconds':>10}{'docs/s':>10}{'MB/s':>10}")
    for s in STAGES:
        print(f"{s:<8}{med[s + '_s']:>10.2f}{report['docs_per_s'][s] or 0:>10.2f}{report['MB_per_s'][s] or 0:>10.3f}")
    if peers:
        p = report["peer"]
        print(f"peer (Haystack): total {p['median_total_s']:.2f} s, {p['median_docs_per_s']:.2f} docs/s, "
              f"stages {p['median_seconds']}, converted {p['converted']} of {n}")
        print(f"Enclave speed-up over the peer, per run: {p['speedup_per_run']}, median {p['speedup_median']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
