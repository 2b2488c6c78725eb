"""Ordinary words, and the detectors built on them for names and places no NER model has seen.

Part of step three (redact) of ``parse -> chunk -> redact``: :class:`PresidioRedactor` registers
:class:`VocabularyDetector` as one more Presidio recognizer, and the ``no_residual_pii`` check
(:mod:`rag.residual`) runs it in its high-recall mode without any NER model.

The idea: in running English text a capitalised word away from the start of a sentence is a
proper noun, and a word that English does not use (per word frequencies) is very likely a name,
a place or a street, whatever its language. So the detector needs no list of names, only a list
of ordinary words: ``wordfreq``'s English frequencies (data CC BY-SA 4.0, shipped in its wheel,
read offline) and a small built-in list of capitalised ordinary words (months, days,
nationalities, honorifics). It finds

- runs of capitalised words (with particles such as "van der", "Ní", initials, "SURNAME, Given")
  that hold a word English does not use, or that stand mid-sentence, or follow a title;
- words in another script (Cyrillic, Greek, Han, Hangul, Arabic, ...) inside Latin-script text;
- a rare capitalised word followed by a house number ("Karlova 14", "Ehitajate tee 7").

``strict`` (the strict policy) fails closed: every capitalised word English does not use is
removed wherever it stands, and runs of ordinary capitalised words mid-sentence too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import regex

# A word: letters with inner apostrophes or hyphens ("O'Brien", "Jae-hyun", "Suur-Karja").
_TOKEN = regex.compile(r"\p{L}[\p{L}\p{M}]*(?:['’-]\p{L}[\p{L}\p{M}]*)*")
_LATIN = regex.compile(r"\p{Script=Latin}")
_FOREIGN_LETTER = regex.compile(r"[\p{L}--\p{Script=Latin}]", regex.V1)
# A run of another script: its words with spaces, digits and address punctuation between them.
_FOREIGN_RUN = regex.compile(
    r"[\p{L}--\p{Script=Latin}][\p{L}\p{M}--\p{Script=Latin}]*"
    # words of the same script, or numbers (house, flat: "д. 7, кв. 12"; not an age after a comma)
    r"(?:[\s,./№#-]{0,3}[\p{L}--\p{Script=Latin}][\p{L}\p{M}--\p{Script=Latin}]*"
    r"|[\s./№#-]{0,3}\d+(?:[-/]\d+)*[\p{L}--\p{Script=Latin}]?)*",
    regex.V1)
_NON_ASCII_LATIN = regex.compile(r"[^\x00-\x7f]")
# A house number after a street name, not a quantity ("Apixaban 5 mg", "Band 6 years"). Gaps of more
# than three spaces are not taken: a placeholder blanked to spaces is a boundary, not a word gap.
_HOUSE_NUMBER = regex.compile(
    r"[ \t]{1,3}(?:No[.:]?[ \t]*)?\d{1,5}[A-Za-z]?(?:[/-](?:\d{1,4}[A-Za-z]?|[A-Za-z]\b))?\.?(?=$|[\s,.;:)|])"
    r"(?![ \t]*(?:%|mg|ml|kg|g|mm|cm|km|mmHg|years?|yrs?|days?|weeks?|months?|hours?|h|min|x|times|units?|"
    r"pm|am|EUR|USD|GBP|per)\b)")
_SENTENCE_END = frozenset(".!?:;|•*#>\"“”()[]{}=\t")
_ADDRESS_MARKS = regex.compile(
    r"\d|(?:都|道|府|県|市|区|町|村|丁目|番地|号|ул\.|д\.|кв\.|пр\.|пер\.|Οδός|οδός|улица|проспект)")

# Words English capitalises that say nothing about a person: calendar, nationalities and languages,
# honorifics (they are cues, not names), religions and holidays, compass points.
ORDINARY_CAPITALISED = frozenset("""
january february march april may june july august september october november december
jan feb mar apr jun jul aug sep sept oct nov dec
monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun
english british american canadian australian irish scottish welsh french german dutch belgian swiss austrian
italian spanish portuguese brazilian mexican argentinian chilean colombian peruvian polish czech slovak
hungarian romanian bulgarian greek turkish russian ukrainian belarusian serbian croatian slovenian bosnian
albanian macedonian estonian latvian lithuanian finnish swedish norwegian danish icelandic japanese chinese
korean vietnamese thai indonesian malay filipino indian pakistani bangladeshi nepali arabic arab persian
iranian iraqi syrian lebanese israeli hebrew egyptian moroccan algerian tunisian nigerian kenyan ethiopian
somali african european asian latin hispanic catalan basque galician cantonese mandarin hindi urdu punjabi
bengali tamil swahili yoruba igbo hausa amharic farsi kurdish pashto
mr mrs ms miss mx dr prof sir madam dame lord lady rev revd fr sr sra herr frau hr pan pani
christian muslim jewish hindu buddhist sikh catholic protestant orthodox christmas easter ramadan eid
hanukkah diwali lent advent
north south east west northern southern eastern western i ok okay
""".split())

TITLES = frozenset("""
mr mrs ms miss mx dr prof professor sir madam dame lord lady rev revd fr sr sra srta herr frau hr
pan pani bay bayan sister nurse doctor captain capt judge mme mlle sig sig.ra dott
""".split())

# English closed-class words: capitalised at a sentence start they open no name ("The", "Please").
FUNCTION_WORDS = frozenset("""
the a an this that these those my your his her its our their in on at by for from with without to of into onto
and but or nor so if when while as after before during since until unless because although though whether
please dear hi hello thanks thank yes no not all any each every some many most other another such both either
what which who whom whose where why how there here then than also just only very again still even
i we you he she it they me us them is are was were be been being has have had do does did done
will would can could shall should may might must ok okay re per via cc
""".split())

# Particles inside names: "Joost van der Meer", "Siobhán Ní Bhriain", "Tarek El Amrani".
_PARTICLES = frozenset("""
van der den de del della dos das da di du la le von zu bin ibn al el ben ap ní nic ó ui mac mc y e
""".split())

# Word endings of international nonproprietary drug names (the stems of the WHO's INN programme,
# "The use of stems in the selection of INNs", public) and of clinical terms; a plural "s" may
# follow. Capitalised at a sentence start or in a heading they are words of a clinic, not names.
_INN_STEMS = (
    "mab", "nib", "ciclib", "parib", "platin", "mycin", "micin", "cillin", "conazole", "azole", "prazole",
    "pril", "sartan", "olol", "alol", "statin", "vir", "parin", "parinux", "xaban", "gatran", "grel", "grelor",
    "dronate", "formin", "gliptin", "gliflozin", "glitazone", "glinide", "caine", "cycline", "floxacin", "oxacin",
    "tidine", "setron", "triptan", "afil", "lukast", "terol", "semide", "thiazide", "olone", "sone", "asone",
    "onide", "zepam", "zolam", "azepam", "oxetine", "pramine", "triptyline", "peridol", "apine", "idone",
    "profen", "coxib", "fenac", "dipine", "tropium", "uracil", "citabine", "arabine", "taxel", "rubicin",
    "poside", "tecan", "trexate", "trexed", "mustine", "platin", "grastim", "poetin", "pitant", "lutamide",
    "rozole", "ifene", "relin", "relix", "stim", "kinra", "cept", "kinase", "teplase",
    "phylline", "bamate", "barbital", "curium", "curonium", "fentanil", "orphan", "orphine", "codone", "pramide",
    "peramide", "sulfan", "tinib", "zumab", "ximab", "umab", "vastatin", "mide", "oxide",
    "amycin", "bactam", "penem", "tamicin", "vudine", "ciclovir", "navir", "previr", "asvir", "buvir",
    "dralazine", "oxaban", "tiazem", "pamil", "sulosin", "azosin", "olamine", "pyrimidine", "purine", "idine",
)
_CLINICAL_ENDINGS = (
    "ectomy", "otomy", "ostomy", "oscopy", "ography", "itis", "osis", "aemia", "cemia", "kemia", "nemia", "lemia",
    "algia", "pathy",
    "plasty", "logist", "logy", "iatric", "iatry", "therapy", "emetic", "biotic", "genic", "lytic", "uria",
    "plasia", "trophy",
)
_DOMAIN_SUFFIX = regex.compile(
    # at least three letters before the ending: "Nuria" or "Vir" are names, proteinuria is not
    r"(?<=\p{L}{3})(?:" + "|".join(sorted(set(_INN_STEMS + _CLINICAL_ENDINGS), key=len, reverse=True)) + r")s?$",
    regex.IGNORECASE)

# Street-type words that make a rare word followed by a number an address even when the rare
# word alone would not (languages whose street word precedes or follows the name).
STREET_WORDS = frozenset("""
street st road rd avenue ave lane ln drive dr way place pl court ct crescent square sq terrace close grove
mews row gardens walk parade hill view rise boulevard blvd highway hwy pike parkway circle trail
rue avenue allée allee impasse chemin quai place boulevard via viale corso piazza largo vicolo lungarno
calle avenida avda paseo plaza camino ronda carretera ctra travesía travessa rua praça largo estrada alameda
straße strasse str gasse weg platz allee ring damm ufer
straat laan gracht plein kade singel dijk
gatan vägen gata gate vej gade allé stræde torget
katu tie kuja polku
utca út tér körút köz sor
ulica ul aleja al plac os osiedle
ulitsa prospekt pereulok naberezhnaya
cesta trg ulica
náměstí třída nábřeží
tee tänav maantee mnt puiestee pst väljak
sokak sokağı sk cadde caddesi cad cd bulvar bulvarı blv mahalle mah
odos leoforos leof
""".split())


# A run holding one of these words names an organisation, a place or a thing, not a person.
NOT_A_NAME = regex.compile(
    r"\b(?i:inc|corp|corporation|ltd|llc|llp|plc|gmbh|ag|sa|s\.a|nv|bv|ab|oy|spa|srl|kk|co|company|group|"
    r"holdings?|bank|clinic|hospital|infirmary|trust|council|university|college|school|institute|centre|center|"
    r"pharmacy|insurance|services?|department|ministry|agency|association|society|foundation|partners|"
    r"international|national|federal|bureau|office|team|ward|board|committee|church|club|hotel|restaurant|"
    r"court|police|union|fund|capital|systems?|solutions|technologies|labs?|media|news|airlines?|"
    r"orchestra|band|festival|award|prize|act|day|week|year|street|road|avenue|square|park|"
    # heads of names of units, roles and instruments: "Acute Medical Unit", "Reporting Officer"
    r"unit|officer|manager|director|registrar|ratio|reports?|scheme|programme|program|policy|pathway|score)\b")

_STREET_WORD_AFTER = regex.compile(
    r"[ \t]{1,3}(?:" + "|".join(sorted((regex.escape(w) for w in STREET_WORDS), key=len, reverse=True))
    + r")\.?(?=[ \t])", regex.IGNORECASE)


# what follows a word inside an e-mail address, a URL or an identifier ("nuria.lopez@", "ji_woo")
_ADDRESS_PART = regex.compile(r"[@_]|[.:/-]\w")


def _acronym(word: str) -> bool:
    """ALL CAPS and at most five letters: HM, PCI, OFAC, IFRS (a name in capitals is longer, or comes
    as "SURNAME, Given", which is judged apart)."""
    return word.isupper() and len(word) <= 5


@dataclass(frozen=True)
class VocabularyFinding:
    """A span the vocabulary detector flags. Offsets into the text; never the value."""

    entity_type: str
    start: int
    end: int
    score: float
    reason: str


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    text: str
    lower: str


class OrdinaryVocabulary:
    """English word frequencies (Zipf scale: 6 = once per thousand words, 3 = once per million)."""

    def __init__(self, extra_ordinary: Iterable[str] = ()) -> None:
        self._extra = frozenset(w.casefold() for w in extra_ordinary)

    @staticmethod
    @functools.cache
    def _frequencies() -> dict[str, float]:
        from rag.config import enforce_offline

        enforce_offline()
        import wordfreq

        # The 'large' list goes down to about one use in a billion words: rare surnames that also
        # appear in English text are still told apart from words English does not use at all.
        frequencies: dict[str, float] = wordfreq.get_frequency_dict("en", wordlist="large")
        return frequencies

    def zipf(self, word: str) -> float:
        lower = word.casefold().replace("’", "'")
        freq = self._frequencies().get(lower)
        if freq is None and "-" in lower:
            # "E-mail", "follow-up": as ordinary as its least frequent part ("Jae-hyun" stays rare)
            parts = [self._frequencies().get(part) for part in lower.split("-") if part]
            freq = min((f or 0.0 for f in parts), default=0.0) or None
        return math.log10(freq) + 9.0 if freq else 0.0

    @staticmethod
    @functools.cache
    def _other_languages() -> tuple[dict[str, float], ...]:
        from rag.config import enforce_offline

        enforce_offline()
        import wordfreq

        # wordfreq's 'small' lists (words used at least once per million, ~0.1 GB for all) of
        # the languages written in Latin script: the ones whose names stand in English text as
        # Latin words.
        return tuple(wordfreq.get_frequency_dict(lang, wordlist="small") for lang in _LATIN_SCRIPT_LANGUAGES)

    def english_word(self, word: str) -> bool:
        """A word English uses (Zipf >= ENGLISH) markedly more than any other Latin-script language
        does ("treasury", "liquidity", "breaches", "baseline"): an English common word, not a name.

        Names travel between languages: on the tuning half of pii-synthetic and the dev slice of
        tests/fixtures/pii-unseen no labelled name word in this frequency band had English ahead
        of every other language by the margin, while English nouns of a bank or a clinic do.
        Words at or above COMMON are left to the other rules ("Wood", "Hope" are names too).
        """
        lower = word.casefold().replace("’", "'")
        # a compound's frequency is its rarest part's ("Ji-woo"): no measure of the whole word
        return "-" not in lower and lower in self.english_words()

    def english_words(self) -> frozenset[str]:
        """Every word :meth:`english_word` accepts: read from the list shipped with the package when
        it was computed from this wordfreq release with these thresholds (``rag/data/english_words.txt``),
        else computed here (loading the 25 other languages' word lists takes ~0.5-1 s, most of the
        vocabulary's start-up; ``python -m rag.vocabulary`` rewrites the file)."""
        return _english_words()

    def compute_english_words(self) -> frozenset[str]:
        english = self._frequencies()
        return frozenset(w for w in english if "-" not in w and self._english_margin(w))

    def _english_margin(self, lower: str) -> bool:
        en = self.zipf(lower)
        if not ENGLISH <= en < COMMON:
            return False
        other = max((table.get(lower, 0.0) for table in self._other_languages()), default=0.0)
        return en >= (math.log10(other) + 9.0 if other else 0.0) + ENGLISH_MARGIN

    def allowed(self, lower: str) -> bool:
        """A capitalised form of this word is ordinary whatever its frequency."""
        return (lower in ORDINARY_CAPITALISED or lower in self._extra
                or _DOMAIN_SUFFIX.search(lower) is not None)

    def warm_up(self) -> None:
        self._frequencies()
        self.english_words()


ENGLISH_WORDS_FILE = Path(__file__).parent / "data" / "english_words.txt"


def english_words_header() -> str:
    """What the shipped list was computed from; a list with another header is not used."""
    from importlib.metadata import version

    return (f"# wordfreq {version('wordfreq')} en=large others=small ENGLISH={ENGLISH} COMMON={COMMON} "
            f"ENGLISH_MARGIN={ENGLISH_MARGIN} languages={','.join(_LATIN_SCRIPT_LANGUAGES)}")


@functools.cache
def _english_words() -> frozenset[str]:
    try:
        lines = ENGLISH_WORDS_FILE.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    if lines and lines[0] == english_words_header():
        return frozenset(lines[1:])
    return OrdinaryVocabulary().compute_english_words()


def write_english_words(path: Path = ENGLISH_WORDS_FILE) -> int:
    """Recompute the shipped list (after a wordfreq upgrade or a threshold change); returns its size."""
    words = sorted(OrdinaryVocabulary().compute_english_words())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([english_words_header(), *words]) + "\n", encoding="utf-8")
    return len(words)



