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

from pathlib import Path

from rag.errors import QuarantinedError, QuarantineReason
from rag.parsing.chunking import ParsedChunk, chunk_elements
from rag.parsing.decoding import decode_text
from rag.parsing.guards import check_container, sniff_kind
from rag.parsing.limits import CHARS_PER_TOKEN, ParseLimits, default_limits
from rag.parsing.partitioners import PARTITIONERS, file_kind, use_installed_spacy_model

__all__ = [
    "CHARS_PER_TOKEN",
    "ParseLimits",
    "ParsedChunk",
    "decode_text",
    "default_limits",
    "file_kind",
    "parse_bytes",
    "parse_file",
    "warm_up",
]


def warm_up() -> None:
    """Import the partitioners and load unstructured's spaCy model now, not inside a timed parse."""
    import importlib

    for module in ("docx", "pptx", "xlsx", "html", "text", "md", "csv", "tsv", "xml", "email", "msg"):
        importlib.import_module(f"unstructured.partition.{module}")
    importlib.import_module("unstructured.chunking.title")
    importlib.import_module("pdfminer.high_level")
    use_installed_spacy_model()
    from unstructured.nlp import tokenize

    tokenize._get_nlp()


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
    use_installed_spacy_model()
    if kind is None:
        raise QuarantinedError(QuarantineReason.UNSUPPORTED, f"no parser for extension {Path(filename).suffix!r}")

    kind = sniff_kind(data, kind)
    check_container(data, kind, limits)
    try:
        elements = PARTITIONERS[kind](data)
    except QuarantinedError:
        raise
    except MemoryError:
        raise QuarantinedError(QuarantineReason.MEMORY, f"{kind} parser ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted input is a corrupt file
        raise QuarantinedError(QuarantineReason.CORRUPT, f"{kind} parser raised {type(exc).__name__}") from None
    chunks = chunk_elements(elements, limits)
    if not chunks:
        raise QuarantinedError(QuarantineReason.NO_TEXT, f"{kind} file has no extractable text")
    return chunks
