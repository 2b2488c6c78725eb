"""A real ``python -m llama_cpp.server`` for tests of the OpenAI-compatible generator.

Starts the server on a free loopback port with the bundled SmolLM2 GGUF, waits until
``/v1/models`` answers, and stops it (terminate, then kill) at the end of the session. Use the
``llama_server`` fixture (`from llm_server import llama_server` in a test module: tests/ is on
sys.path under pytest's default import mode; or list this module in the root
conftest's ``pytest_plugins``); ``smollm2_generator`` gives the in-process model, loaded once
per session. The server's output goes to a temporary file that is deleted
with the server; tests send only synthetic text.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from rag.llm.llamacpp import LlamaCppGenerator

STARTUP_TIMEOUT_S = 60.0


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: Any, startup_s: float = 30.0) -> Iterator[str]:
    """``app`` (an ASGI app: the Enclave service) under uvicorn on a free loopback port, in a daemon
    thread; yields its base URL once uvicorn has started, and stops it afterwards."""
    import uvicorn

    port = free_loopback_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_s
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


@dataclass(frozen=True)
class LlamaServer:
    """A running server: its OpenAI base URL and the model alias it reports."""

    base_url: str
    model: str
    process: subprocess.Popen[bytes]


def start_llama_server(
    model_path: Path, n_ctx: int = 2048, model_alias: str = "smollm2-test"
) -> tuple[LlamaServer, Path]:
    port = free_loopback_port()
    log_fd, log_name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", model_alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(os.cpu_count() or 1),
        "--verbose", "False",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log_fd, stderr=subprocess.STDOUT)  # noqa: S603  # fixed argv, our interpreter
    os.close(log_fd)
    server = LlamaServer(base_url=f"http://127.0.0.1:{port}/v1", model=model_alias, process=process)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = Path(log_name).read_text(errors="replace")[-2000:]
            Path(log_name).unlink(missing_ok=True)
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=1) as reply:  # noqa: S310  # loopback http
                if reply.status == 200:
                    return server, Path(log_name)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    stop_llama_server(server, Path(log_name))
    raise RuntimeError(f"llama_cpp.server did not answer within {STARTUP_TIMEOUT_S}s")


def stop_llama_server(server: LlamaServer, log_path: Path) -> None:
    # A short grace period: uvicorn waits for in-flight requests, and a test may have
    # abandoned one (the timeout test), which the server would otherwise finish first.
    server.process.terminate()
    try:
        server.process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)
    log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    from rag.llm.llamacpp import bundled_gguf_path

    server, log_path = start_llama_server(bundled_gguf_path())
    try:
        yield server
    finally:
        stop_llama_server(server, log_path)


@functools.cache
def shared_smollm2_generator() -> LlamaCppGenerator:
    """One in-process SmolLM2 per test session, whichever module asks first."""
    from rag.llm.llamacpp import LlamaCppGenerator, bundled_gguf_path

    generator = LlamaCppGenerator(bundled_gguf_path(), n_ctx=2048)
    generator.warm_up()
    return generator


@pytest.fixture(scope="session")
def smollm2_generator() -> LlamaCppGenerator:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    return shared_smollm2_generator()