# Zipf thresholds, measured on the tuning half of pii-synthetic and the dev slice of
# tests/fixtures/pii-unseen (bench/RESULTS.md). A word below RARE is one English hardly uses;
# below COMMON it is not among the ~30,000 most frequent.
RARE = 2.5
UNCOMMON = 3.3
COMMON = 4.3
# An English word by its use across languages: Zipf at least ENGLISH in English and ENGLISH_MARGIN
# above its use in every other Latin-script language (measured as for the thresholds above).
ENGLISH = 3.0
ENGLISH_MARGIN = 0.5
# (not Filipino: its web text is half English)
_LATIN_SCRIPT_LANGUAGES = ("ca", "cs", "da", "de", "es", "fi", "fr", "hu", "id", "is", "it", "lt", "lv",
                           "ms", "nb", "nl", "pl", "pt", "ro", "sh", "sk", "sl", "sv", "tr", "vi")


class VocabularyDetector:
    """Names, places and streets found by what is *not* an ordinary English word."""

    def __init__(self, vocabulary: OrdinaryVocabulary | None = None, *, strict: bool = False,
                 foreign_script: bool = True) -> None:
        self.vocabulary = vocabulary or OrdinaryVocabulary()
        self.strict = strict
        self.foreign_script = foreign_script

    def warm_up(self) -> None:
        self.vocabulary.warm_up()

    # -- tokens and positions -----------------------------------------------------------------

    @staticmethod
    def _tokens(text: str) -> list[_Token]:
        # words glued to a URL, a path or an e-mail address ("www.WeatherChronicle.ca") are not prose
        return [_Token(m.start(), m.end(), m.group(), m.group().casefold()) for m in _TOKEN.finditer(text)
                if _LATIN.match(m.group()) and (m.start() == 0 or text[m.start() - 1] not in "./@_\\:=")]

    @staticmethod
    def _sentence_initial(text: str, start: int) -> bool:
        """Nothing but space, a list marker or sentence punctuation between the previous sentence and here."""
        i = start - 1
        while i >= 0 and text[i] in " \t":
            i -= 1
        if i < 0 or text[i] == "\n" or text[i] in _SENTENCE_END:
            return True
        # a list item or a "Name - role" cell: a dash standing alone after space or a line start
        return text[i] in "-–—" and (i == 0 or text[i - 1] in " \t\n")

    def _name_shaped(self, t: _Token) -> bool:
        w = t.text
        if not w[0].isupper() or t.lower in FUNCTION_WORDS:
            return False
        if w.isupper():
            # ALL CAPS: a name in a header or an inverted "SURNAME, Given"; short ones are acronyms.
            return len(w) >= 3 and self.vocabulary.zipf(w) < UNCOMMON
        return True

    def _rare(self, t: _Token, below: float) -> bool:
        if self.vocabulary.allowed(t.lower) or t.lower in TITLES:
            return False
        if self.vocabulary.zipf(t.text) >= below:
            return False
        # the default policy leaves English common words; strict fails closed on them
        return self.strict or not self.vocabulary.english_word(t.lower)

    # -- runs of capitalised words --------------------------------------------------------------

    def _runs(self, text: str, tokens: list[_Token]) -> Iterator[list[_Token]]:
        """Maximal runs of name-shaped words joined by spaces, particles, initials or an inverted comma."""
        i = 0
        while i < len(tokens):
            if not self._name_shaped(tokens[i]) or tokens[i].lower in TITLES:
                i += 1
                continue
            run = [tokens[i]]
            j = i + 1
            while j < len(tokens):
                gap = text[run[-1].end:tokens[j].start]
                nxt = tokens[j]
                initial = len(run[-1].text) == 1  # "Salla M. Mieto": only an initial may end in a full stop
                if regex.fullmatch(r"[ \t]{1,3}" if not initial else r"\.?[ \t]{1,3}", gap) is None:
                    # "MAVRIDIS, Panagiotis": an all-caps surname, a comma, a given name
                    if gap.strip() == "," and run[-1].text.isupper() and len(run) == 1 and nxt.text[:1].isupper() \
                            and not nxt.text.isupper():
                        run.append(nxt)
                        j += 1
                        continue
                    break
                if self._name_shaped(nxt) and nxt.lower not in TITLES:
                    run.append(nxt)
                elif nxt.lower in _PARTICLES:
                    # "van der Meer": particles count only when a name-shaped word follows them
                    k = j
                    while k < len(tokens) and tokens[k].lower in _PARTICLES and k - j < 3 \
                            and regex.fullmatch(r"[ \t]{1,3}", text[tokens[k].end:tokens[k + 1].start]
                                                if k + 1 < len(tokens) else "x"):
                        k += 1
                    if k == j or k >= len(tokens) or not self._name_shaped(tokens[k]):
                        break
                    run.extend(tokens[j:k + 1])
                    j = k
                else:
                    break
                j += 1
            yield run
            i = j

    @staticmethod
    def _headline(text: str, start: int) -> bool:
        """The line holding ``start`` is written in headline style ("Topological Sorting of Large
        Networks"): every content word capitalised, a lower-case closed-class word between
        them. There capital letters say nothing about proper nouns."""
        line_start = text.rfind("\n", 0, start) + 1
        line_end = text.find("\n", start)
        line = text[line_start:line_end if line_end >= 0 else len(text)]
        words = [m.group() for m in _TOKEN.finditer(line)]
        content = [w for w in words if len(w) >= 4 and w.casefold() not in FUNCTION_WORDS]
        return (len(content) >= 3 and all(w[0].isupper() for w in content)
                and any(w.islower() and w in FUNCTION_WORDS for w in words))

    def _after_title(self, text: str, start: int) -> bool:
        before = text[max(0, start - 12):start]
        m = regex.search(r"(\p{L}+)\.?[ \t]+$", before)
        return m is not None and m.group(1).casefold() in TITLES

    def detect(self, text: str) -> list[VocabularyFinding]:
        """Findings for one text, in text order (overlaps allowed; the redactor merges them)."""
        out: list[VocabularyFinding] = []
        if self.foreign_script:
            out.extend(self._foreign(text))
        tokens = self._tokens(text)
        lower_names = list(self._lower_case_names(text, tokens))
        out.extend(lower_names)
        seen = frozenset() if self.strict else self._lower_case_words(text, tokens, lower_names)
        for run in self._runs(text, tokens):
            finding = self._judge(text, run, seen)
            if finding is not None:
                out.append(finding)
        return sorted(out, key=lambda f: (f.start, f.end))

    @staticmethod
    def _lower_case_words(text: str, tokens: list[_Token], lower_names: list[VocabularyFinding]) -> frozenset[str]:
        """Words this text writes in lower case in prose (outside lower-case names, e-mail
        addresses and URLs): the same word capitalised at a sentence start, in a heading or a
        title ("Troponin is measured ... a troponin below ...") is that word, not a name."""
        return frozenset(t.text for t in tokens if t.text.islower() and len(t.text) > 2
                         and not _ADDRESS_PART.match(text, t.end)
                         and not any(f.start <= t.start < f.end for f in lower_names))

    def lower_case_words(self, text: str) -> frozenset[str]:
        """:meth:`_lower_case_words` of ``text``, for the redactor's check of NER names."""
        tokens = self._tokens(text)
        return self._lower_case_words(text, tokens, list(self._lower_case_names(text, tokens)))

    def ordinary_span(self, text: str, start: int, end: int, lower_words: frozenset[str]) -> bool:
        """A span NER called a person that holds no name: a digit ("Grade 2", "ALGOL 60"; names
        have none), or only words that are ordinary here: allowed (allow-list, calendar, INN
        stems), written in lower case elsewhere in the text, English common words
        (:meth:`OrdinaryVocabulary.english_word`) or closed-class words."""
        value = text[start:end]
        if any(c.isdigit() for c in value):
            return True
        words = [m.group() for m in _TOKEN.finditer(value) if m.group().casefold() not in _PARTICLES]
        shouted = all(w.isupper() for w in words)  # "IVY YOUNG": a name in capitals, not acronyms
        return bool(words) and all(
            (_acronym(w) and not shouted) or self.vocabulary.allowed(w.casefold()) or w.casefold() in lower_words
            or w.casefold() in FUNCTION_WORDS or self.vocabulary.english_word(w) for w in words)

    def _judge(self, text: str, run: list[_Token], seen: frozenset[str] = frozenset()) -> VocabularyFinding | None:
        words = [t for t in run if t.lower not in _PARTICLES or t is run[0]]
        start, end = run[0].start, run[-1].end
        initial = self._sentence_initial(text, start)
        street_word = _STREET_WORD_AFTER.match(text, end)
        house = _HOUSE_NUMBER.match(text, street_word.end() if street_word else end)
        if not self.strict:
            # an acronym in a run ("Primary PCI", "HM Treasury") is no evidence of a name
            evidence = [t for t in words if not _acronym(t.text)]
            if not evidence and len(words) == 1:
                return None
            if evidence:  # all in capitals ("IVY YOUNG") is a name in capitals, not acronyms
                words = evidence
        rare = [t for t in words if self._rare(t, RARE)]
        uncommon = [t for t in words if self._rare(t, UNCOMMON)]
        foreignish = [t for t in words if _NON_ASCII_LATIN.search(t.text) and self._rare(t, COMMON)]
        not_common = [t for t in words if self._rare(t, COMMON)]
        streety = street_word is not None or any(t.lower.rstrip(".") in STREET_WORDS for t in words)
        if house is not None and (uncommon or foreignish or streety) and len(words) <= 4:
            return VocabularyFinding("STREET_ADDRESS", start, house.end(), 0.5, "rare-word-house-number")
        keyword = [i for i, t in enumerate(run) if NOT_A_NAME.fullmatch(t.text)]
        if keyword:
            # "Northgate Bank" names a firm; in "Street Kerstin Nyström" (a table header, then a
            # cell) the words after the keyword are judged on their own
            rest = run[keyword[-1] + 1:]
            return self._judge(text, rest, seen) if rest else None
        if all(self.vocabulary.allowed(t.lower) for t in words):
            return None
        if len(words) == 1 and words[0].text.isupper() and (len(words[0].text) <= 5 or not self.strict):
            # a lone acronym or product (IBAN, NHS, FORTRAN); all-caps names come in runs or as "SURNAME, Given"
            return None
        if self._after_title(text, start):
            return VocabularyFinding("PERSON", start, end, 0.6, "after-title")
        if all(self.vocabulary.allowed(t.lower) or t.lower in seen for t in words):
            return None  # every word is written in lower case elsewhere in this text: a word, not a name
        if self.strict:
            # fail closed: any word English hardly uses, anywhere; any capitalised word mid-sentence
            if uncommon or foreignish or not initial or len(words) >= 2:
                return VocabularyFinding("PERSON", start, end, 0.5, "strict")
            return None
        if self._headline(text, start):
            # in a headline only a word English does not use says "name"
            if rare or (foreignish and len(words) == 1):
                return VocabularyFinding("PERSON", start, end, 0.45, "headline")
            return None
        if not initial:
            # mid-sentence: a proper noun; a name unless every word is a common English word
            if not_common or foreignish:
                return VocabularyFinding("PERSON", start, end, 0.5, "mid-sentence")
            return None
        if len(words) >= 2:
            if uncommon or foreignish:
                return VocabularyFinding("PERSON", start, end, 0.5, "initial-run")
            return None
        nxt = text[end:end + 2]
        if rare or foreignish:
            # a lone word opening a sentence: a name when English does not use it
            return VocabularyFinding("PERSON", start, end, 0.45, "initial-word")
        if nxt[:1] == "," and uncommon and not words[0].lower.endswith("ly"):
            # "Lucinda, can I ...": a sentence opening on a word and a comma addresses someone
            return VocabularyFinding("PERSON", start, end, 0.45, "vocative")
        return None

    def _lower_case_names(self, text: str, tokens: list[_Token]) -> Iterator[VocabularyFinding]:
        """Two lower-case words in a row that English does not use: a name typed in lower case."""
        for a, b in zip(tokens, tokens[1:], strict=False):
            if not (a.text.islower() and b.text.islower()) or text[a.end:b.start] != " ":
                continue
            if a.lower in FUNCTION_WORDS or b.lower in FUNCTION_WORDS:
                continue
            below = UNCOMMON if self.strict else RARE
            if all(self._rare(t, below) or (_NON_ASCII_LATIN.search(t.text) and self._rare(t, COMMON))
                   for t in (a, b)):
                yield VocabularyFinding("PERSON", a.start, b.end, 0.45, "lower-case-name")

    # -- other scripts ---------------------------------------------------------------------------

    def _foreign(self, text: str) -> Iterator[VocabularyFinding]:
        if not _FOREIGN_LETTER.search(text):
            return
        latin = len(_LATIN.findall(text))
        foreign = len(_FOREIGN_LETTER.findall(text))
        if latin < foreign:
            return  # text in another language, not a name inside English; out of this detector's reach
        for m in _FOREIGN_RUN.finditer(text):
            value = m.group().rstrip(" \t\n,.-/")
            if not value:
                continue
            etype = "STREET_ADDRESS" if _ADDRESS_MARKS.search(value) else "PERSON"
            yield VocabularyFinding(etype, m.start(), m.start() + len(value), 0.5, "other-script")


if __name__ == "__main__":
    import sys

    sys.stdout.write(f"{write_english_words()} words written to {ENGLISH_WORDS_FILE}\n")
