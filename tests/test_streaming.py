"""Streaming generation: every built-in backend hands out text as it is generated, bounded in time,
behind a bounded queue; the Answerer turns the streamed JSON into answer text as it grows.

The models are real: the bundled SmolLM2 GGUF in process and behind ``llama_cpp.server`` on
loopback (tests/llm_server.py). The vLLM engine streams the same way but needs vllm and a GPU.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from llm_server import LlamaServer, llama_server, smollm2_generator  # noqa: F401  # session fixtures

from rag.answer import Answer, AnswerDelta, Answerer, AnswerText, Passage
from rag.llm import Generation, GenerationFailure, GeneratorFailedError, SamplingParams, StreamingGenerator, TextDelta
from rag.llm.admission import GenerationBusyError, GenerationQueue
from rag.llm.llamacpp import LlamaCppGenerator, bundled_gguf_path
from rag.llm.openai_compat import OpenAICompatibleGenerator
from rag.llm.vllm_engine import VllmGenerator

PARAMS = SamplingParams(max_tokens=64)
PASSAGES = [Passage("P1", 1, 1, "hours.txt", "The outpatient clinic opens at 8am on weekdays.")]
MESSAGES = Answerer(generator=None, params=PARAMS, max_context_chars=4000).build_messages(  # type: ignore[arg-type]  # prompt only
    "When does the outpatient clinic open?", PASSAGES)


def _drain(events: object) -> tuple[list[str], Generation]:
    pieces: list[str] = []
    for event in events:  # type: ignore[attr-defined]  # an iterator of stream events
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        else:
            return pieces, event
    raise AssertionError("the stream ended without a Generation")


@given(st.text(max_size=40), st.integers(min_value=1, max_value=7))
def test_answer_text_rebuilds_the_answer_field_from_any_split_of_the_reply(answer: str, size: int) -> None:
    reply = json.dumps({"answer": answer, "citations": ["P1"]})
    text = AnswerText()
    streamed = "".join(text.feed(reply[i:i + size]) for i in range(0, len(reply), size))
    assert streamed == answer.lstrip()


def test_answer_text_sends_nothing_of_the_citations_or_the_json_around_it() -> None:
    text = AnswerText()
    pieces = [text.feed(p) for p in ['{"ans', 'wer": "Ei', 'ght', ' am', '.", "citations": ["P', '1"]}']]
    assert pieces == ["", "Ei", "ght", " am", ".", ""]


def test_every_built_in_generator_streams() -> None:
    # constructing loads nothing: no model file is read, no server called, vllm not imported
    built_ins = (LlamaCppGenerator("absent.gguf"), OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m"),
                 VllmGenerator("absent-model-dir"))
    for generator in built_ins:
        assert isinstance(generator, StreamingGenerator), generator


def test_llamacpp_streams_several_pieces_that_make_up_the_reply(smollm2_generator: LlamaCppGenerator) -> None:  # noqa: F811
    schema = Answerer(smollm2_generator, PARAMS, 4000).prompt("When?", PASSAGES).schema
    pieces, generation = _drain(smollm2_generator.stream(MESSAGES, schema, PARAMS))
    assert len(pieces) > 3  # token by token, not one block
    assert "".join(pieces) == generation.text
    assert generation.completion_tokens == len(pieces) and generation.prompt_tokens > 0


def test_openai_compatible_server_streams_several_pieces(llama_server: LlamaServer) -> None:  # noqa: F811
    generator = OpenAICompatibleGenerator(llama_server.base_url, llama_server.model, timeout_s=60)
    pieces, generation = _drain(generator.stream(MESSAGES, None, PARAMS))
    assert len(pieces) > 3
    assert "".join(pieces) == generation.text and generation.model == llama_server.model


def test_the_vllm_engine_streams_several_pieces_of_a_schema_bound_reply() -> None:
    """vLLM's async engine in this process (rag/llm/vllm_engine.py). It needs vllm, a CUDA GPU and a
    local model directory (ENCLAVE_TEST_VLLM_MODEL, e.g. SmolLM2-135M-Instruct's Hugging Face files):
    on a machine without them it says so and skips; on a GPU host it is the test of this backend."""
    import os

    model = os.environ.get("ENCLAVE_TEST_VLLM_MODEL", "")
    if not model:
        pytest.skip("ENCLAVE_TEST_VLLM_MODEL names no local model directory (a GPU host with vllm runs this)")
    pytest.importorskip("vllm", reason="vllm is not installed (the vllm extra, on a GPU host)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: vLLM's engine runs on a GPU")
    generator = VllmGenerator(model, max_model_len=2048, timeout_s=120)
    schema = Answerer(generator, PARAMS, 4000).prompt("When?", PASSAGES).schema
    pieces, generation = _drain(generator.stream(MESSAGES, schema, PARAMS))
    assert len(pieces) > 3  # as the engine produced them, not one block
    assert "".join(pieces) == generation.text and generation.backend == "vllm"
    reply = json.loads(generation.text)
    assert set(reply["citations"]) <= {"P1"} and reply["answer"].strip()


def test_llamacpp_generation_past_its_time_limit_stops_with_a_timeout() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    generator = LlamaCppGenerator(bundled_gguf_path(), n_ctx=2048, timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(GeneratorFailedError) as caught:
        _drain(generator.stream(MESSAGES, None, SamplingParams(max_tokens=2000)))
    assert caught.value.failure is GenerationFailure.TIMEOUT
    assert time.monotonic() - started < 30  # stopped, not run to 2000 tokens
    # the model lock was released: the same generator answers again
    generator.timeout_s = None
    assert _drain(generator.stream(MESSAGES, None, SamplingParams(max_tokens=4)))[1].completion_tokens <= 4


def test_answerer_streams_answer_text_then_the_checked_answer(smollm2_generator: LlamaCppGenerator) -> None:  # noqa: F811
    answerer = Answerer(smollm2_generator, PARAMS, 4000)
    events = list(answerer.stream(answerer.prompt("When does the clinic open?", PASSAGES), PASSAGES))
    *deltas, final = events
    assert isinstance(final, Answer) and all(isinstance(d, AnswerDelta) for d in deltas)
    if final.outcome == "ok":
        assert "".join(d.text for d in deltas).strip() == final.text
        assert {c.passage_id for c in final.citations} <= {"P1"}


def test_a_full_generation_queue_refuses_at_once_with_a_retry_time() -> None:
    queue = GenerationQueue(concurrency=1, max_waiting=1)
    running, waiting = queue.admit(), queue.admit()
    with pytest.raises(GenerationBusyError) as caught:
        queue.admit()
    assert caught.value.retry_after_s >= 1
    running.release()
    queue.admit().release()  # a place came free
    waiting.release()
    assert queue.admitted == 0


def test_an_admitted_generation_waits_for_the_running_one() -> None:
    queue = GenerationQueue(concurrency=1, max_waiting=4)
    order: list[str] = []
    first = queue.admit()
    first.__enter__()

    def second() -> None:
        with queue.admit():
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.2)
    order.append("first done")
    first.__exit__(None, None, None)
    thread.join(timeout=5)
    assert order == ["first done", "second"]
