"""PII leakage of a redaction policy on labelled documents, measured exactly as ingestion redacts.

Nothing is ingested. The labelled files go through ingestion's own worker path: the same
:class:`~rag.workers.ParsePool` (worker count, memory cap, time limit, parse limits from the
settings) with ingestion's :class:`~rag.ingest.RedactionTransform` (batched, to a fixpoint, then
the residual check), asked only to also send back what each pass removed. The text it returns is
the text ingestion would store, and a file it quarantines is reported as ingestion would record
it. A labelled value *leaks* when it survives in that text as a whole
word, in any letter case and with any whitespace between its words. Precision is the share of
removed spans that overlap such an occurrence of a labelled value of any type (organisations and
places count as PII-like context). A file
ingestion would quarantine (unparseable, or redaction that does not converge) stores nothing and
is reported apart. Leaked values appear only in the report object, never in logs.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from rag.errors import QuarantinedError
from rag.eval import EvaluationInputError, read_jsonl
from rag.ingest import redaction_transform_factory
from rag.parsing import ParsedChunk, ParseLimits, parse_file
from rag.policy import Policy, load_policy, resolve_policy_path
from rag.workers import FileJob, ParsePool

if TYPE_CHECKING:
    from rag.config import Settings

Spans = tuple[tuple[str, int, int], ...]  # (entity type, start, end)


@dataclass(frozen=True)
class Label:
    entity_type: str
    value: str


@dataclass(frozen=True)
class LabelledDocument:
    name: str  # path relative to the documents directory, as labels.jsonl names it
    chunks: tuple[ParsedChunk, ...]
    labels: tuple[Label, ...]


@dataclass(frozen=True)
class RedactedDocument:
    """What ingestion would store for one document, and what each redaction pass removed.

    ``removals`` holds, per chunk and pass, the text that pass analysed and the spans it removed
    from it (offsets into that text), so that every removed span can be scored for precision.
    """

    chunks: tuple[str, ...]
    removals: tuple[tuple[str, Spans], ...]


@dataclass(frozen=True)
class Corpus:
    documents: tuple[LabelledDocument, ...]
    quarantined: dict[str, str]  # labelled file → quarantine reason
    missing: tuple[str, ...]  # labelled files that are not in the directory


class _Entity(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    type: str
    value: str


class _LabelLine(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    file: str
    entities: list[_Entity]


def read_labels(path: Path) -> dict[str, tuple[Label, ...]]:
    """``{"file": NAME, "entities": [{"type": TYPE, "value": VALUE}, ...]}`` per line."""
    lines: list[_LabelLine] = read_jsonl(
        path, _LabelLine, 'a label line is {"file": ..., "entities": [{"type": ..., "value": ...}]}')
    labels = {line.file: tuple(Label(e.type, e.value) for e in line.entities) for line in lines}
    if not labels:
        raise EvaluationInputError(f"{path}: no labelled documents")
    return labels


def read_must(path: Path) -> frozenset[str]:
    """The entity types that must not survive: a JSON list, as in pii-synthetic's must_redact.json."""
    try:
        types = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        types = None
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise EvaluationInputError(f'{path}: must-redact types are a JSON list of entity names ["PERSON", ...]')
    return frozenset(types)


def load_corpus(docs_dir: Path, labels: dict[str, tuple[Label, ...]], limits: ParseLimits) -> Corpus:
    """Parse and chunk every labelled file in this process, as a parse worker does (for comparisons
    such as bench/pii_recall.py's baseline); what parsing would quarantine is set apart."""
    # unstructured prints a banner on stdout unless told not to; the parse workers say so too.
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    documents, quarantined, missing = [], {}, []
    for name, file_labels in sorted(labels.items()):
        path = Path(docs_dir) / name
        if not path.is_file():
            missing.append(name)
            continue
        try:
            chunks = parse_file(path, limits)
        except QuarantinedError as exc:
            quarantined[name] = exc.reason.value
            continue
        documents.append(LabelledDocument(name, tuple(chunks), file_labels))
    if not documents and not quarantined:
        raise EvaluationInputError(f"none of the {len(labels)} labelled files is in {docs_dir}")
    return Corpus(tuple(documents), quarantined, tuple(missing))


@dataclass(frozen=True)
class RedactionRun:
    """What ingestion's redaction step made of each labelled file: stored text or a quarantine."""

    documents: tuple[tuple[str, tuple[Label, ...], RedactedDocument], ...]
    quarantined: dict[str, str]  # labelled file → quarantine reason
    missing: tuple[str, ...]  # labelled files that are not in the directory


