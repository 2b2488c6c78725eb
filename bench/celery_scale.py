"""Ingestion throughput of the partitioned job on 1, 2, ... celery workers (RabbitMQ on loopback).

    python bench/celery_scale.py DIR_OR_TAR_GZ [--workers 1 2] [--limit 400] [--groups staff]
        [--redact-partitions 8] [--embed-partitions 2] [--json]

For each worker count the corpus (its first ``--limit`` files) is ingested into a fresh
ENCLAVE_HOME by ``ingest_partitioned_celery_job``, with that many solo celery workers, each
redacting with one parse worker (ENCLAVE_PARSE_WORKERS=1): N workers redact N documents at once.
Reported per run: wall time from launch to the end of the run (workers already started and
idle, models loaded inside the steps, as a deployment's warm workers would not), documents/s, and
the step-seconds the run recorded (redaction and embedding summed over partitions), which is
what the model of N workers and one GPU embedder in bench/RESULTS.md is computed from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def corpus_copy(source: Path, limit: int, into: Path) -> tuple[Path, int, int]:
    """The first ``limit`` files of a directory or .tar.gz, copied under ``into``: (dir, files, bytes)."""
    if source.is_file():
        with tarfile.open(source) as tar:
            tar.extractall(into / "x", filter="data")
        source = into / "x"
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.name.startswith(".")][:limit]
    dest = into / "corpus"
    for p in files:
        target = dest / p.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
    return dest, len(files), sum(p.stat().st_size for p in files)


def one_run(corpus: Path, workers: int, groups: list[str], redact_partitions: int, embed_partitions: int,
            workdir: Path) -> dict[str, Any]:
    import dagster as dg
    from celery_workers import BROKER, CeleryWorkers

    from pipelines.partitioned import celery_job, partitioned_run_config
    from rag.catalog.store import CatalogStore
    from rag.config import Settings

    home = workdir / f"home-{workers}"
    env = {**os.environ, "ENCLAVE_HOME": str(home), "ENCLAVE_PARSE_WORKERS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("ENCLAVE_DATABASE_URL", None)
    queue = f"enclave-bench-{uuid.uuid4().hex[:8]}"
    logs = workdir / f"workers-{workers}"
    logs.mkdir()
    pool = CeleryWorkers(workers, queue, logs, env)
    try:
        pool.wait_ready()
        run_config = partitioned_run_config(path=str(corpus), source_name="bench", groups=groups,
                                            redact_partitions=redact_partitions, embed_partitions=embed_partitions)
        run_config["execution"] = {"config": {"broker": BROKER, "backend": "rpc://", "config_source": {
            "task_default_queue": queue, "task_acks_late": True, "worker_prefetch_multiplier": 1}}}
        with dg.DagsterInstance.local_temp(str(workdir / f"dagster-{workers}")) as instance:
            started = time.perf_counter()
            result = dg.execute_job(dg.reconstructable(celery_job), instance=instance, run_config=run_config)
            wall = time.perf_counter() - started
        if not result.success:
            raise SystemExit(f"run with {workers} worker(s) failed; worker logs under {logs}")
    finally:
        pool.stop()
    catalog = CatalogStore(Settings(home=home).database_url)
    run = catalog.latest_run()
    catalog.dispose()
    assert run is not None
    c = run.counts
    return {"workers": workers, "wall_s": round(wall, 2), "documents": c["new"],
            "stored": c["documents_written"], "quarantined": c["quarantined"], "chunks": c["chunks_written"],
            "redact_step_s": c["redact_seconds"], "embed_step_s": c["embed_seconds"],
            "index_s": round(c["index"]["seconds"], 2), "docs_per_s": round(c["new"] / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--groups", default="staff")
    ap.add_argument("--redact-partitions", type=int, default=8)
    ap.add_argument("--embed-partitions", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        corpus, files, size = corpus_copy(args.corpus, args.limit, workdir)
        rows = [one_run(corpus, n, args.groups.split(","), args.redact_partitions, args.embed_partitions, workdir)
                for n in args.workers]
    if args.json:
        print(json.dumps({"files": files, "bytes": size, "runs": rows}, indent=2))  # noqa: T201
        return
    print(f"{files} files, {size / 1e6:.2f} MB; {args.redact_partitions} redact / "  # noqa: T201
          f"{args.embed_partitions} embed partitions")
    print(f"{'workers':>7} {'wall s':>8} {'docs/s':>7} {'redact step-s':>14} {'embed step-s':>13} "  # noqa: T201
          f"{'index s':>8} {'chunks':>7}")
    for r in rows:
        print(f"{r['workers']:>7} {r['wall_s']:>8.1f} {r['docs_per_s']:>7.2f} {r['redact_step_s']:>14.1f} "  # noqa: T201
              f"{r['embed_step_s']:>13.1f} {r['index_s']:>8.2f} {r['chunks']:>7}")


if __name__ == "__main__":
    main()
