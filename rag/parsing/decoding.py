"""Decoding of text-like files: BOMs, BOM-less UTF-16, strict UTF-8, then charset detection."""

from __future__ import annotations

import codecs

from rag.errors import QuarantinedError, QuarantineReason

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


def mail_bytes(data: bytes) -> bytes:
    """E-mail is bytes with per-part charsets; only a whole-file UTF-16/32 encoding is undone."""
    wide = any(data.startswith(bom) for bom, enc in _BOMS if enc != "utf-8") or _bomless_utf16(data) is not None
    return decode_text(data).encode("utf-8") if wide else data
