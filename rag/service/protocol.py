"""Wire models of the HTTP API (pydantic): what clients send and receive, and the limits on it.

The limits are part of the schema (and so of /openapi.json): a question is what the redactor
and the embedder read, so it is capped for every route alike; a chat request is capped in
messages and characters. Text must be valid Unicode: a lone surrogate (``"\\ud800"`` in JSON)
passes string validation but breaks every encoder downstream, so it is refused here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Discriminator, Field, Tag, model_validator

MAX_QUESTION_CHARS = 4000
MAX_PURPOSE_CHARS = 200
MAX_CHAT_MESSAGES = 64
MAX_MESSAGE_CHARS = 32_000  # one message of the conversation; only the last user message is the question
MAX_CONTENT_PARTS = 32


def _unicode_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]
MessageText = Annotated[str, Field(max_length=MAX_MESSAGE_CHARS), AfterValidator(_unicode_text)]


class SearchRequest(BaseModel):
    question: Text = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    k: int = Field(default=10, ge=1, le=100)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    purpose: Text | None = Field(default=None, max_length=MAX_PURPOSE_CHARS)


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
    question: Text = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    k: int = Field(default=5, ge=1, le=20)
    purpose: Text | None = Field(default=None, max_length=MAX_PURPOSE_CHARS)


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


class ContentPart(BaseModel):
    """One part of a message's content list; only ``text`` parts are read, others are ignored."""

    type: str = Field(max_length=64)
    text: MessageText | None = None
    model_config = {"extra": "allow"}


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    # tagged, so that a 422 names the branch (content.text, content.parts.0.text), not pydantic's union internals
    content: Annotated[
        Annotated[MessageText, Tag("text")]
        | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS), Tag("parts")],
        Discriminator(lambda v: "text" if isinstance(v, str) else "parts"),
    ] | None = None

    @model_validator(mode="after")
    def _bounded(self) -> ChatMessage:
        if isinstance(self.content, list):
            if sum(len(p.text or "") for p in self.content) > MAX_MESSAGE_CHARS:
                raise ValueError(f"a message holds at most {MAX_MESSAGE_CHARS} characters of text")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return " ".join(p.text for p in self.content if p.type == "text" and p.text)
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat request that Enclave honours; other fields are accepted and ignored.

    The question is the text of the last user message: it must exist, and it is capped like a
    search question (a content list without a text part has none, and is refused).
    """

    model: str = Field(default="enclave", max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)
    stream: bool = False
    user: str | None = Field(default=None, max_length=256)
    model_config = {"extra": "allow"}

    @model_validator(mode="after")
    def _has_a_question(self) -> ChatCompletionRequest:
        question = self.question()
        if not question.strip():
            raise ValueError("the last user message must hold text (a string, or a content part of type text)")
        if len(question) > MAX_QUESTION_CHARS:
            raise ValueError(f"the last user message is longer than {MAX_QUESTION_CHARS} characters")
        return self

    def question(self) -> str:
        for msg in reversed(self.messages):
            if msg.role == "user":
                return msg.text()
        return ""


class FieldProblem(BaseModel):
    """Which field broke which rule: never the value that broke it."""

    field: str
    rule: str
    message: str


class ErrorBody(BaseModel):
    type: str
    message: str
    request_id: str
    fields: list[FieldProblem] | None = None


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
