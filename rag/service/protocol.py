"""Wire models of the HTTP API (pydantic): what clients send and receive. No logic here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class SearchRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    k: int = Field(default=10, ge=1, le=100)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    purpose: str | None = Field(default=None, max_length=200)


class SearchHit(BaseModel):
    chunk_id: int
    document_id: int
    document_version: int
    source_uri: str
    score: float
    text: str


class SearchResponse(BaseModel):
    request_id: str
    audit_id: int
    question_redacted: str
    hits: list[SearchHit]


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    k: int = Field(default=5, ge=1, le=20)
    purpose: str | None = Field(default=None, max_length=200)


class Citation(BaseModel):
    passage_id: str
    document_id: int
    source_uri: str
    chunk_id: int


class AskResponse(BaseModel):
    request_id: str
    audit_id: int
    outcome: Literal["ok", "no_results", "invalid_answer", "error", "timeout"]
    answer: str
    citations: list[Citation]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat request that Enclave honours; other fields are accepted and ignored."""

    model: str = "enclave"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    user: str | None = None
    model_config = {"extra": "allow"}


class ErrorBody(BaseModel):
    type: str
    message: str
    request_id: str


class RevealRequest(BaseModel):
    """Re-identify one pseudonym (rag.lifecycle.vault): only for a group in ENCLAVE_REVEAL_GROUPS, with a purpose."""

    token: str = Field(min_length=3, max_length=120, pattern=r"^<?[A-Z][A-Z0-9_]*_[0-9A-F]{8}>?$")
    purpose: str = Field(min_length=1, max_length=200)


class RevealResponse(BaseModel):
    token: str
    value: str | None  # None when the vault holds no such token (erased, or never issued)
    audit_id: int


class ErrorResponse(BaseModel):
    error: ErrorBody
