"""PII recall, precision and speed of a redaction policy on the labelled pii-synthetic corpus.

    python bench/pii_recall.py [--policy default] [--baseline] [--json] [--corpus DIR]

For each document: parse it (``rag.parsing.parse_file``), redact its chunks in one batched
``redact_many`` call, and check each labelled value of a must-redact type: it is *leaked* when it
survives verbatim (whitespace normalised) in the redacted text. Precision is the share of removed
spans that overlap an occurrence of any labelled value (of any labelled type, e.g. organisations
and places count as PII-like context). ``--baseline`` adds out-of-the-box Presidio (predefined
recognizers, spaCy small, all entities, AnonymizerEngine defaults). Speed compares chars/s of
``redact_many`` with a per-text ``AnalyzerEngine.analyze`` loop, in the same run.

Prints counts and rates only, never document text.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag.config import enforce_offline  # noqa: E402
from rag.policy import load_policy  # noqa: E402
from rag.redaction import DEFAULT_SPACY_MODEL, PresidioRedactor  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "pii-synthetic"
TARGETS = {"CREDIT_CARD": 0.99, "IBAN_CODE": 0.99, "US_SSN": 0.99, "EMAIL_ADDRESS": 0.99,
           "PHONE_NUMBER": 0.99, "PERSON": 0.95, "STREET_ADDRESS": 0.95}


@dataclass(frozen=True)
class Document:
    name: str
    chunks: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]  # (type, value)

    @property
    def text(self) -> str:
        return "\n".join(self.chunks)


@dataclass
class Score:
    labelled: Counter[str] = field(default_factory=Counter)
    leaked: Counter[str] = field(default_factory=Counter)
    removed_spans: int = 0
    removed_on_pii: int = 0
    removed_by_type: Counter[str] = field(default_factory=Counter)

    def recall(self, entity: str) -> float:
        n = self.labelled[entity]
        return 1.0 - self.leaked[entity] / n if n else float("nan")

    def overall_recall(self) -> float:
        n = sum(self.labelled.values())
        return 1.0 - sum(self.leaked.values()) / n if n else float("nan")

    def precision(self) -> float:
        return self.removed_on_pii / self.removed_spans if self.removed_spans else float("nan")


def _norm(s: str) -> str:
    return " ".join(s.split())


def load_corpus(corpus: Path) -> list[Document]:
    from rag.parsing import parse_file

    labels = {}
    for line in (corpus / "labels.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            labels[row["file"]] = tuple((e["type"], e["value"]) for e in row["entities"])
    docs = []
    for path in sorted((corpus / "docs").iterdir()):
        chunks = tuple(c.text for c in parse_file(path))
        docs.append(Document(path.name, chunks, labels.get(path.name, ())))
    return docs


def _label_spans(text: str, labels: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
    spans = []
    for _, value in labels:
        words = value.split()
        if not words:
            continue
        pattern = r"\s+".join(re.escape(w) for w in words)
        spans.extend(m.span() for m in re.finditer(pattern, text))
    return spans


Spans = list[tuple[str, int, int]]  # (type, start, end) per chunk


def score(docs: Sequence[Document], must: set[str], redacted: Sequence[Sequence[str]],
          removed: Sequence[Sequence[Spans]]) -> Score:
    s = Score()
    for doc, red_chunks, doc_spans in zip(docs, redacted, removed, strict=True):
        red = _norm("\n".join(red_chunks))
        for etype, value in doc.labels:
            if etype in must and _norm(value):
                s.labelled[etype] += 1
                if _norm(value) in red:
                    s.leaked[etype] += 1
        offset = 0
        for chunk, spans in zip(doc.chunks, doc_spans, strict=True):
            pii = _label_spans(chunk, doc.labels)
            for etype, a, b in spans:
                s.removed_spans += 1
                s.removed_by_type[etype] += 1
                if any(a < pb and pa < b for pa, pb in pii):
                    s.removed_on_pii += 1
            offset += len(chunk) + 1
    return s


def run_policy(redactor: PresidioRedactor, docs: Sequence[Document]) -> tuple[list[list[str]], list[list[Spans]]]:
    redacted, removed = [], []
    for doc in docs:
        findings = redactor.detect_many(list(doc.chunks))
        redacted.append([redactor.redact(c, f).text for c, f in zip(doc.chunks, findings, strict=True)])
        removed.append([[(f.entity_type, f.start, f.end) for f in fs] for fs in findings])
    return redacted, removed


def baseline_engines() -> tuple[Any, Any]:
    """Out-of-the-box Presidio: default recognizers, spaCy small, default AnonymizerEngine."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": DEFAULT_SPACY_MODEL}]})
    return AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"]), AnonymizerEngine()


