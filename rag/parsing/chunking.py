"""Chunking: unstructured's section-aware chunks, cut again to the embedder's word-piece budget."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rag.parsing.limits import ParseLimits

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from unstructured.documents.elements import Element


@dataclass(frozen=True)
class ParsedChunk:
    """One chunk of a document. ``text`` is document text: it leaves a worker only redacted."""

    text: str
    ordinal: int
    page: int | None


def chunk_elements(elements: list[Element], limits: ParseLimits) -> list[ParsedChunk]:
    from unstructured.chunking.title import chunk_by_title

    elements = [e for e in elements if e.text and e.text.strip()]
    if not elements:
        return []
    max_chars = limits.chunk_max_chars
    composite = chunk_by_title(
        elements,
        max_characters=max_chars,
        new_after_n_chars=int(max_chars * 0.8),
        combine_text_under_n_chars=int(max_chars * 0.5),
        include_orig_elements=False,
    )
    tokenizer = _word_piece_tokenizer(limits.tokenizer_dir)
    chunks: list[ParsedChunk] = []
    for element in composite:
        text = element.text.strip()
        if not text:
            continue
        pieces = _fit_tokens(text, tokenizer, limits.chunk_max_tokens) if tokenizer is not None else [text]
        for piece in pieces:
            chunks.append(ParsedChunk(text=piece, ordinal=len(chunks), page=element.metadata.page_number))
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
