"""Access leakage: for each probe (user, groups, question), nothing outside the user's groups shows.

The oracle is independent of the catalog: each document's access rule is read again from the
source itself (its ``.access.json`` files), and every hit, citation and passage put in the
prompt is checked against it. A leak is any of those from a document the probe's groups do
not admit. The figure to reach is zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.base import AccessRule
from connectors.filesystem import FileShareSource
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
    leaks: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"probes": self.probes, "hits_checked": self.hits_checked,
                "citations_checked": self.citations_checked,
                "prompt_passages_checked": self.prompt_passages_checked,
                "leaks": len(self.leaks), "leak_details": self.leaks}


def read_probes(path: Path) -> list[Probe]:
    probes = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            groups = row.get("groups", [])
            if isinstance(groups, str):
                groups = [g for g in groups.split(",") if g]
            probes.append(Probe(str(row["user"]), tuple(groups), str(row["question"])))
    return probes


def source_rules(docs_dir: Path, default_access: AccessRule | None = None) -> dict[str, AccessRule | None]:
    return {d.uri: d.access for d in FileShareSource(docs_dir, default_access=default_access).scan()}


def check_access(engine: QueryEngine, probes: list[Probe], rules: dict[str, AccessRule | None],
                 ask: bool = True, k: int = 10) -> AccessReport:
    report = AccessReport()

    def admitted(uri: str, groups: tuple[str, ...]) -> bool:
        rule = rules.get(uri)
        return rule is not None and rule.admits(groups)

    for probe in probes:
        report.probes += 1
        found = engine.search(probe.question, user=probe.user, groups=list(probe.groups), k=k,
                              purpose="access-evaluation")
        for h in found.result.hits:
            report.hits_checked += 1
            if not admitted(h.source_uri, probe.groups):
                report.leaks.append({"probe": report.probes, "where": "search hit", "uri": h.source_uri})
        if not ask:
            continue
        out = engine.ask(probe.question, user=probe.user, groups=list(probe.groups), purpose="access-evaluation")
        shown = set(out.answer.shown_passage_ids)
        for hit_index, h in enumerate(out.result.hits):
            if f"P{hit_index + 1}" in shown:
                report.prompt_passages_checked += 1
                if not admitted(h.source_uri, probe.groups):
                    report.leaks.append({"probe": report.probes, "where": "prompt passage", "uri": h.source_uri})
        for c in out.answer.citations:
            report.citations_checked += 1
            if not admitted(c.source_uri, probe.groups):
                report.leaks.append({"probe": report.probes, "where": "citation", "uri": c.source_uri})
    return report
