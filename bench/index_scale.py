"""Index scale: build time, single-query latency, throughput and recall of the exact and HNSW
indexes, and the cost of permission filtering, on synthetic clustered vectors.

    flock /tmp/bench.lock python bench/index_scale.py --sizes 10000,100000 [--runs 3] [--json]
    flock /tmp/bench.lock python bench/index_scale.py --sizes 100000 --filter --threads 1
    flock /tmp/bench.lock python bench/index_scale.py --sizes 1000000 --queries 200 \
        --workdir /tmp/index_scale_work --build-step 500000 --build-budget 300   # repeat until exit 0

``--threads`` lists the faiss OpenMP thread counts to time searches with (builds use
``--build-threads``). ``--workdir`` keeps the indexes so later invocations reuse them; with
``--build-step``/``--build-budget`` a long HNSW build is reconciled in steps and stops (exit
status 3) once over budget, to be continued by the same command, so that no one command runs long.

Everything searched is a ``rag.index.FaissIndex`` built by ``reconcile`` (the pipeline's path:
add in batches, then a durable save), so the figures are those of the product's index: the exact
kind is ``IndexIDMap2(IndexFlatIP)``, the approximate kind the HNSW configuration of
``rag/index.py`` (M, efConstruction, efSearch). ``exact_max`` is set per build to force the kind.

Data: unit float32 vectors drawn from a Gaussian mixture that lives near a low-dimensional
subspace (``--clusters`` centres in ``--latent-dim`` dimensions, mapped into ``--dim`` by a random
orthonormal map, plus isotropic noise), so neighbourhoods have structure as sentence embeddings
do, rather than being uniform noise on which every ANN index looks bad. Queries are fresh draws
from the same mixture. Recall@k of each approximate result is measured against exact search over
the same candidate set (all vectors, or the ones a user may see).

Latency is per single query (the service embeds and searches one question at a time): p50 and
p99 over the query set, the median of ``--runs`` runs; "qps" is that single stream's rate and
"batch qps" the rate of one call with every query. Permission filtering (``--filter``) assigns each
chunk to one of ``--groups`` groups and compares, for users who see 5% and 50% of the chunks:

- ``selector``: ``FaissIndex.search(..., allowed_ids=...)`` as the Retriever calls it (an
  ``IDSelectorBatch`` built per query from the allowed ids, passed in ``SearchParameters``);
- ``selector-cached``: the same selector built once, i.e. the search alone;
- ``bitmap``: an ``IDSelectorBitmap`` over the id range, built per query;
- ``sel-cached efN`` (HNSW only): the cached selector with efSearch widened to efSearch / share;
- ``partitions``: one FaissIndex per group; the user's groups' partitions are searched and the
  top k merged.

Prints a table (or JSON with ``--json``); never needs the network.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from timing import median_rate, percentiles_ms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402

from rag import index as rag_index  # noqa: E402
from rag.index import MANIFEST, FaissIndex  # noqa: E402

Search = Callable[[np.ndarray], np.ndarray]  # queries (nq, dim) -> ids (nq, k)


# --- synthetic data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    dim: int
    latent_dim: int
    clusters: int
    spread: float
    noise: float
    seed: int

    def _model(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        centres = rng.standard_normal((self.clusters, self.latent_dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        basis, _ = np.linalg.qr(rng.standard_normal((self.dim, self.latent_dim)))
        return centres, np.ascontiguousarray(basis.T, dtype=np.float32)  # (latent, dim), orthonormal rows

    def sample(self, n: int, stream: int, block: int = 100_000) -> np.ndarray:
        """``n`` unit vectors; ``stream`` separates corpus and query draws from the same mixture."""
        centres, basis = self._model()
        rng = np.random.default_rng([self.seed, stream])
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, block):
            m = min(block, n - start)
            z = centres[rng.integers(self.clusters, size=m)]
            z += (self.spread / np.sqrt(self.latent_dim)) * rng.standard_normal((m, self.latent_dim), dtype=np.float32)
            x = z @ basis
            x += (self.noise / np.sqrt(self.dim)) * rng.standard_normal((m, self.dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[start:start + m] = x
        return out


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None,
               block: int = 100_000) -> np.ndarray:
    """Ground truth: ids (row + 1, as the bench numbers chunks) of the k best inner products."""
    nq = len(queries)
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    for start in range(0, len(data), block):
        scores = queries @ data[start:start + block].T
        if mask is not None:
            scores[:, ~mask[start:start + block]] = -np.inf
        ids = np.broadcast_to(np.arange(start + 1, start + 1 + scores.shape[1]), scores.shape)
        s = np.concatenate([best_s, scores], axis=1)
        i = np.concatenate([best_i, ids], axis=1)
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


# --- timing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p99_ms: float
    qps: float
    cpu: float  # process CPU seconds per wall second while timing: ~threads when nothing else competed


def time_single(search: Search, queries: np.ndarray, runs: int) -> tuple[Timing, np.ndarray]:
    """One query per call, ``runs`` passes over the fixed query set; medians of p50, p99 and rate."""
    search(queries[:1])  # warm caches and lazily built state
    p50, p99, qps, cpu = [], [], [], []
    found = np.zeros(0)
    for _ in range(runs):
        lat = np.empty(len(queries))
        rows = []
        cpu_started, started = time.process_time(), time.perf_counter()
        for i in range(len(queries)):
            t = time.perf_counter()
            rows.append(search(queries[i:i + 1])[0])
            lat[i] = time.perf_counter() - t
        total = time.perf_counter() - started
        p50_ms, p99_ms = percentiles_ms(lat.tolist())
        p50.append(p50_ms)
        p99.append(p99_ms)
        qps.append(len(queries) / total)
        cpu.append((time.process_time() - cpu_started) / total)
        found = np.array(rows)
    med = statistics.median
    return Timing(med(p50), med(p99), med(qps), med(cpu)), found


def time_batch(search: Search, queries: np.ndarray, runs: int) -> float:
    return median_rate(len(queries), lambda: search(queries), runs)


# --- building through the product's index -------------------------------------------------------


class BuildIncomplete(Exception):
    """A resumable build stopped at its time budget; the same command continues it."""


@dataclass(frozen=True)
class Built:
    index: FaissIndex
    seconds: float  # reconcile time summed over steps, durable saves included
    steps: int
    disk_mb: float


def build(directory: Path, kind: str, data: np.ndarray, ids: np.ndarray, step: int = 0,
          deadline: float = float("inf")) -> Built:
    """A FaissIndex of ``kind`` over ``data[ids - 1]`` through ``reconcile``.

    With ``step`` the ids are reconciled ``step`` at a time (the pipeline's incremental path), the
    progress is kept in ``directory``, and past ``deadline`` (``time.monotonic``) the build stops
    with BuildIncomplete, so a build longer than one command can span several.
    """
    exact_max = 0 if kind == "hnsw" else len(ids)
    idx = FaissIndex(directory, data.shape[1], "bench@synthetic", exact_max=exact_max, device="cpu")
    state_path = directory / "bench-build.json"
    state = json.loads(state_path.read_text()) if state_path.exists() and len(idx) else {"seconds": 0.0, "steps": 0}
    have = len(idx)
    if have and not np.array_equal(idx.ids(), ids[:have]):
        raise RuntimeError(f"{directory} holds other ids; remove it")
    while have < len(ids):
        upto = min(len(ids), have + step) if step else len(ids)
        started = time.perf_counter()
        report = idx.reconcile(ids[:upto], lambda chunk: data[np.asarray(chunk) - 1])
        state["seconds"] += time.perf_counter() - started
        state["steps"] += 1
        state_path.write_text(json.dumps(state))
        have = report.total
        log(f"{directory.name}: {have:,} of {len(ids):,} vectors, {state['seconds']:.0f}s")
        if have < len(ids) and time.monotonic() > deadline:
            raise BuildIncomplete(f"{directory.name}: {have:,} of {len(ids):,} vectors after "
                                  f"{state['seconds']:.0f}s; run the same command again to continue")
    if idx.kind != kind or len(idx) != len(ids):
        raise RuntimeError(f"built {idx.kind} with {len(idx)} vectors, wanted {kind} with {len(ids)}")
    manifest = json.loads((directory / MANIFEST).read_text())
    size = (directory / manifest["path"] / "index.faiss").stat().st_size / 2**20
    return Built(idx, state["seconds"], state["steps"], size)


def product_search(idx: FaissIndex, k: int, allowed: np.ndarray | None = None) -> Search:
    return lambda q: idx.search(q, k, allowed_ids=allowed)[1]


def params_for(kind: str, selector: Any, k: int, ef_search: int = 0) -> Any:
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=max(ef_search or rag_index.HNSW_EF_SEARCH, k))
    return faiss.SearchParameters(sel=selector)


def cached_selector_search(idx: FaissIndex, kind: str, k: int, allowed: np.ndarray, ef_search: int = 0) -> Search:
    selector = faiss.IDSelectorBatch(allowed)
    params = params_for(kind, selector, k, ef_search)
    inner = idx._index  # the search alone, as FaissIndex runs it, minus building the selector

    def search(q: np.ndarray) -> np.ndarray:
        return inner.search(q, k, params=params)[1]

    return search


def bitmap_search(idx: FaissIndex, kind: str, k: int, allowed: np.ndarray, id_space: int) -> Search:
    inner = idx._index

    def search(q: np.ndarray) -> np.ndarray:
        mask = np.zeros(id_space + 1, dtype=bool)
        mask[allowed] = True
        bits = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        return inner.search(q, k, params=params_for(kind, selector, k))[1]

    return search


def partition_search(parts: list[FaissIndex], k: int) -> Search:
    def search(q: np.ndarray) -> np.ndarray:
        scores, ids = zip(*(p.search(q, k) for p in parts), strict=True)
        s, i = np.concatenate(scores, axis=1), np.concatenate(ids, axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(i, top, 1)

    return search


# --- the experiments ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleRow:
    n: int
    kind: str
    build_s: float
    build_steps: int
    disk_mb: float
    threads: int
    p50_ms: float
    p99_ms: float
    qps: float
    cpu: float
    batch_qps: float
    recall: float


@dataclass(frozen=True)
class FilterRow:
    n: int
    kind: str
    visible: str
    method: str
    build_s: float
    threads: int
    p50_ms: float
    p99_ms: float
    qps: float
    cpu: float
    recall: float


@dataclass(frozen=True)
class Plan:
    """What one invocation measures, from the command line."""

    kinds: list[str]
    threads: list[int]
    build_threads: int
    queries: int
    runs: int
    k: int
    groups: int
    visible: list[float]
    partition_kinds: list[str]
    step: int
    deadline: float
    seed: int


def scale(n: int, plan: Plan, data: np.ndarray, queries: np.ndarray, truth: np.ndarray,
          work: Path) -> tuple[list[ScaleRow], dict[str, FaissIndex]]:
    ids = np.arange(1, n + 1, dtype=np.int64)
    rows, indexes = [], {}
    for kind in plan.kinds:
        faiss.omp_set_num_threads(plan.build_threads)
        built = build(work / f"{kind}-{n}", kind, data, ids, plan.step if kind == "hnsw" else 0, plan.deadline)
        indexes[kind] = built.index
        for threads in plan.threads:
            faiss.omp_set_num_threads(threads)
            log(f"n={n:,} {kind}: timing {len(queries)} queries x {plan.runs} runs on {threads} thread(s)")
            timing, found = time_single(product_search(built.index, plan.k), queries, plan.runs)
            if np.any(found < 1):
                raise RuntimeError(f"{kind} returned fewer than k results")
            batch = time_batch(product_search(built.index, plan.k), queries, plan.runs)
            rows.append(ScaleRow(n, kind, built.seconds, built.steps, built.disk_mb, threads, timing.p50_ms,
                                 timing.p99_ms, timing.qps, timing.cpu, batch, recall_at(found, truth, plan.k)))
    return rows, indexes


def filtering(n: int, plan: Plan, indexes: dict[str, FaissIndex], data: np.ndarray, queries: np.ndarray,
              work: Path) -> list[FilterRow]:
    rng = np.random.default_rng([plan.seed, 7])
    group_of = rng.integers(plan.groups, size=n)
    ids = np.arange(1, n + 1, dtype=np.int64)
    rows: list[FilterRow] = []
    for kind in plan.kinds:
        parts, part_build = [], 0.0
        if kind in plan.partition_kinds:
            faiss.omp_set_num_threads(plan.build_threads)
            for g in range(plan.groups):
                if time.monotonic() > plan.deadline:
                    raise BuildIncomplete(f"{kind} partitions: {g} of {plan.groups} built; run the same command again")
                built = build(work / f"{kind}-{n}-group{g}", kind, data, ids[group_of == g],
                              plan.step if kind == "hnsw" else 0, plan.deadline)
                parts.append(built.index)
                part_build += built.seconds
        for share in plan.visible:
            user_groups = list(range(max(1, round(share * plan.groups))))
            mask = np.isin(group_of, user_groups)
            allowed = ids[mask]
            truth = exact_topk(data, queries, plan.k, mask)
            label = f"{len(user_groups)}/{plan.groups} groups ({mask.mean():.0%})"
            methods: list[tuple[str, float, Search]] = [
                ("selector", 0.0, product_search(indexes[kind], plan.k, allowed)),
                ("selector-cached", 0.0, cached_selector_search(indexes[kind], kind, plan.k, allowed)),
                ("bitmap", 0.0, bitmap_search(indexes[kind], kind, plan.k, allowed, n)),
            ]
            if kind == "hnsw":
                # HNSW walks past the ids the filter rejects: widen the beam by 1/visible share
                wide = int(np.ceil(rag_index.HNSW_EF_SEARCH / mask.mean()))
                methods.append((f"sel-cached ef{wide}", 0.0,
                                cached_selector_search(indexes[kind], kind, plan.k, allowed, wide)))
            if parts:
                methods.append(("partitions", part_build, partition_search([parts[g] for g in user_groups], plan.k)))
            for threads in plan.threads:
                faiss.omp_set_num_threads(threads)
                for method, build_s, search in methods:
                    log(f"n={n:,} {kind} {label}: {method} on {threads} thread(s)")
                    timing, found = time_single(search, queries, plan.runs)
                    leaked = np.setdiff1d(found[found > 0], allowed)
                    if len(leaked):
                        raise RuntimeError(f"{method} returned {len(leaked)} ids the user may not see")
                    rows.append(FilterRow(n, kind, label, method, build_s, threads, timing.p50_ms, timing.p99_ms,
                                          timing.qps, timing.cpu, recall_at(found, truth, plan.k)))
    return rows


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    started = time.monotonic()
    cpus = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated corpus sizes (1000000 is the large point)")
    ap.add_argument("--kinds", default="flat,hnsw", help="flat (exact), hnsw (approximate), or both")
    ap.add_argument("--queries", type=int, default=500, help="fixed query set (the first N of one stream)")
    ap.add_argument("--runs", type=int, default=3, help="timing passes over the query set; medians reported")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", default=f"1,{cpus}" if cpus > 1 else "1",
                    help="faiss OpenMP threads while searching; each listed count is timed")
    ap.add_argument("--build-threads", type=int, default=cpus, help="faiss OpenMP threads while building")
    ap.add_argument("--filter", action="store_true", help="also measure permission filtering")
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--visible", default="0.05,0.5", help="shares of the groups a user belongs to")
    ap.add_argument("--partition-kinds", default="flat,hnsw", help="kinds for which per-group partitions are built")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--latent-dim", type=int, default=48)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.9, help="within-cluster spread in the latent space")
    ap.add_argument("--noise", type=float, default=0.25, help="isotropic noise in the full space")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep indexes here and reuse them across invocations (a temporary directory otherwise)")
    ap.add_argument("--build-step", type=int, default=0,
                    help="with --workdir: reconcile HNSW indexes this many vectors at a time, resumably")
    ap.add_argument("--build-budget", type=float, default=float("inf"),
                    help="with --workdir: seconds after which a resumable build stops (exit status 3)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if (a.build_step or a.build_budget != float("inf")) and a.workdir is None:
        ap.error("--build-step and --build-budget need --workdir")
    plan = Plan(kinds=[x for x in a.kinds.split(",") if x], threads=ints(a.threads), build_threads=a.build_threads,
                queries=a.queries, runs=a.runs, k=a.k, groups=a.groups,
                visible=[float(x) for x in a.visible.split(",")],
                partition_kinds=[x for x in a.partition_kinds.split(",") if x], step=a.build_step,
                deadline=started + a.build_budget, seed=a.seed)
    mixture = Mixture(a.dim, a.latent_dim, a.clusters, a.spread, a.noise, a.seed)
    tag = hashlib.sha256(json.dumps(asdict(mixture)).encode()).hexdigest()[:8]
    queries = mixture.sample(a.queries, stream=1)
    scale_rows: list[ScaleRow] = []
    filter_rows: list[FilterRow] = []
    data_stats: dict[str, float] = {}
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        root = a.workdir if a.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for n in sizes_of(a.sizes):
            log(f"n={n:,}: sampling data")
            data = mixture.sample(n, stream=0)
            truth = exact_topk(data, queries, plan.k)
            top1 = np.einsum("ij,ij->i", queries, data[truth[:, 0] - 1])
            topk = np.einsum("ij,ij->i", queries, data[truth[:, -1] - 1])
            rand = np.einsum("ij,ij->i", queries, data[np.arange(len(queries)) % n])
            data_stats = {"top1_cos": float(top1.mean()), "topk_cos": float(topk.mean()),
                          "random_cos": float(rand.mean())}
            work = root / f"{tag}-{n}"
            try:
                rows, indexes = scale(n, plan, data, queries, truth, work)
                scale_rows += rows
                if a.filter:
                    filter_rows += filtering(n, plan, indexes, data, queries, work)
            except BuildIncomplete as stop:
                log(f"stopped at the build budget: {stop}")
                return 3
            del indexes, data
    report = {
        "machine": {"cpus": cpus, "build_threads": a.build_threads, "faiss": faiss.__version__,
                    "numpy": np.__version__, "python": platform.python_version(),
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "hnsw": {"M": rag_index.HNSW_M, "efConstruction": rag_index.HNSW_EF_CONSTRUCTION,
                 "efSearch": rag_index.HNSW_EF_SEARCH},
        "data": {**asdict(mixture), "queries": a.queries, "k": a.k, "runs": a.runs,
                 "last_size_mean_cosines": data_stats},
        "scale": [asdict(r) for r in scale_rows],
        "filter": [asdict(r) for r in filter_rows],
    }
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report, scale_rows, filter_rows, a)
    return 0


def sizes_of(text: str) -> list[int]:
    return ints(text.replace("_", ""))


def print_tables(report: dict[str, Any], scale_rows: list[ScaleRow], filter_rows: list[FilterRow],
                 a: argparse.Namespace) -> None:
    m, h, d = report["machine"], report["hnsw"], report["data"]
    cos = d["last_size_mean_cosines"]
    print(f"{m['cpus']} CPUs, faiss {m['faiss']} (builds on {m['build_threads']} threads); HNSW M={h['M']} "
          f"efConstruction={h['efConstruction']} efSearch={h['efSearch']}; {a.queries} queries, k={a.k}, "
          f"median of {a.runs} runs; peak RSS {m['peak_rss_mb']:.0f} MB; load average "
          f"{m['loadavg_before'][0]:.2f} before, {m['loadavg_after'][0]:.2f} after")
    print(f"data: dim {a.dim}, {a.clusters} clusters in {a.latent_dim} latent dims, spread {a.spread}, noise "
          f"{a.noise}; mean cosine query-top1 {cos.get('top1_cos', 0):.3f}, query-top{a.k} "
          f"{cos.get('topk_cos', 0):.3f}, query-random {cos.get('random_cos', 0):.3f}")
    print("cpu = process CPU s per wall s while timing single queries (about the thread count when undisturbed)")
    print()
    recall = f"recall@{a.k}"
    print(f"{'vectors':>10} {'index':<6}{'build s':>9}{'disk MB':>9}{'thr':>4}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'qps':>8}{'cpu':>6}{'batch qps':>11}{recall:>11}")
    for r in scale_rows:
        print(f"{r.n:>10,} {r.kind:<6}{r.build_s:>9.1f}{r.disk_mb:>9.0f}{r.threads:>4}{r.p50_ms:>9.3f}"
              f"{r.p99_ms:>9.3f}{r.qps:>8.0f}{r.cpu:>6.2f}{r.batch_qps:>11.0f}{r.recall:>11.4f}")
    if filter_rows:
        print()
        print(f"{'vectors':>10} {'index':<6}{'user sees':<22}{'method':<20}{'build s':>9}{'thr':>4}{'p50 ms':>9}"
              f"{'p99 ms':>9}{'qps':>8}{'cpu':>6}{recall:>11}")
        for f in filter_rows:
            print(f"{f.n:>10,} {f.kind:<6}{f.visible:<22}{f.method:<20}{f.build_s:>9.1f}{f.threads:>4}"
                  f"{f.p50_ms:>9.3f}{f.p99_ms:>9.3f}{f.qps:>8.0f}{f.cpu:>6.2f}{f.recall:>11.4f}")


if __name__ == "__main__":
    sys.exit(main())