def redact_like_ingestion(docs_dir: Path, labels: dict[str, tuple[Label, ...]], settings: Settings,
                          policy_ref: str, tenant_key: bytes) -> RedactionRun:
    """Run the labelled files through ingestion's worker pool and redaction transform; store nothing."""
    ref = str(resolve_policy_path(policy_ref, settings.policies_dir).resolve())
    factory = redaction_transform_factory(ref, str(settings.policies_dir), tenant_key, record_removals=True)
    jobs, missing = [], []
    for name in sorted(labels):
        path = Path(docs_dir) / name
        if not path.is_file():
            missing.append(name)
            continue
        jobs.append(FileJob(key=name, filename=path.name, data=path.read_bytes()))
    if not jobs:
        raise EvaluationInputError(f"none of the {len(labels)} labelled files is in {docs_dir}")
    documents: dict[str, RedactedDocument] = {}
    quarantined: dict[str, str] = {}
    with ParsePool(workers=min(settings.parse_workers, len(jobs)), timeout_s=settings.parse_timeout_s,
                   memory_mb=settings.parse_memory_mb, limits=ParseLimits.from_settings(settings),
                   transform_factory=factory) as pool:
        for outcome in pool.process(jobs):
            if outcome.quarantine is not None:
                quarantined[outcome.key] = str(outcome.quarantine[0])
                continue
            removals = tuple(step for chunk_passes in (outcome.extra or ()) for step in chunk_passes)
            documents[outcome.key] = RedactedDocument(tuple(c.text for c in outcome.chunks or ()), removals)
    return RedactionRun(tuple((n, labels[n], documents[n]) for n in sorted(documents)), quarantined,
                        tuple(missing))


@dataclass
class PiiScore:
    labelled: Counter[str] = field(default_factory=Counter)
    leaked: Counter[str] = field(default_factory=Counter)
    removed_spans: int = 0
    removed_on_pii: int = 0
    removed_by_type: Counter[str] = field(default_factory=Counter)
    leaked_values: list[tuple[str, str, str]] = field(default_factory=list)  # (type, file, value)

    def recall(self, types: Sequence[str] | frozenset[str]) -> float | None:
        n = sum(self.labelled[t] for t in types)
        return 1.0 - sum(self.leaked[t] for t in types) / n if n else None

    def precision(self) -> float | None:
        return self.removed_on_pii / self.removed_spans if self.removed_spans else None


def _value_pattern(value: str) -> re.Pattern[str]:
    """A labelled value as it may appear: any whitespace between its words, any letter case
    ("salazar" labelled, "Salazar" in the text), not inside a longer word ("Eva" in "Evaluation")."""
    words = value.split()
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)", re.IGNORECASE)