def run_baseline(analyzer: Any, anonymizer: Any, docs: Sequence[Document]) -> tuple[list[list[str]], list[list[Spans]]]:
    redacted, removed = [], []
    for doc in docs:
        red_chunks, spans = [], []
        for chunk in doc.chunks:
            results = analyzer.analyze(text=chunk, language="en")
            red_chunks.append(anonymizer.anonymize(text=chunk, analyzer_results=results).text)
            spans.append([(r.entity_type, r.start, r.end) for r in results])
        redacted.append(red_chunks)
        removed.append(spans)
    return redacted, removed


def _rate(fn: Callable[[], object], chars: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return chars / best


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="default")
    ap.add_argument("--policies-dir", type=Path, default=ROOT / "policies")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--baseline", action="store_true", help="also score out-of-the-box Presidio")
    ap.add_argument("--repeat", type=int, default=3, help="timing repetitions (best is kept)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    enforce_offline()
    if not (args.corpus / "labels.jsonl").exists():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)  # noqa: T201
        return 2
    must = set(json.loads((args.corpus / "must_redact.json").read_text(encoding="utf-8")))
    docs = load_corpus(args.corpus)
    chunks = [c for d in docs for c in d.chunks]
    chars = sum(len(c) for c in chunks)

    redactor = PresidioRedactor(load_policy(args.policy, args.policies_dir), tenant_key=b"bench")
    redactor.warm_up()
    ours = score(docs, must, *run_policy(redactor, docs))
    report: dict[str, Any] = {"policy": args.policy, "documents": len(docs), "chunks": len(chunks),
                              "chars": chars, "types": {}}
    base = None
    analyzer = None
    if args.baseline:
        analyzer, anonymizer = baseline_engines()
        base = score(docs, must, *run_baseline(analyzer, anonymizer, docs))
    for etype in sorted(ours.labelled):
        row = {"labelled": ours.labelled[etype], "leaked": ours.leaked[etype], "recall": ours.recall(etype),
               "target": TARGETS.get(etype)}
        if base is not None:
            row |= {"baseline_leaked": base.leaked[etype], "baseline_recall": base.recall(etype)}
        report["types"][etype] = row
    report["overall"] = {"recall": ours.overall_recall(), "precision": ours.precision(),
                         "removed_spans": ours.removed_spans, "removed_by_type": dict(ours.removed_by_type)}
    if base is not None:
        report["baseline_overall"] = {"recall": base.overall_recall(), "precision": base.precision(),
                                      "removed_spans": base.removed_spans}

    # Speed, same run: batched redact_many vs a per-text analyze loop.
    speed = {"redact_many_chars_per_s": _rate(lambda: redactor.redact_many(chunks), chars, args.repeat),
             "policy_analyzer_per_text_chars_per_s": _rate(
                 lambda: [redactor.analyzer.analyze(text=c, language="en", entities=list(redactor.detected_entities))
                          for c in chunks], chars, args.repeat)}
    if analyzer is not None:
        speed["baseline_analyze_loop_chars_per_s"] = _rate(
            lambda: [analyzer.analyze(text=c, language="en") for c in chunks], chars, args.repeat)
    report["speed"] = speed
    report["meets_targets"] = all(ours.recall(t) >= floor for t, floor in TARGETS.items() if ours.labelled[t])

    if args.json:
        print(json.dumps(report, indent=2))  # noqa: T201
        return 0
    head = f"{'entity':<18}{'labelled':>9}{'leaked':>8}{'recall':>8}{'target':>8}"
    if base is not None:
        head += f"{'base leaked':>12}{'base recall':>12}"
    print(f"policy {args.policy}: {len(docs)} documents, {len(chunks)} chunks, {chars} chars")  # noqa: T201
    print(head)  # noqa: T201
    for etype, row in report["types"].items():
        line = (f"{etype:<18}{row['labelled']:>9}{row['leaked']:>8}{row['recall']:>8.3f}"
                f"{(row['target'] or 0):>8.2f}")
        if base is not None:
            line += f"{row['baseline_leaked']:>12}{row['baseline_recall']:>12.3f}"
        print(line)  # noqa: T201
    o = report["overall"]
    print(f"overall recall {o['recall']:.3f}, precision {o['precision']:.3f} "  # noqa: T201
          f"({o['removed_spans']} spans removed)")
    if base is not None:
        b = report["baseline_overall"]
        print(f"baseline recall {b['recall']:.3f}, precision {b['precision']:.3f} "  # noqa: T201
              f"({b['removed_spans']} spans removed)")
    for k, v in speed.items():
        print(f"{k}: {v:,.0f}")  # noqa: T201
    print("targets met" if report["meets_targets"] else "TARGETS NOT MET")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
