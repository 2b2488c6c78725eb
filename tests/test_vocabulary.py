"""The vocabulary detector (rag.vocabulary) and address blocks (rag.addresses) on their own, and the
default and strict policies on Enclave's unseen labelled set (tests/fixtures/pii-unseen)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.addresses import extend_addresses
from rag.vocabulary import OrdinaryVocabulary, VocabularyDetector

ROOT = Path(__file__).resolve().parents[1]
UNSEEN = Path(__file__).resolve().parent / "fixtures" / "pii-unseen"


@pytest.fixture(scope="module")
def detector() -> VocabularyDetector:
    d = VocabularyDetector()
    d.warm_up()
    return d


def found(detector: VocabularyDetector, text: str) -> list[tuple[str, str]]:
    return [(f.entity_type, text[f.start:f.end]) for f in detector.detect(text)]


@pytest.mark.parametrize(("text", "expected"), [
    ("The assistant to Szymon Walczak joined in May.", ("PERSON", "Szymon Walczak")),
    ("Özlem thanked the team for covering the shifts.", ("PERSON", "Özlem")),
    ("Please book MAVRIDIS, Panagiotis for a repeat echo.", ("PERSON", "MAVRIDIS, Panagiotis")),
    ("Joost van der Meer signed the form.", ("PERSON", "Joost van der Meer")),
    ("The panel is Siobhán Ní Cheallaigh and two others.", ("PERSON", "Siobhán Ní Cheallaigh")),
    ("Collected from Jae-hyun Choi at the station.", ("PERSON", "Jae-hyun Choi")),
    ("The referral came from Вячеслав Воробьёв yesterday.", ("PERSON", "Вячеслав Воробьёв")),
    ("Seen today: 佐藤健太, 67.", ("PERSON", "佐藤健太")),
    ("Home visit at Karlova 14 tomorrow.", ("STREET_ADDRESS", "Karlova 14")),
    ("Deliver to Ehitajate tee 109 before noon.", ("STREET_ADDRESS", "Ehitajate tee 109")),
    ("Post it to ул. Тверская, д. 7, кв. 12 please.", ("STREET_ADDRESS", "ул. Тверская, д. 7, кв. 12")),
    ("Notes: judit balogh phoned twice.", ("PERSON", "judit balogh")),
])
def test_names_and_streets_no_ner_model_knows_are_found(detector: VocabularyDetector, text: str,
                                                        expected: tuple[str, str]) -> None:
    assert expected in found(detector, text)


@pytest.mark.parametrize("text", [
    "Oxaliplatin was reduced after the second cycle; apixaban 5 mg twice daily.",
    "Physiotherapy notes describe reduced range of motion (Band 6) on Monday.",
    "Northgate Bank - customer service log. My IBAN is on file, ASAP please.",
    "The Turkish interpreter is booked for March; see www.WeatherChronicle.ca for the forecast.",
    "Outpatient clinic letter\nDischarge summary",
])
def test_ordinary_words_drug_names_and_acronyms_are_left(detector: VocabularyDetector, text: str) -> None:
    assert found(detector, text) == []


def test_the_policy_allow_list_counts_as_ordinary_words() -> None:
    text = "The parcel went to Kestrelwick yesterday."
    assert found(VocabularyDetector(), text) == [("PERSON", "Kestrelwick")]
    assert found(VocabularyDetector(OrdinaryVocabulary(["Kestrelwick"])), text) == []


def test_strict_mode_fails_closed_on_words_the_default_leaves() -> None:
    text = "Wood asked about it. The card went to Hope Wood and Battery agreed."
    default, strict = VocabularyDetector(), VocabularyDetector(strict=True)
    assert ("PERSON", "Hope Wood") not in found(default, text)
    assert ("PERSON", "Battery") not in found(default, text)
    assert {("PERSON", "Hope Wood"), ("PERSON", "Battery")} <= set(found(strict, text))


def test_text_in_another_language_is_not_taken_for_names_inside_english(detector: VocabularyDetector) -> None:
    assert found(detector, "Пациент осмотрен, жалоб нет, рекомендовано наблюдение.") == []


def test_a_street_takes_the_unit_postcode_and_place_after_it() -> None:
    text = "Home visit at Kungsvägen 7, lgh 1102, 113 51 Stockholm, Sweden. Then lunch."
    start = text.index("Kungsvägen")
    [(a, b)] = extend_addresses(text, [(start, start + len("Kungsvägen 7"))], lambda f: "STREET_ADDRESS",
                                lambda f: f, lambda f, a, b: (a, b))
    assert text[a:b] == "Kungsvägen 7, lgh 1102, 113 51 Stockholm, Sweden"


# -- the unseen labelled set ----------------------------------------------------------------------

FLOORS = {"PERSON": 0.95, "STREET_ADDRESS": 0.95, "PHONE_NUMBER": 0.99, "CREDIT_CARD": 1.0, "IBAN_CODE": 1.0,
          "US_SSN": 1.0, "EMAIL_ADDRESS": 1.0, "IP_ADDRESS": 1.0}


def _unseen_report(policy: str, part: str) -> dict[str, object]:
    from rag.config import Settings
    from rag.eval.pii import evaluate_pii_files, read_labels, read_must

    corpus = UNSEEN / part
    return evaluate_pii_files(corpus / "docs", read_labels(corpus / "labels.jsonl"),
                              Settings(policies_dir=ROOT / "policies"), policy, b"tenant-a",
                              read_must(corpus / "must_redact.json")).to_json()


@pytest.mark.parametrize("part", ["dev", "blind"])
def test_default_policy_meets_the_floors_on_text_it_was_not_written_for(part: str) -> None:
    report = _unseen_report("default", part)
    types: dict[str, dict[str, float]] = report["types"]  # type: ignore[assignment]
    recalls = {t: types[t]["recall"] for t in FLOORS if t in types}
    assert all(recalls[t] >= floor for t, floor in FLOORS.items() if t in recalls), recalls
    assert report["quarantined"] == {}  # every file converged and passed the residual check
    assert report["overall"]["precision"] >= 0.8  # type: ignore[index]


@pytest.mark.slow
def test_strict_policy_finds_at_least_98_percent_of_names_on_unseen_text() -> None:
    for part in ("dev", "blind"):
        report = _unseen_report("strict", part)
        assert report["types"]["PERSON"]["recall"] >= 0.98, (part, report["types"]["PERSON"])  # type: ignore[index]
        assert report["quarantined"] == {}


def test_the_unseen_set_is_labelled_in_every_format() -> None:
    for part, n in (("dev", 48), ("blind", 24)):
        rows = [json.loads(x) for x in (UNSEEN / part / "labels.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(rows) == n
        assert {Path(r["file"]).suffix for r in rows} == {".txt", ".md", ".html", ".docx", ".pdf", ".eml"}


def test_the_shipped_english_word_list_is_what_wordfreq_gives_now() -> None:
    """The list read at start-up instead of 25 languages' word lists (rag/data/english_words.txt) was
    computed from the installed wordfreq with today's thresholds; `python -m rag.vocabulary` rewrites it."""
    from rag.vocabulary import ENGLISH_WORDS_FILE, OrdinaryVocabulary, english_words_header

    lines = ENGLISH_WORDS_FILE.read_text(encoding="utf-8").splitlines()
    assert lines[0] == english_words_header()
    vocabulary = OrdinaryVocabulary()
    computed = vocabulary.compute_english_words()
    assert frozenset(lines[1:]) == computed == vocabulary.english_words()
    assert vocabulary.english_word("treasury") and not vocabulary.english_word("Okonkwo")
