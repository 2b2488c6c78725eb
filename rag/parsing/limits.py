"""Per-file parsing limits: size caps checked before anything is decompressed or parsed, and the chunk budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rag.config import Settings

# all-MiniLM-L6-v2 reads 256 word-pieces; English prose averages a little over 4 characters
# per word-piece, so 4 keeps most chunks inside the window (figure measured in the report).
CHARS_PER_TOKEN = 4

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
