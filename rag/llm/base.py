"""The generator contract: how the Answerer asks a language model for a schema-bound reply.

A generator is anything with a ``backend`` name and ``generate(messages, schema, params)``.
A *streaming* generator also has ``stream(messages, schema, params)``, an iterator of
:class:`TextDelta` pieces as the model produces them, ending with the :class:`Generation`;
every built-in backend streams, and :func:`stream_from` gives any generator that shape.
:func:`bounded` puts a wall-clock limit on a stream (``ENCLAVE_LLM_TIMEOUT_S``).
It receives chat messages, a JSON schema the reply must follow (enforced by the backend's
constrained decoding), and sampling parameters, and returns a :class:`Generation`. Failures
of the model (unreachable, timed out, rejected the request) are raised as
:class:`GeneratorFailedError` with a typed :class:`GenerationFailure`, so the Answerer can
record an outcome instead of letting an exception escape.

Built-ins register by name (``llamacpp``, ``openai``, ``vllm``); third-party generators
register a factory ``(Settings) -> Generator`` under the ``enclave.generators`` entry-point
group and load only when listed in ``ENCLAVE_PLUGINS`` (:mod:`rag.plugins`). Backend modules
are imported only when chosen, so optional heavy dependencies stay optional.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rag.errors import ConfigurationError, GenerationError
from rag.plugins import GENERATORS, distribution_of, load_plugin

if TYPE_CHECKING:
    from rag.config import Settings

ChatMessage = Mapping[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": ...}``."""

JsonSchema = Mapping[str, Any]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Defaults are deterministic (greedy, fixed seed) so answers are reproducible."""

    temperature: float = 0.0
    max_tokens: int = 384
    top_p: float = 1.0
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must not be negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    @classmethod
    def from_settings(cls, settings: Settings) -> SamplingParams:
        return cls(temperature=settings.llm_temperature, max_tokens=settings.llm_max_tokens)


@dataclass(frozen=True)
class Generation:
    """What a model returned, with the facts an auditor needs to reproduce it."""

    text: str
    model: str  # server-reported model id, or the model file name in process
    model_hash: str | None  # sha256 of the weights file when the backend can know it
    backend: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None  # "stop", "length", ... as the backend reports it


class GenerationFailure(StrEnum):
    """Why a generator produced no text."""

    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"  # model server unreachable, model file missing
    REJECTED = "rejected"  # the backend refused the request (bad schema, prompt too long)
    FAILED = "failed"  # the backend failed while generating


class GeneratorFailedError(GenerationError):
    """A generator produced no text. The message names backend and cause, never the prompt."""

    def __init__(self, failure: GenerationFailure, backend: str, detail: str) -> None:
        super().__init__(f"{backend} generator {failure.value}: {detail}")
        self.failure = failure
        self.backend = backend
        self.detail = detail


@runtime_checkable
class Generator(Protocol):
    """A language model behind Enclave's one generation call."""

    backend: str

    def generate(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Generation:
        """Generate a reply to ``messages``; when ``schema`` is given the reply is JSON that
        the backend constrained to it. Raises :class:`GeneratorFailedError` on model failure."""
        ...


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply's raw text, in the order the model produced it."""

    text: str


StreamEvent = TextDelta | Generation
"""What a stream yields: text pieces, then exactly one :class:`Generation` (the whole reply)."""


@runtime_checkable
class StreamingGenerator(Generator, Protocol):
    """A generator that can hand out its reply while it is being generated."""

    def stream(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Iterator[StreamEvent]:
        """Yield :class:`TextDelta` pieces as they are generated, then the :class:`Generation`.

        Raises :class:`GeneratorFailedError` on model failure, also after some pieces went out.
        Closing the iterator early stops the generation."""
        ...


def stream_from(
    generator: Generator, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
) -> Iterator[StreamEvent]:
    """Stream from any generator: its own ``stream``, or ``generate``'s whole text as one piece."""
    if isinstance(generator, StreamingGenerator):
        return generator.stream(messages, schema, params)
    return _one_piece(generator, messages, schema, params)


def _one_piece(
    generator: Generator, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
) -> Iterator[StreamEvent]:
    generation = generator.generate(messages, schema, params)
    yield TextDelta(generation.text)
    yield generation


def collect(events: Iterable[StreamEvent], backend: str) -> Generation:
    """The :class:`Generation` that ends a stream (how a streaming backend implements ``generate``)."""
    for event in events:
        if isinstance(event, Generation):
            return event
    raise GeneratorFailedError(GenerationFailure.FAILED, backend, "the stream ended without a result")


def bounded(events: Iterator[StreamEvent], timeout_s: float | None, backend: str) -> Iterator[StreamEvent]:
    """``events`` with a wall-clock limit: past ``timeout_s`` the generation is stopped (the
    iterator closed) and :class:`GeneratorFailedError` ``TIMEOUT`` raised.

    The clock is read between pieces, so one piece that never comes is the backend's own
    read timeout to bound (the HTTP client's; llama.cpp yields a token at a time).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        for event in events:
            if deadline is not None and time.monotonic() > deadline and not isinstance(event, Generation):
                raise GeneratorFailedError(
                    GenerationFailure.TIMEOUT, backend, f"generation took longer than {timeout_s}s"
                )
            yield event
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


GeneratorFactory = Callable[["Settings"], Generator]

# Built-ins by name, as "module:function" so a backend's dependencies load only when chosen.
_BUILT_INS: dict[str, str] = {
    "llamacpp": "rag.llm.llamacpp:generator_from_settings",
    "openai": "rag.llm.openai_compat:generator_from_settings",
    "vllm": "rag.llm.vllm_engine:generator_from_settings",
}
_LOADED: dict[str, tuple[GeneratorFactory, str]] = {}

ENTRY_POINT_GROUP = GENERATORS


def register_generator(name: str, factory: GeneratorFactory) -> None:
    """Register a generator factory under ``name`` (for code that cannot ship an entry point)."""
    _LOADED[name] = (factory, distribution_of(factory))


def _resolve(name: str, allowed: Collection[str]) -> tuple[GeneratorFactory, str]:
    if name in _LOADED:
        return _LOADED[name]
    if name in _BUILT_INS:
        module_name, _, attribute = _BUILT_INS[name].partition(":")
        factory: GeneratorFactory = getattr(importlib.import_module(module_name), attribute)
        resolved = (factory, distribution_of(factory))
    else:
        plugin = load_plugin(ENTRY_POINT_GROUP, name, allowed)
        if plugin is None:
            known = ", ".join(sorted({*_BUILT_INS, *_LOADED}))
            raise ConfigurationError(
                f"no generator named {name!r} (built-in: {known}; others register under the "
                f"{ENTRY_POINT_GROUP!r} entry-point group and are listed in ENCLAVE_PLUGINS)"
            )
        resolved = (plugin.value, plugin.distribution)
    _LOADED[name] = resolved
    return resolved


def generator_factory(name: str, allowed: Collection[str] = ()) -> GeneratorFactory:
    """The factory registered as ``name``: a built-in, or an allowed plugin under ``enclave.generators``."""
    return _resolve(name, allowed)[0]


def generator_distribution(name: str, allowed: Collection[str] = ()) -> str:
    """``name version`` of the distribution that provides the generator ``name`` (what the audit log names)."""
    return _resolve(name, allowed)[1]


def generator_for(settings: Settings, name: str | None = None) -> Generator:
    """Build the generator chosen by ``settings.llm_backend`` (or ``name``); plugins need ENCLAVE_PLUGINS."""
    return generator_factory(name or settings.llm_backend, settings.allowed_plugins)(settings)
