"""Celery workers of dagster_celery's app on loopback RabbitMQ, started and stopped by a test or a benchmark.

Each worker runs one step at a time in its own process (``--pool=solo``), so a step's redaction
workers are its children and killing the worker kills exactly the step it runs. The queue is
private to the caller, so workers of two tests (or two sessions on one broker) never take each
other's steps.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"


class CeleryWorkers:
    """Celery worker processes of dagster_celery's app on one private queue, each running one step at a
    time in its own process (``--pool=solo``: a step's redaction workers are its children)."""

    def __init__(self, count: int, queue: str, workdir: Path, env: dict[str, str]) -> None:
        self.queue = queue
        self.logs = [workdir / f"worker{i}.log" for i in range(count)]
        config_dir = workdir / "celery-config"
        config_dir.mkdir()
        # the module dagster_celery's app reads (what `dagster-celery worker start -y` writes)
        (config_dir / "dagster_celery_config.py").write_text(
            f"broker_url = {BROKER!r}\nresult_backend = 'rpc://'\ntask_acks_late = True\n"
            f"worker_prefetch_multiplier = 1\ntask_default_queue = {queue!r}\n", encoding="utf-8")
        env = {**env, "PYTHONPATH": os.pathsep.join([str(config_dir), env.get("PYTHONPATH", "")])}
        celery = shutil.which("celery", path=str(Path(sys.executable).parent))
        assert celery is not None
        self.names = [f"w{i}-{queue}" for i in range(count)]
        self.processes = [
            subprocess.Popen([celery, "-A", "dagster_celery.app", "worker", "--pool=solo", "-Q", queue,
                              "-n", f"{name}@%h", "--loglevel=INFO", "--prefetch-multiplier=1",
                              "--without-gossip", "--without-mingle"],
                             env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            for name, log in zip(self.names, self.logs, strict=True)]

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(" ready." in log.read_text(errors="replace") for log in self.logs):
                return
            assert all(p.poll() is None for p in self.processes), self.tail()
            time.sleep(0.5)
        raise AssertionError(f"celery workers not ready in {timeout_s}s: {self.tail()}")

    def kill(self, hostname: str) -> None:
        name = hostname.split("@", 1)[0]
        process = self.processes[self.names.index(name)]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def tail(self) -> str:
        return "\n".join(log.read_text(errors="replace")[-2000:] for log in self.logs)
