"""Retrieval quality on a golden set: MAP, P@10, P@30, nDCG@10, recall@100 per mode, plus TREC runs.

Every topic goes through QueryEngine.search, the same path (redaction, access filter, hybrid
ranking, audit) as ``enclave search``; chunk hits are folded to documents by their best chunk,
and documents are named by their source file's stem (the DOCNO convention: ``CACM-1410.html``
is ``CACM-1410``). Metrics come from ir_measures (trec_eval's implementations).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import ir_measures
from ir_measures import AP, P, R, nDCG

from rag.query import QueryEngine
from rag.retrieval import Mode

MEASURES = {"MAP": AP, "P@10": P @ 10, "P@30": P @ 30, "nDCG@10": nDCG @ 10, "recall@100": R @ 100}


def doc_key(source_uri: str) -> str:
    return PurePosixPath(source_uri).stem


@dataclass(frozen=True)
class ModeReport:
    mode: str
    aggregate: dict[str, float]
    per_topic: dict[str, dict[str, float]]
    run: dict[str, dict[str, float]]


def run_topics(engine: QueryEngine, topics: dict[str, str], mode: Mode, k: int, user: str,
               groups: list[str]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qid, query in topics.items():
        out = engine.search(query, user=user, groups=groups, k=k * 2, mode=mode, purpose="evaluation")
        docs: dict[str, float] = {}
        for h in out.result.hits:  # hits are best-first: the first chunk of a document is its best
            key = doc_key(h.source_uri)
            if key not in docs and len(docs) < k:
                docs[key] = float(h.score)
        run[qid] = docs
    return run


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    judged = {q: r for q, r in qrels.items() if any(v > 0 for v in r.values())}
    run = {q: run.get(q, {}) for q in judged}
    agg = ir_measures.calc_aggregate(list(MEASURES.values()), judged, run)
    names = {str(m): n for n, m in MEASURES.items()}
    per: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(list(MEASURES.values()), judged, run):
        per.setdefault(metric.query_id, {})[names[str(metric.measure)]] = float(metric.value)
    return {n: float(agg[m]) for n, m in MEASURES.items()}, per


def evaluate_modes(engine: QueryEngine, topics: dict[str, str], qrels: dict[str, dict[str, int]],
                   modes: Iterable[Mode], k: int, user: str, groups: list[str]) -> list[ModeReport]:
    reports = []
    for mode in modes:
        run = run_topics(engine, topics, mode, k, user, groups)
        agg, per = evaluate(run, qrels)
        reports.append(ModeReport(mode, agg, per, run))
    return reports


def trec_run_lines(report: ModeReport) -> list[str]:
    lines = []
    for qid, docs in report.run.items():
        ranked = sorted(docs.items(), key=lambda kv: -kv[1])
        lines += [f"{qid} Q0 {doc} {rank} {score:.6f} enclave-{report.mode}"
                  for rank, (doc, score) in enumerate(ranked, 1)]
    return lines


def to_json(reports: list[ModeReport], topics: int, judged: int) -> dict[str, Any]:
    return {"topics": topics, "judged_topics": judged,
            "modes": {r.mode: {"aggregate": r.aggregate, "per_topic": r.per_topic} for r in reports}}
