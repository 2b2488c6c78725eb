"""Access leakage: for each probe (user, groups, question), nothing outside the user's groups shows.

The oracle is independent of the catalog: each document's access rule is read again from the
source itself (its ``.access.json`` files), and every hit, citation and passage put in the
prompt from a document of that source is checked against it. A leak is any of those from a
document the probe's groups do not admit, or that the source no longer holds or gives no rule.
The figure to reach is zero. Hits from the catalog's other sources are counted, not judged:
their rules live elsewhere (evaluate each source with its own directory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from connectors.base import AccessRule
from connectors.filesystem import FileShareSource
from rag.catalog.store import CatalogStore
from rag.eval import EvaluationInputError, read_jsonl
from rag.query import QueryEngine


@dataclass(frozen=True)
class Probe:
    user: str
    groups: tuple[str, ...]
    question: str


@dataclass
class AccessReport:
    probes: int = 0
    hits_checked: int = 0
    citations_checked: int = 0
    prompt_passages_checked: int = 0
    other_sources: int = 0  # hits, passages and citations from documents of other sources
    leaks: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"probes": self.probes, "hits_checked": self.hits_checked,
                "citations_checked": self.citations_checked,
                "prompt_passages_checked": self.prompt_passages_checked,
                "not_judged_other_sources": self.other_sources,
                "leaks": len(self.leaks), "leak_details": self.leaks}


class _ProbeLine(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    user: str
    groups: list[str] | str = []
    question: str


def read_probes(path: Path) -> list[Probe]:
    """JSONL, one ``{"user": ..., "groups": [...] or "a,b", "question": ...}`` per line."""
    lines: list[_ProbeLine] = read_jsonl(path, _ProbeLine,
                                         'a probe is {"user": ..., "groups": [...], "question": ...}')
    probes = [Probe(line.user, tuple(g.strip() for g in (line.groups.split(",") if isinstance(line.groups, str)
                                                           else line.groups) if g.strip()), line.question)
              for line in lines]
    if not probes:
        raise EvaluationInputError(f"{path}: no probes found")
    return probes


def source_rules(docs_dir: Path, default_access: AccessRule | None = None) -> dict[str, AccessRule | None]:
    """Each document's rule as the source states it now, by the uri ingestion stores."""
    return {d.uri: d.access for d in FileShareSource(docs_dir, default_access=default_access).scan()}


def source_documents(catalog: CatalogStore, source: str) -> frozenset[int]:
    """Catalog ids of the documents ingested from the source named ``source``."""
    source_id = catalog.source_id(source)
    if source_id is None:
        raise EvaluationInputError(f"the catalog has no source named {source!r}; pass the name it was "
                                   "ingested under (enclave ingest --source, default: the directory name)")
    return frozenset(d.id for d in catalog.known_documents(source_id).values())


def check_access(engine: QueryEngine, probes: list[Probe], rules: dict[str, AccessRule | None],
                 documents: frozenset[int], ask: bool = True, k: int = 10) -> AccessReport:
    """Check every hit (and, with ``ask``, prompt passage and citation) from ``documents`` against ``rules``."""
    report = AccessReport()

    def check(n: int, probe: Probe, where: str, document_id: int, uri: str) -> bool:
        """Judge one item and record a leak; False when it comes from another source (not judged)."""
        if document_id not in documents:
            report.other_sources += 1
            return False
        rule = rules.get(uri)
        if rule is not None and rule.admits(probe.groups):
            return True
        why = ("not in the source" if uri not in rules else "no access rule in the source" if rule is None
               else f"source admits {sorted(rule.groups)}")
        report.leaks.append({"probe": n, "user": probe.user, "groups": list(probe.groups), "where": where,
                             "uri": uri, "why": why})
        return True

    for n, probe in enumerate(probes, 1):
        report.probes += 1
        found = engine.search(probe.question, user=probe.user, groups=list(probe.groups), k=k,
                              purpose="access-evaluation")
        report.hits_checked += sum(check(n, probe, "search hit", h.document_id, h.source_uri)
                                   for h in found.result.hits)
        if not ask:
            continue
        out = engine.ask(probe.question, user=probe.user, groups=list(probe.groups), purpose="access-evaluation")
        shown = set(out.answer.shown_passage_ids)
        report.prompt_passages_checked += sum(  # P1, P2, ...: the passage ids QueryEngine.ask gives its hits
            check(n, probe, "prompt passage", h.document_id, h.source_uri)
            for i, h in enumerate(out.result.hits) if f"P{i + 1}" in shown)
        report.citations_checked += sum(check(n, probe, "citation", c.document_id, c.source_uri)
                                        for c in out.answer.citations)
    return report
