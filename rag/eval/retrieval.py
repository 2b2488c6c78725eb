"""Retrieval quality on a golden set: MAP, P@10, P@30, nDCG@10, recall@100 per mode, plus TREC runs.

Every topic goes through QueryEngine.search, the same path (redaction, access filter, hybrid
ranking, audit) as ``enclave search``; chunk hits are folded to documents by their best chunk.
A document is named the way the qrels name it: by its source file's stem (the DOCNO convention:
``CACM-1410.html`` is ``CACM-1410``) or, where the qrels use it, by its path in the source
(``oncology/summary.txt``, with or without the extension). Numbers in ids compare without leading
zeros, so ``CACM-0071.html`` is the ``CACM-71`` of the CACM qrels. Metrics come from ir_measures
(trec_eval's implementations); a judged topic that retrieves nothing scores 0, as ``trec_eval -c``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import ir_measures
from ir_measures import AP, P, R, nDCG

from rag.query import QueryEngine
from rag.retrieval import Mode

MEASURES = {"MAP": AP, "P@10": P @ 10, "P@30": P @ 30, "nDCG@10": nDCG @ 10, "recall@100": R @ 100}
_NUMBER = re.compile(r"\d+")

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def _canonical(docid: str) -> str:
    return _NUMBER.sub(lambda m: m.group().lstrip("0") or "0", docid)


class DocumentNames:
    """Names a retrieved document (by its source uri) with the id the qrels use for it."""

    def __init__(self, qrels: Qrels) -> None:
        self._known = {_canonical(d): d for judged in qrels.values() for d in judged}

    def name(self, source_uri: str) -> str:
        path = PurePosixPath(source_uri)
        for candidate in (source_uri, str(path.with_suffix("")), path.stem):
            found = self._known.get(_canonical(candidate))
            if found is not None:
                return found
        return path.stem


@dataclass(frozen=True)
class ModeReport:
    mode: str
    aggregate: dict[str, float]
    per_topic: dict[str, dict[str, float]]
    run: Run


def run_topics(engine: QueryEngine, topics: dict[str, str], names: DocumentNames, mode: Mode, k: int,
               user: str, groups: list[str]) -> Run:
    """Each topic's top ``k`` documents, best first, with strictly decreasing scores."""
    run: Run = {}
    for qid, query in topics.items():
        out = engine.search(query, user=user, groups=groups, k=k * 2, mode=mode, purpose="evaluation")
        docs: dict[str, float] = {}
        last = math.inf
        for h in out.result.hits:  # hits are best-first: the first chunk of a document is its best
            key = names.name(h.source_uri)
            if key in docs:
                continue
            # Fused scores tie; trec_eval would then reorder by docno. Keep the engine's order.
            last = min(float(h.score), math.nextafter(last, -math.inf))
            docs[key] = last
            if len(docs) == k:
                break
        run[qid] = docs
    return run


def evaluate(run: Run, qrels: Qrels, topics: Iterable[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Aggregate and per-topic measures over the topics that have a query and a relevant document."""
    judged = {q: qrels[q] for q in topics if any(v > 0 for v in qrels.get(q, {}).values())}
    names = {str(m): n for n, m in MEASURES.items()}
    per = {q: dict.fromkeys(MEASURES, 0.0) for q in judged}
    for metric in ir_measures.iter_calc(list(MEASURES.values()), judged, {q: run.get(q, {}) for q in judged}):
        per[metric.query_id][names[str(metric.measure)]] = float(metric.value)
    agg = {n: (sum(p[n] for p in per.values()) / len(per) if per else 0.0) for n in MEASURES}
    return agg, per


def evaluate_modes(engine: QueryEngine, topics: dict[str, str], qrels: Qrels, modes: Iterable[Mode], k: int,
                   user: str, groups: list[str]) -> list[ModeReport]:
    names = DocumentNames(qrels)
    reports = []
    for mode in modes:
        run = run_topics(engine, topics, names, mode, k, user, groups)
        agg, per = evaluate(run, qrels, topics)
        reports.append(ModeReport(mode, agg, per, run))
    return reports


def trec_run_lines(report: ModeReport) -> list[str]:
    lines = []
    for qid, docs in report.run.items():
        ranked = sorted(docs.items(), key=lambda kv: -kv[1])  # full precision: scores are distinct
        lines += [f"{qid} Q0 {doc} {rank} {score!r} enclave-{report.mode}"
                  for rank, (doc, score) in enumerate(ranked, 1)]
    return lines


def to_json(reports: list[ModeReport], topics: dict[str, str], qrels: Qrels, k: int) -> dict[str, Any]:
    evaluated = sorted(reports[0].per_topic) if reports else []
    return {"topics": len(topics), "judged_topics": len(evaluated), "k": k,
            "judged_topics_without_query": sorted(q for q in qrels if q not in topics
                                                  and any(v > 0 for v in qrels[q].values())),
            "modes": {r.mode: {"aggregate": r.aggregate, "per_topic": r.per_topic,
                               "retrieved": {q: len(d) for q, d in r.run.items()}} for r in reports}}
