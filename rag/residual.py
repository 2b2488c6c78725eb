"""The residual-PII check: a second, independent detector over redacted chunks.

Runs after step three of ``parse -> chunk -> redact``: in each worker on the chunks it is about
to return (a flagged document is quarantined ``residual_pii`` and nothing of it is stored), and
in the blocking ``no_residual_pii`` asset check on chunks no worker verified (a thin caller of
:func:`check_chunks`). It must not be the detector that just redacted, or it could only catch a
disagreement between two copies of itself, so it uses no NER model at all:

- patterns: Presidio's pattern recognizers (cards, IBANs, e-mail, IP, SSN, libphonenumber) and the
  policy's own, with context words, over a plain tokenizer (``spacy.blank``);
- the vocabulary detector (:mod:`rag.vocabulary`), always on, whatever the policy says about it,
  and in its fail-closed mode when the policy is strict;
- address blocks (:mod:`rag.addresses`).

A finding means the redacted text still holds what looks like personal data to this detector.
Findings carry types and offsets, never values.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag.policy import Policy
from rag.redaction import (
    PHONE_LENIENCY,
    STRUCTURE_DETECTORS,
    Finding,
    _digit_group_phone_recognizer,
    add_policy_recognizers,
    blank_placeholders,
    merge_findings,
    vocabulary_detector,
    with_address_blocks,
    without_ordinary_names,
)

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

# Presidio's recognizers that are patterns and checksums (no NER, no language model).
_PATTERN_RECOGNIZERS = ("CreditCardRecognizer", "EmailRecognizer", "IbanRecognizer", "IpRecognizer",
                        "UsSsnRecognizer", "UsItinRecognizer", "UsBankRecognizer", "UsLicenseRecognizer",
                        "UsPassportRecognizer", "MedicalLicenseRecognizer", "CryptoRecognizer")


class ResidualScanner:
    """Patterns + vocabulary, no NER: what a policy's redaction should have left nothing of.

    ``__init__`` is cheap; :meth:`warm_up` builds the analyzer (a blank spaCy tokenizer, no model).
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._analyzer: AnalyzerEngine | None = None
        self._entities: list[str] = []
        self._lock = threading.Lock()
        self._allowed = frozenset(a.casefold() for a in policy.allow_list)
        # always on: the vocabulary detector is this check's answer to names NER does not know
        self.vocabulary = vocabulary_detector(policy)

    def warm_up(self) -> None:
        with self._lock:
            if self._analyzer is None:
                self._analyzer = self._build()
                self.vocabulary.warm_up()

    def _build(self) -> AnalyzerEngine:
        from rag.config import enforce_offline

        enforce_offline()
        import spacy
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import PhoneRecognizer

        from rag.redaction import _lower_form_engine_class

        engine = _lower_form_engine_class(SpacyNlpEngine)(models=[{"lang_code": "en", "model_name": "blank"}])
        engine.nlp = {"en": spacy.blank("en")}  # a tokenizer only: context words, no entities
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
        names: list[str] = [str(getattr(r, "name", "")) for r in registry.recognizers]
        for name in names:
            if name not in _PATTERN_RECOGNIZERS:
                registry.remove_recognizer(name)
        registry.add_recognizer(_digit_group_phone_recognizer(PhoneRecognizer, self.policy.phone_regions,
                                                              PHONE_LENIENCY[self.policy.phone_leniency]))

        add_policy_recognizers(registry, self.policy)
        enhancer = LemmaContextAwareEnhancer(context_prefix_count=5, context_suffix_count=2)
        analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"],
                                  context_aware_enhancer=enhancer)
        supported = set(analyzer.get_supported_entities(language="en")) | {"PERSON", "STREET_ADDRESS"}
        self._entities = [e for e in self.policy.entities if e in supported]
        return analyzer

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        """Findings per text (types and offsets), after the policy's thresholds and allow-list."""
        self.warm_up()
        assert self._analyzer is not None
        out: list[list[Finding]] = []
        for text in texts:
            blanked = blank_placeholders(text)
            found = [Finding(r.entity_type, r.start, r.end, float(r.score),
                             str((r.recognition_metadata or {}).get("recognizer_name", "pattern")))
                     for r in self._analyzer.analyze(text=blanked, language="en", entities=self._entities,
                                                     score_threshold=0.0)]
            found += [Finding(f.entity_type, f.start, f.end, f.score, f"vocabulary-{f.reason}")
                      for f in self.vocabulary.detect(blanked) if f.entity_type in self._entities]
            if not self.policy.strict:
                # what redaction leaves as ordinary words, this check leaves too (same judgement)
                found = without_ordinary_names(blanked, found, self.vocabulary, STRUCTURE_DETECTORS)
            kept = [f for f in found if f.score >= self.policy.threshold_for(f.entity_type)
                    and blanked[f.start:f.end].strip()
                    and blanked[f.start:f.end].strip().casefold() not in self._allowed]
            out.append(merge_findings(with_address_blocks(blanked, kept)))
        return out


@dataclass
class ResidualReport:
    """What a residual check over stored chunks found: counts only, never text."""

    checked: int = 0
    flagged_chunks: list[int] = field(default_factory=list)
    by_type: Counter[str] = field(default_factory=Counter)
    policy_unavailable: str | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.flagged_chunks and self.policy_unavailable is None


def residual_types(findings: Sequence[Finding]) -> str:
    """'PERSON 2, STREET_ADDRESS 1': what a quarantine record may say about residual findings."""
    counts = Counter(f.entity_type for f in findings)
    return ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))


def check_chunks(rows: Sequence[tuple[int, str, str]], scanner_for: Callable[[str], ResidualScanner],
                 report: ResidualReport | None = None) -> tuple[ResidualReport, list[int]]:
    """Scan ``(chunk id, text, policy name)`` rows; returns the report and the ids found clean.

    ``scanner_for`` gives the scanner of a policy name and raises
    :class:`~rag.errors.PolicyInvalidError` when that policy cannot be loaded; then nothing of
    that policy is marked clean and the report says which policy was unavailable.
    """
    from rag.errors import PolicyInvalidError

    report = report or ResidualReport()
    clean: list[int] = []
    by_policy: dict[str, list[tuple[int, str]]] = {}
    for chunk_id, text, policy_name in rows:
        by_policy.setdefault(policy_name, []).append((chunk_id, text))
    for policy_name, items in by_policy.items():
        try:
            scanner = scanner_for(policy_name)
        except PolicyInvalidError as exc:
            report.policy_unavailable, report.error = policy_name, str(exc)
            report.checked += len(items)
            continue
        for (chunk_id, _), findings in zip(items, scanner.scan([t for _, t in items]), strict=True):
            if findings:
                report.flagged_chunks.append(chunk_id)
                report.by_type.update(f.entity_type for f in findings)
            else:
                clean.append(chunk_id)
        report.checked += len(items)
    return report, clean
