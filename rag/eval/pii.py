"""PII leakage of a redaction policy on labelled documents, measured exactly as ingestion redacts.

Nothing is ingested. Each labelled file is parsed and chunked as the parse workers do
(:func:`rag.parsing.parse_file` with the ingestion limits) and its chunks go through ingestion's
own :class:`~rag.ingest.RedactionTransform` (batched, to a fixpoint); the text it returns is the
text ingestion would store. A labelled value *leaks* when it survives in that text as a whole
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
from typing import Any

from pydantic import BaseModel, ConfigDict

from rag.errors import QuarantinedError, QuarantineReason
from rag.eval import EvaluationInputError, read_jsonl
from rag.ingest import RedactionNotConvergedError, RedactionTransform
from rag.parsing import ParsedChunk, ParseLimits, parse_file
from rag.redaction import Finding, PresidioRedactor, RedactionResult

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
    """Parse and chunk every labelled file as ingestion does; what ingestion would quarantine is set apart."""
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


class _PassRecorder:
    """Stands in for the transform's redactor and keeps what each pass analysed and removed.

    ``redact_many`` is detect then redact (the Presidio split), so the text returned is the
    redactor's own; anything else the transform asks of its redactor goes to the real one.
    """

    def __init__(self, redactor: PresidioRedactor) -> None:
        self.redactor = redactor
        self.passes: list[tuple[list[str], list[list[Finding]]]] = []

    def redact_many(self, texts: list[str]) -> list[RedactionResult]:
        found = self.redactor.detect_many(texts)
        self.passes.append((list(texts), found))
        return [self.redactor.redact(t, f) for t, f in zip(texts, found, strict=True)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redactor, name)


class IngestionRedaction:
    """Ingestion's redaction step for one policy, run in this process on parsed documents."""

    def __init__(self, policy_ref: str, policies_dir: Path, tenant_key: bytes) -> None:
        self.transform = RedactionTransform(policy_ref, str(policies_dir), tenant_key)
        self.redactor: PresidioRedactor = self.transform.redactor
        self._recorder = _PassRecorder(self.redactor)
        self.transform.redactor = self._recorder  # type: ignore[assignment]  # duck-typed: the transform calls redact_many

    def redact(self, document: LabelledDocument) -> RedactedDocument | None:
        """The document's stored chunks, or None where ingestion would quarantine it (redaction_failed)."""
        self._recorder.passes.clear()
        try:
            [stored] = self.transform([(document.name, list(document.chunks))])
        except RedactionNotConvergedError:
            return None
        removals = tuple((text, tuple((f.entity_type, f.start, f.end) for f in found))
                         for texts, findings in self._recorder.passes
                         for text, found in zip(texts, findings, strict=True))
        return RedactedDocument(tuple(c.text for c in stored), removals)


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


def score(documents: Sequence[LabelledDocument], redacted: Sequence[RedactedDocument]) -> PiiScore:
    """Leaks of every labelled type, and precision of every removed span."""
    s = PiiScore()
    for doc, red in zip(documents, redacted, strict=True):
        stored = "\n".join(red.chunks)
        for label in doc.labels:
            if not label.value.split():
                continue
            s.labelled[label.entity_type] += 1
            if _value_pattern(label.value).search(stored):
                s.leaked[label.entity_type] += 1
                s.leaked_values.append((label.entity_type, doc.name, label.value))
        for text, spans in red.removals:
            pii = _label_spans(text, doc.labels)
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
    corpus: Corpus
    redaction_failed: tuple[str, ...]
    score: PiiScore

    def to_json(self) -> dict[str, Any]:
        s = self.score
        types = {t: {"labelled": s.labelled[t], "leaked": s.leaked[t], "recall": s.recall([t]),
                     "must_redact": t in self.must, "in_policy": t in self.in_policy}
                 for t in sorted(s.labelled)}
        quarantined = dict(self.corpus.quarantined) | dict.fromkeys(
            self.redaction_failed, QuarantineReason.REDACTION_FAILED.value)
        return {
            "policy": self.policy, "policy_hash": self.policy_hash, "must_redact": sorted(self.must),
            "must_redact_from": self.must_from,
            "documents": len(self.corpus.documents) - len(self.redaction_failed),
            "chunks": sum(len(d.chunks) for d in self.corpus.documents if d.name not in self.redaction_failed),
            "quarantined": quarantined, "missing": list(self.corpus.missing), "types": types,
            "overall": {"labelled": sum(s.labelled[t] for t in self.must),
                        "leaked": sum(s.leaked[t] for t in self.must),
                        "recall": s.recall(self.must), "precision": s.precision(),
                        "removed_spans": s.removed_spans, "removed_on_labelled_pii": s.removed_on_pii,
                        "removed_by_type": dict(sorted(s.removed_by_type.items()))},
            "leaked_values": [{"type": t, "file": f, "value": v} for t, f, v in s.leaked_values if t in self.must],
        }


def evaluate_pii(redaction: IngestionRedaction, corpus: Corpus, must: frozenset[str] | None = None,
                 must_from: str = "policy") -> PiiReport:
    """Redact every parsed document as ingestion would and score it; ``must`` defaults to the policy's types."""
    policy = redaction.redactor.policy
    kept, redacted, failed = [], [], []
    for doc in corpus.documents:
        out = redaction.redact(doc)
        if out is None:
            failed.append(doc.name)
        else:
            kept.append(doc)
            redacted.append(out)
    return PiiReport(policy.name, policy.content_hash, frozenset(policy.entities),
                     frozenset(policy.entities) if must is None else must, must_from, corpus, tuple(failed),
                     score(kept, redacted))
