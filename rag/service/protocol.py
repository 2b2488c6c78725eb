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


class ChatCitation(Citation):
    """A cited passage as a chat reader sees it (the page opens it from its numbered marker)."""

    number: int  # the [n] marker in the answer text
    section: str
    excerpt: str  # redacted
    access: str  # the rule that let this reader see it


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


class ErrorResponse(BaseModel):
    error: ErrorBody
