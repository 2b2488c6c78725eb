"""PII recall, precision and speed of a redaction policy on the labelled pii-synthetic corpus.

    python bench/pii_recall.py [--policy default] [--baseline] [--json] [--corpus DIR]
                               [--split tuning|holdout] [--repeat N]

``--split`` scores one half of pii-synthetic as fixed in ``bench/pii_split.json`` (tune on
``tuning``, report ``holdout``); ``--corpus`` takes any directory laid out like pii-synthetic
(``docs/``, ``labels.jsonl``, ``must_redact.json``), e.g. ``tests/fixtures/pii-unseen``.
``--repeat 0`` skips the timing.

The Enclave side is ``enclave eval pii`` (:mod:`rag.eval.pii`): each labelled document is parsed
and chunked as ingestion does and redacted by ingestion's own transform, to a fixpoint; a labelled
value of a must-redact type is *leaked* when it survives verbatim (whitespace normalised), and
precision is the share of removed spans that overlap an occurrence of any labelled value.
``--baseline`` scores out-of-the-box Presidio (predefined recognizers, spaCy small, all entities,
AnonymizerEngine defaults) on the same chunks, the same way. Speed compares chars/s of
``redact_many`` with a per-text ``AnalyzerEngine.analyze`` loop, in the same run.

Prints counts and rates only, never document text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rag.config import load_settings  # noqa: E402
from rag.eval.pii import (  # noqa: E402
    LabelledDocument,
    RedactedDocument,
    evaluate_pii_files,
    load_corpus,
    read_labels,
    read_must,
    score,
)
from rag.ingest import RedactionTransform  # noqa: E402
from rag.parsing import ParseLimits  # noqa: E402
from rag.redaction import DEFAULT_SPACY_MODEL  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "pii-synthetic"
SPLIT_FILE = ROOT / "bench" / "pii_split.json"
TARGETS = {"CREDIT_CARD": 0.99, "IBAN_CODE": 0.99, "US_SSN": 0.99, "EMAIL_ADDRESS": 0.99,
           "PHONE_NUMBER": 0.99, "PERSON": 0.95, "STREET_ADDRESS": 0.95}


def baseline_engines() -> tuple[Any, Any]:
    """Out-of-the-box Presidio: default recognizers, spaCy small, default AnonymizerEngine."""
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": DEFAULT_SPACY_MODEL}]})
    return AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"]), AnonymizerEngine()


def run_baseline(analyzer: Any, anonymizer: Any, docs: Sequence[LabelledDocument]) -> list[RedactedDocument]:
    out = []
    for doc in docs:
        red_chunks, removals = [], []
        for chunk in doc.chunks:
            results = analyzer.analyze(text=chunk.text, language="en")
            red_chunks.append(anonymizer.anonymize(text=chunk.text, analyzer_results=results).text)
            removals.append((chunk.text, tuple((r.entity_type, r.start, r.end) for r in results)))
        out.append(RedactedDocument(tuple(red_chunks), tuple(removals)))
    return out


def _timings(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Seconds per call of each function, interleaved round by round so that ratios are in one run."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="default")
    ap.add_argument("--policies-dir", type=Path, default=ROOT / "policies")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--baseline", action="store_true", help="also score out-of-the-box Presidio")
    ap.add_argument("--split", choices=["tuning", "holdout"], default=None,
                    help=f"score only this half of pii-synthetic ({SPLIT_FILE.name})")
    ap.add_argument("--repeat", type=int, default=5, help="timing rounds (medians are reported; 0: no timing)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    settings = load_settings(policies_dir=args.policies_dir)
    if not (args.corpus / "labels.jsonl").exists():
        print(f"corpus not found: {args.corpus}", file=sys.stderr)
        return 2
    must = read_must(args.corpus / "must_redact.json")
    labels = read_labels(args.corpus / "labels.jsonl")
    if args.split is not None:
        keep = set(json.loads(SPLIT_FILE.read_text(encoding="utf-8"))[args.split])
        labels = {name: value for name, value in labels.items() if name in keep}
    corpus = load_corpus(args.corpus / "docs", labels, ParseLimits.from_settings(settings))
    docs = corpus.documents
    chunks = [c.text for d in docs for c in d.chunks]
    chars = sum(len(c) for c in chunks)

    # recall and precision through ingestion's worker pool and transform (as `enclave eval pii`)
    ours = evaluate_pii_files(args.corpus / "docs", labels, settings, args.policy, b"bench", must,
                              "must_redact.json").to_json()
    # speed in this process, with the object each worker builds
    transform = RedactionTransform(args.policy, str(args.policies_dir), b"bench")
    redactor = transform.redactor
    report: dict[str, Any] = {"policy": args.policy, "split": args.split, "documents": ours["documents"],
                              "chunks": ours["chunks"], "chars": chars, "quarantined": ours["quarantined"], "types": {}}
    base = None
    analyzer = None
    if args.baseline:
        analyzer, anonymizer = baseline_engines()
        base = score([(d.name, d.labels) for d in docs], run_baseline(analyzer, anonymizer, docs))
    for etype, row in ours["types"].items():
        if not row["must_redact"]:
            continue
        report["types"][etype] = {"labelled": row["labelled"], "leaked": row["leaked"], "recall": row["recall"],
                                  "target": TARGETS.get(etype)}
        if base is not None:
            report["types"][etype] |= {"baseline_leaked": base.leaked[etype], "baseline_recall": base.recall([etype])}
    o = ours["overall"]
    report["overall"] = {"recall": o["recall"], "precision": o["precision"], "removed_spans": o["removed_spans"],
                         "removed_by_type": o["removed_by_type"]}
    if base is not None:
        report["baseline_overall"] = {"recall": base.recall(must), "precision": base.precision(),
                                      "removed_spans": base.removed_spans}

    # Speed, same run, interleaved rounds: ingestion's redaction (batched, to a fixpoint), one
    # batched redact_many pass, the same analyzer called per text, and plain Presidio per text.
    entities = list(redactor.detected_entities)
    fns: dict[str, Callable[[], object]] = {
        "ingestion_transform": lambda: transform([(d.name, list(d.chunks)) for d in docs]),
        "redact_many": lambda: redactor.redact_many(chunks),
        "policy_analyzer_per_text": lambda: [redactor.analyzer.analyze(text=c, language="en", entities=entities)
                                             for c in chunks]}
    if analyzer is not None:
        fns["plain_presidio_per_text"] = lambda: [analyzer.analyze(text=c, language="en") for c in chunks]
    speed: dict[str, Any] = {}
    if args.repeat > 0:
        times = _timings(fns, args.repeat)
        speed = {f"{name}_chars_per_s": chars / statistics.median(ts) for name, ts in times.items()}
        if analyzer is not None:
            speed["redact_many_vs_plain_presidio_median_ratio"] = statistics.median(
                p / r for p, r in zip(times["plain_presidio_per_text"], times["redact_many"], strict=True))
        speed["redact_many_vs_policy_analyzer_per_text_median_ratio"] = statistics.median(
            p / r for p, r in zip(times["policy_analyzer_per_text"], times["redact_many"], strict=True))
        speed["rounds"] = args.repeat
    report["speed"] = speed
    report["meets_targets"] = all(row["recall"] >= TARGETS[t] for t, row in report["types"].items() if t in TARGETS)

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    head = f"{'entity':<18}{'labelled':>9}{'leaked':>8}{'recall':>8}{'target':>8}"
    if base is not None:
        head += f"{'base leaked':>12}{'base recall':>12}"
    print(f"policy {args.policy}: {len(docs)} documents, {len(chunks)} chunks, {chars} chars")
    for name, reason in report["quarantined"].items():
        print(f"quarantined as ingestion would (not scored): {name} ({reason})")
    print(head)
    for etype, row in report["types"].items():
        line = (f"{etype:<18}{row['labelled']:>9}{row['leaked']:>8}{row['recall']:>8.3f}"
                f"{(row['target'] or 0):>8.2f}")
        if base is not None:
            line += f"{row['baseline_leaked']:>12}{row['baseline_recall']:>12.3f}"
        print(line)
    o = report["overall"]
    print(f"overall recall {o['recall']:.3f}, precision {o['precision']:.3f} "
          f"({o['removed_spans']} spans removed)")
    if base is not None:
        b = report["baseline_overall"]
        print(f"baseline recall {b['recall']:.3f}, precision {b['precision']:.3f} "
              f"({b['removed_spans']} spans removed)")
    for k, v in speed.items():
        print(f"{k}: {v:,.2f}" if isinstance(v, float) and v < 100 else f"{k}: {v:,.0f}")
    print("targets met" if report["meets_targets"] else "TARGETS NOT MET")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
