"""In-process vLLM generator: vLLM's async engine (``AsyncLLMEngine``) on this machine's GPU.

For sites that want GPU throughput without running a separate ``vllm serve``. The reply
schema goes to vLLM's structured outputs (``StructuredOutputsParams(json=schema)`` inside
``SamplingParams``; vLLM before 0.12 spelled it ``GuidedDecodingParams`` /
``guided_decoding``), which compiles it to a grammar (xgrammar or guidance) that masks every
sampled token. The async engine, unlike the offline ``LLM`` class, hands out text while it is
generated, which is what streaming needs. ``vllm`` is an optional extra, imported only when
this generator warms up.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

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
    from rag.config import Settings

BACKEND = "vllm"


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise MissingExtraError("vllm", "vllm") from exc
    return vllm


def _structured_outputs(schema: JsonSchema) -> dict[str, Any]:
    """The ``SamplingParams`` keyword that constrains decoding to ``schema``."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams  # vLLM < 0.12

        return {"guided_decoding": GuidedDecodingParams(json=dict(schema))}
    return {"structured_outputs": StructuredOutputsParams(json=dict(schema))}


class VllmGenerator:
    """A Hugging Face model directory (local path) served by vLLM's async engine in this process.

    The engine runs on its own event loop in a daemon thread; :meth:`stream` submits a request
    there and hands the text on as the engine produces it (a thread-safe queue bridges the two).
    vLLM batches concurrent requests itself, so no lock serialises callers. Closing a stream
    early aborts its request in the engine.
    """

    backend = BACKEND

    def __init__(
        self,
        model: str,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        timeout_s: float | None = None,
    ) -> None:
        if not model:
            raise ConfigurationError("the vllm backend needs ENCLAVE_LLM_MODEL (a local model directory)")
        self.model = model
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.timeout_s = timeout_s
        self._engine: Any = None
        self._tokenizer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # guards the one-time start only

    def warm_up(self) -> None:
        self._start()

    def _start(self) -> tuple[Any, asyncio.AbstractEventLoop]:
        with self._lock:
            if self._engine is None or self._loop is None:
                vllm = _import_vllm()
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="vllm-engine", daemon=True).start()
                args = vllm.AsyncEngineArgs(
                    model=self.model,
                    max_model_len=self.max_model_len,
                    gpu_memory_utilization=self.gpu_memory_utilization,
                )

                async def build() -> tuple[Any, Any]:
                    engine = vllm.AsyncLLMEngine.from_engine_args(args)
                    return engine, await engine.get_tokenizer()

                self._engine, self._tokenizer = asyncio.run_coroutine_threadsafe(build(), loop).result()
                self._loop = loop
            return self._engine, self._loop

    def generate(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Generation:
        return collect(self.stream(messages, schema, params), BACKEND)

    def stream(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Iterator[StreamEvent]:
        return bounded(self._stream(messages, schema, params), self.timeout_s, BACKEND)

    def _stream(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Iterator[StreamEvent]:
        vllm = _import_vllm()
        engine, loop = self._start()
        constraint = _structured_outputs(schema) if schema is not None else {}
        sampling = vllm.SamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=params.seed,
            **constraint,
        )
        prompt = self._tokenizer.apply_chat_template(
            [dict(message) for message in messages], tokenize=False, add_generation_prompt=True
        )
        request_id = uuid.uuid4().hex
        outputs: queue.Queue[Any] = queue.Queue()

        async def run() -> None:
            try:
                async for output in engine.generate(prompt, sampling, request_id):
                    outputs.put(output)
            except Exception as exc:  # noqa: BLE001  # handed to the consumer thread, which types it
                outputs.put(exc)
            else:
                outputs.put(_END)

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        sent = ""
        last: Any = None
        try:
            while (item := outputs.get()) is not _END:
                if isinstance(item, ValueError):  # prompt longer than max_model_len, invalid schema
                    raise GeneratorFailedError(GenerationFailure.REJECTED, BACKEND, type(item).__name__) from item
                if isinstance(item, BaseException):
                    raise GeneratorFailedError(GenerationFailure.FAILED, BACKEND, type(item).__name__) from item
                last = item
                text = item.outputs[0].text  # cumulative: the reply so far
                if len(text) > len(sent):
                    yield TextDelta(text[len(sent):])
                    sent = text
        finally:
            if not future.done():
                future.cancel()
                asyncio.run_coroutine_threadsafe(engine.abort(request_id), loop)
        if last is None:
            raise GeneratorFailedError(GenerationFailure.FAILED, BACKEND, "the engine returned no output")
        completion = last.outputs[0]
        yield Generation(
            text=completion.text,
            model=self.model,
            model_hash=None,
            backend=BACKEND,
            prompt_tokens=len(last.prompt_token_ids or ()),
            completion_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason,
        )


_END = object()


def generator_from_settings(settings: Settings) -> VllmGenerator:
    return VllmGenerator(
        settings.llm_model or settings.llm_model_path,
        max_model_len=settings.llm_context_tokens,
        timeout_s=settings.llm_timeout_s,
    )
