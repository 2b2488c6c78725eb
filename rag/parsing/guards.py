"""Guards that run before any parser sees a file's bytes: container kind, decompression bombs, encryption.

Zip containers are judged from their central directory only (nothing is inflated); OLE files,
PDFs and e-mails are checked for encryption. Each refusal is a :class:`~rag.errors.QuarantinedError`
with a typed reason and a detail naming formats and exception classes, never document text.
"""

from __future__ import annotations

import email
import email.policy
import io
import zipfile

from rag.errors import QuarantinedError, QuarantineReason
from rag.parsing.decoding import mail_bytes
from rag.parsing.limits import ParseLimits

# A zip member expanding more than this many times is not an office document (deflated XML
# rarely passes 20-30x; a run of zeros reaches ~1000x).
MAX_COMPRESSION_RATIO = 200
# ...but tiny members can legitimately have high ratios; only judge members at least this big.
RATIO_MIN_MEMBER_BYTES = 1 << 20

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_KINDS = frozenset({"docx", "pptx", "xlsx", "odt", "epub"})
_ENCRYPTED_MAIL_TYPES = frozenset(
    {"multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime", "application/pgp-encrypted"}
)



def sniff_kind(data: bytes, kind: str) -> str:
    """A .doc that is really a zip is a renamed .docx (Word opens it; so do we)."""
    if kind == "doc" and data.startswith(b"PK\x03\x04"):
        return "docx"
    return kind


def check_container(data: bytes, kind: str, limits: ParseLimits) -> None:
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
    message = email.message_from_bytes(mail_bytes(data), policy=email.policy.compat32)
    if message.get_content_type() in _ENCRYPTED_MAIL_TYPES:
        raise QuarantinedError(QuarantineReason.ENCRYPTED, f"e-mail body is {message.get_content_type()}")
