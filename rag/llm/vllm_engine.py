"""In-process vLLM generator: vLLM's offline ``LLM`` engine on this machine's GPU.

For sites that want GPU throughput without running a separate ``vllm serve``. The reply
schema goes to vLLM's structured outputs (``StructuredOutputsParams(json=schema)`` inside
``SamplingParams``; vLLM before 0.12 spelled it ``GuidedDecodingParams`` /
``guided_decoding``), which compiles it to a grammar (xgrammar or guidance) that masks every
sampled token. ``vllm`` is an optional extra, imported only when this generator warms up.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigurationError, MissingExtraError
from rag.llm.base import (
    ChatMessage,
    Generation,
    GenerationFailure,
    GeneratorFailedError,
    JsonSchema,
    SamplingParams,
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
    """A Hugging Face model directory (local path) served by vLLM in this process."""

    backend = BACKEND

    def __init__(self, model: str, max_model_len: int = 4096, gpu_memory_utilization: float = 0.85) -> None:
        if not model:
            raise ConfigurationError("the vllm backend needs ENCLAVE_LLM_MODEL (a local model directory)")
        self.model = model
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self._llm: Any = None
        # One engine, one caller at a time: the offline LLM class is not meant for threads.
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        with self._lock:
            self._load()

    def _load(self) -> Any:
        if self._llm is None:
            vllm = _import_vllm()
            self._llm = vllm.LLM(
                model=self.model,
                max_model_len=self.max_model_len,
                gpu_memory_utilization=self.gpu_memory_utilization,
            )
        return self._llm

    def generate(
        self, messages: Sequence[ChatMessage], schema: JsonSchema | None, params: SamplingParams
    ) -> Generation:
        vllm = _import_vllm()
        constraint = _structured_outputs(schema) if schema is not None else {}
        sampling = vllm.SamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=params.seed,
            **constraint,
        )
        with self._lock:
            llm = self._load()
            try:
                outputs = llm.chat([dict(message) for message in messages], sampling_params=sampling, use_tqdm=False)
            except ValueError as exc:  # prompt longer than max_model_len, invalid schema
                raise GeneratorFailedError(GenerationFailure.REJECTED, BACKEND, type(exc).__name__) from exc
            except RuntimeError as exc:
                raise GeneratorFailedError(GenerationFailure.FAILED, BACKEND, type(exc).__name__) from exc
        request_output = outputs[0]
        completion = request_output.outputs[0]
        return Generation(
            text=completion.text,
            model=self.model,
            model_hash=None,
            backend=BACKEND,
            prompt_tokens=len(request_output.prompt_token_ids or ()),
            completion_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason,
        )


def generator_from_settings(settings: Settings) -> VllmGenerator:
    return VllmGenerator(settings.llm_model or settings.llm_model_path, max_model_len=settings.llm_context_tokens)
