"""Generator for a model server that speaks the OpenAI chat API on the site's own network.

Covers ``vllm serve``, ``python -m llama_cpp.server`` and other OpenAI-compatible servers,
through the ``openai`` client. The reply schema is enforced by the server's constrained
decoding, and servers spell that request differently:

- ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` -- the OpenAI form,
  which vLLM compiles to a grammar (xgrammar / guidance). Tried first.
- ``{"type": "json_object", "schema": ...}`` -- the form llama_cpp.server accepts (it refuses
  ``json_schema`` with an error naming ``response_format``); it compiles the schema to a GBNF
  grammar. Used when the server refused the first form, and remembered for that generator.

Replies are always requested with ``stream: true`` and handed on piece by piece
(:meth:`OpenAICompatibleGenerator.stream`); ``generate`` collects the same stream. The total
time of a reply is bounded by ``timeout_s`` as well as each read.

Connection failures are retried a bounded number of times (tenacity); a timeout is not
retried, because the server may still be working on the request. Errors never carry the
server's response body: a 4xx body can echo the request, and the request holds document text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import httpx
import openai
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from rag.llm.base import (
    ChatMessage,
    Generation,
    GenerationFailure,
    GeneratorFailedError,
    JsonSchema,
    SamplingParams,
    StreamEvent,
    TextDelta,
    bounded,
    collect,
)

if TYPE_CHECKING:
    from rag.config import Settings

BACKEND = "openai"
SchemaForm = Literal["json_schema", "json_object"]


def _is_connection_failure(exc: BaseException) -> bool:
    # APITimeoutError subclasses APIConnectionError; a timed-out request is not retried.
    return isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)


def response_format_for(schema: JsonSchema, form: SchemaForm) -> dict[str, Any]:
    """The ``response_format`` body field asking the server to enforce ``schema``."""
    if form == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": dict(schema), "strict": True}}
    return {"type": "json_object", "schema": dict(schema)}


def _refused_response_format(exc: openai.APIStatusError) -> bool:
    """Whether an error reply says the server does not understand our ``response_format``.

    llama_cpp.server answers the ``json_schema`` form with HTTP 500 carrying a pydantic
    validation error on ``body.response_format.type``; others use 400 or 422.
    """
    if exc.status_code not in (400, 422, 500):
        return False
    try:
        body = json.dumps(exc.body)
    except (TypeError, ValueError):
        body = ""
    return "response_format" in body or "response_format" in exc.message


class OpenAICompatibleGenerator:
    """A chat model behind an OpenAI-compatible HTTP API (vLLM, llama.cpp server, ...)."""

    backend = BACKEND

    def __init__(
        self,
        base_url: str,
        model: str = "",
        api_key: str = "",
        timeout_s: float = 120.0,
        connect_attempts: int = 3,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.timeout_s = timeout_s
        self.connect_attempts = max(1, connect_attempts)
        # Local servers usually take no key, but the client insists on a non-empty one.
        self._api_key = api_key or "not-needed"
        self._client: openai.OpenAI | None = None
        self._schema_form: SchemaForm | None = None
        self._lock = threading.Lock()

    @property
    def schema_form(self) -> SchemaForm | None:
        """The ``response_format`` form this server accepted, once one has been."""
        return self._schema_form

    def warm_up(self) -> None:
        """Create the client and, when no model was named, ask the server which one it serves."""
        self._resolved_model()

    def _client_now(self) -> openai.OpenAI:
        with self._lock:
            if self._client is None:
                # max_retries=0: tenacity below is the one retry policy, and it skips timeouts.
                # trust_env=False and no redirects: prompts carry document text, so they go to
                # base_url and nowhere else -- not through an HTTP(S)_PROXY from the environment.
                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key,
                    timeout=self.timeout_s,
                    max_retries=0,
                    http_client=openai.DefaultHttpxClient(trust_env=False, follow_redirects=False),
                )
            return self._client

    def _call(self, operation: str, request: Any) -> Any:
        """Run ``request()``, retrying connection failures and mapping errors to our type."""
        retrying = Retrying(
            stop=stop_after_attempt(self.connect_attempts),
            wait=wait_exponential(multiplier=0.25, max=2.0),
            retry=retry_if_exception(_is_connection_failure),
            reraise=True,
        )
        try:
            return retrying(request)
        except openai.APITimeoutError as exc:
            raise GeneratorFailedError(
                GenerationFailure.TIMEOUT, BACKEND, f"{operation} at {self.base_url} took longer than {self.timeout_s}s"
            ) from exc
        except openai.APIConnectionError as exc:
            raise GeneratorFailedError(
                GenerationFailure.UNAVAILABLE,
                BACKEND,
                f"could not reach {self.base_url} after {self.connect_attempts} attempts ({operation})",
            ) from exc

    def _resolved_model(self) -> str:
        if self.model:
            return self.model
        client = self._client_now()
        try:
            models = self._call("listing models", lambda: client.models.list())
        except openai.APIStatusError as exc:
            raise GeneratorFailedError(
                GenerationFailure.FAILED, BACKEND, f"listing models returned HTTP {exc.status_code}"
            ) from exc
        if not models.data:
            raise GeneratorFailedError(GenerationFailure.UNAVAILABLE, BACKEND, f"{self.base_url} serves no model")
        self.model = models.data[0].id
        return self.model

    def generate(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Generation:
        return collect(self.stream(messages, schema, params), BACKEND)

    def stream(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Iterator[StreamEvent]:
        """The server's SSE chunks as they arrive, bounded in total by ``timeout_s``."""
        return bounded(self._stream(messages, schema, params), self.timeout_s, BACKEND)

    def _open(self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams) -> Any:
        """Start a streamed completion, trying the ``response_format`` forms this server may accept."""
        model = self._resolved_model()
        client = self._client_now()
        forms: list[SchemaForm | None]
        if schema is None:
            forms = [None]
        elif self._schema_form is not None:
            forms = [self._schema_form]
        else:
            forms = ["json_schema", "json_object"]

        for position, form in enumerate(forms):
            body: dict[str, Any] = {
                "model": model,
                "messages": [dict(message) for message in messages],
                "temperature": params.temperature,
                "top_p": params.top_p,
                "max_tokens": params.max_tokens,
                "stream": True,
            }
            if params.seed is not None:
                body["seed"] = params.seed
            if schema is not None and form is not None:
                body["response_format"] = response_format_for(schema, form)
            try:
                chunks = self._call("chat completion", lambda body=body: client.chat.completions.create(**body))
            except openai.APIStatusError as exc:
                if position + 1 < len(forms) and _refused_response_format(exc):
                    continue
                raise GeneratorFailedError(
                    GenerationFailure.REJECTED if 400 <= exc.status_code < 500 else GenerationFailure.FAILED,
                    BACKEND,
                    f"chat completion returned HTTP {exc.status_code}",
                ) from exc
            except openai.OpenAIError as exc:  # malformed reply and the like
                raise GeneratorFailedError(GenerationFailure.FAILED, BACKEND, type(exc).__name__) from exc
            if schema is not None:
                self._schema_form = form
            return chunks
        raise AssertionError("unreachable: the last form either returns or raises")

    def _stream(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Iterator[StreamEvent]:
        chunks = self._open(messages, schema, params)
        model = self.model
        pieces: list[str] = []
        finish_reason: str | None = None
        prompt_tokens = completion_tokens = 0
        try:
            for chunk in chunks:
                model = chunk.model or model
                if chunk.usage is not None:  # servers that report usage send it in a last chunk
                    prompt_tokens = int(chunk.usage.prompt_tokens or 0)
                    completion_tokens = int(chunk.usage.completion_tokens or 0)
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                finish_reason = choice.finish_reason or finish_reason
                piece = choice.delta.content if choice.delta is not None else None
                if piece:
                    pieces.append(piece)
                    yield TextDelta(piece)
        except (httpx.TimeoutException, openai.APITimeoutError) as exc:  # the client wraps httpx's mid-stream
            raise GeneratorFailedError(
                GenerationFailure.TIMEOUT, BACKEND, f"the stream from {self.base_url} stalled past {self.timeout_s}s"
            ) from exc
        except (httpx.HTTPError, openai.OpenAIError) as exc:  # connection cut, error event mid-stream
            raise GeneratorFailedError(
                GenerationFailure.FAILED, BACKEND, f"the stream broke off ({type(exc).__name__})"
            ) from exc
        finally:
            chunks.close()
        yield Generation(
            text="".join(pieces),
            model=model,
            model_hash=None,  # the server does not report which weights it holds
            backend=BACKEND,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens or len(pieces),
            finish_reason=finish_reason,
        )


def generator_from_settings(settings: Settings) -> OpenAICompatibleGenerator:
    return OpenAICompatibleGenerator(
        base_url=settings.llm_base_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key.get_secret_value(),
        timeout_s=settings.llm_timeout_s,
    )