def _label_spans(text: str, labels: Sequence[Label]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for label in labels:
        if label.value.split():
            spans.extend(m.span() for m in _value_pattern(label.value).finditer(text))
    return spans


def score(documents: Sequence[tuple[str, Sequence[Label]]], redacted: Sequence[RedactedDocument]) -> PiiScore:
    """Leaks of every labelled type, and precision of every removed span; ``documents`` are
    ``(name, labels)`` in the order of ``redacted``."""
    s = PiiScore()
    for (name, labels), red in zip(documents, redacted, strict=True):
        stored = "\n".join(red.chunks)
        for label in labels:
            if not label.value.split():
                continue
            s.labelled[label.entity_type] += 1
            if _value_pattern(label.value).search(stored):
                s.leaked[label.entity_type] += 1
                s.leaked_values.append((label.entity_type, name, label.value))
        for text, spans in red.removals:
            pii = _label_spans(text, labels)
            for etype, a, b in spans:
                s.removed_spans += 1
                s.removed_by_type[etype] += 1
                if any(a < pb and pa < b for pa, pb in pii):
                    s.removed_on_pii += 1
    return s


@dataclass(frozen=True)
class PiiReport:
    policy: str
    policy_hash: str
    in_policy: frozenset[str]
    must: frozenset[str]
    must_from: str  # the --must file, or "policy"
    run: RedactionRun
    score: PiiScore

    def to_json(self) -> dict[str, Any]:
        s = self.score
        types = {t: {"labelled": s.labelled[t], "leaked": s.leaked[t], "recall": s.recall([t]),
                     "must_redact": t in self.must, "in_policy": t in self.in_policy}
                 for t in sorted(s.labelled)}
        return {
            "policy": self.policy, "policy_hash": self.policy_hash, "must_redact": sorted(self.must),
            "must_redact_from": self.must_from,
            "documents": len(self.run.documents),
            "chunks": sum(len(red.chunks) for _, _, red in self.run.documents),
            "quarantined": dict(sorted(self.run.quarantined.items())), "missing": list(self.run.missing),
            "types": types,
            "overall": {"labelled": sum(s.labelled[t] for t in self.must),
                        "leaked": sum(s.leaked[t] for t in self.must),
                        "recall": s.recall(self.must), "precision": s.precision(),
                        "removed_spans": s.removed_spans, "removed_on_labelled_pii": s.removed_on_pii,
                        "removed_by_type": dict(sorted(s.removed_by_type.items()))},
            "leaked_values": [{"type": t, "file": f, "value": v} for t, f, v in s.leaked_values if t in self.must],
        }


def evaluate_pii(run: RedactionRun, policy: Policy, must: frozenset[str] | None = None,
                 must_from: str = "policy") -> PiiReport:
    """Score what ingestion's redaction made of each file; ``must`` defaults to the policy's types."""
    return PiiReport(policy.name, policy.content_hash, frozenset(policy.entities),
                     frozenset(policy.entities) if must is None else must, must_from, run,
                     score([(name, labels) for name, labels, _ in run.documents],
                           [red for _, _, red in run.documents]))


def evaluate_pii_files(docs_dir: Path, labels: dict[str, tuple[Label, ...]], settings: Settings,
                       policy_ref: str, tenant_key: bytes, must: frozenset[str] | None = None,
                       must_from: str = "policy") -> PiiReport:
    """Redact the labelled files exactly as ingestion would, then score them."""
    policy = load_policy(policy_ref, settings.policies_dir)
    return evaluate_pii(redact_like_ingestion(docs_dir, labels, settings, policy_ref, tenant_key), policy,
                        must, must_from)


_PLACEHOLDER_WORD = re.compile(r"<[A-Z][A-Z0-9_]*(?::[0-9a-f]{8})?>")
_PROSE_WORD = re.compile(r"\w+")


@dataclass
class OverRedaction:
    """What a policy removed from text that holds no personal data: every removal is a false positive.

    ``words`` counts the words of the stored text, each placeholder as one word. ``tokens`` counts
    removed values (letter case folded) by type: meant for public, PII-free text only.
    """

    documents: int = 0
    words: int = 0
    placeholders: Counter[str] = field(default_factory=Counter)
    tokens: Counter[tuple[str, str]] = field(default_factory=Counter)
    quarantined: dict[str, str] = field(default_factory=dict)

    def per_thousand_words(self) -> float:
        return 1000.0 * sum(self.placeholders.values()) / self.words if self.words else 0.0

    def to_json(self, top: int = 0) -> dict[str, Any]:
        return {"documents": self.documents, "words": self.words, "placeholders": sum(self.placeholders.values()),
                "placeholders_per_1000_words": round(self.per_thousand_words(), 2),
                "by_type": dict(sorted(self.placeholders.items())),
                "quarantined": dict(sorted(self.quarantined.items())),
                "most_removed": [{"type": t, "value": v, "count": n} for (t, v), n in self.tokens.most_common(top)]}


def over_redaction(run: RedactionRun) -> OverRedaction:
    """Placeholders and removed values of a run over PII-free documents."""
    out = OverRedaction(documents=len(run.documents), quarantined=dict(run.quarantined))
    for _, _, red in run.documents:
        for chunk in red.chunks:
            out.words += len(_PROSE_WORD.findall(_PLACEHOLDER_WORD.sub(" X ", chunk)))
            out.placeholders.update(m.group()[1:-1].split(":")[0] for m in _PLACEHOLDER_WORD.finditer(chunk))
        for text, spans in red.removals:
            out.tokens.update((etype, " ".join(text[a:b].split()).casefold()) for etype, a, b in spans)
    return out


def over_redaction_files(docs_dir: Path, settings: Settings, policy_ref: str, tenant_key: bytes,
                         pattern: str = "**/*") -> OverRedaction:
    """Redact every file under ``docs_dir`` exactly as ingestion would, and count what was removed."""
    files = [p for p in sorted(Path(docs_dir).glob(pattern)) if p.is_file() and not p.name.startswith(".")]
    names: dict[str, tuple[Label, ...]] = {str(p.relative_to(docs_dir)): () for p in files}
    if not names:
        raise EvaluationInputError(f"no files in {docs_dir}")
    return over_redaction(redact_like_ingestion(docs_dir, names, settings, policy_ref, tenant_key))
