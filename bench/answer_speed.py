"""Answer speed of the chat assistant: time to first token and total time, on the embedded default.

    flock /tmp/bench.lock python bench/answer_speed.py [--asks 2] [--k 3] [--json]

What it measures: for each question of a fixed set over the sample corpus (each asked by a user
whose groups may read its answer), the chat path the page and ``/v1/chat/completions`` use
(:func:`rag.conversation.open_answer_stream`: redact and retrieve, build the prompt, commit the
prompt record, stream): *first token* is the time from the call until the first character of
the answer is in hand (what the reader waits for), *total* until the answer record is
committed. Each question is asked ``--asks`` times; the figures are medians over all asks. A
follow-up turn ("conversation") is timed the same way, after the question it follows.

Set-up: a fresh temporary ENCLAVE_HOME with the sample corpus ingested (hipaa policy), default
settings (the bundled SmolLM2-135M GGUF in process through llama.cpp, all cores) except what the
flags change. The model loads and one untimed question warms it before timing. HTTP is not in
the path (it adds milliseconds); run under ``flock /tmp/bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "sample-corpus"
QUESTIONS: list[tuple[str, list[str]]] = [
    ("How is the oxaliplatin dose adjusted for neuropathy?", ["oncology"]),
    ("Which antiemetics are given before FOLFOX?", ["oncology"]),
    ("When are wards open to visitors?", ["staff"]),
    ("Where do visitors park?", ["staff"]),
    ("What must staff do after a suspected data breach?", ["staff"]),
]
CONVERSATION = [("Which antiemetics are given before FOLFOX?", ["oncology"]), ("And at what dose?", ["oncology"])]


def _timed_ask(engine: Any, question: str, groups: list[str], earlier: list[str], k: int | None) -> dict[str, Any]:
    from rag.answer import AnswerDelta
    from rag.conversation import AnswerDone, open_answer_stream

    started = time.perf_counter()
    first: float | None = None
    stream = open_answer_stream(engine, question, earlier=earlier, user="bench", groups=groups, k=k)
    opened = time.perf_counter() - started
    done: AnswerDone | None = None
    for event in stream:
        if isinstance(event, AnswerDelta) and first is None:
            first = time.perf_counter() - started
        elif isinstance(event, AnswerDone):
            done = event
    total = time.perf_counter() - started
    assert done is not None
    gen = done.answer.generation
    row = {"question": question, "turns_used": stream.turns_used, "outcome": done.answer.outcome,
            "retrieve_and_audit_s": round(opened, 3), "first_token_s": round(first if first is not None else total, 3),
            "total_s": round(total, 3), "prompt_tokens": gen.prompt_tokens if gen else 0,
            "completion_tokens": gen.completion_tokens if gen else 0,
            "passages_shown": len(done.answer.shown_passage_ids)}
    print(json.dumps(row), file=sys.stderr, flush=True)  # progress, and what survives an interrupted run
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asks", type=int, default=2, help="times each question is asked (median over all)")
    parser.add_argument("--k", type=int, default=None, help="passages in the prompt (default: ENCLAVE_CHAT_PASSAGES)")
    parser.add_argument("--max-tokens", type=int, default=None, help="ENCLAVE_LLM_MAX_TOKENS (default: the setting's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = Path(tempfile.mkdtemp(prefix="enclave-answer-speed-"))
    os.environ["ENCLAVE_HOME"] = str(home / "home")
    os.environ.pop("ENCLAVE_DATABASE_URL", None)
    if args.max_tokens:
        os.environ["ENCLAVE_LLM_MAX_TOKENS"] = str(args.max_tokens)
    try:
        from pipelines.run import run_ingest
        from rag.config import load_settings
        from rag.query import QueryEngine

        shutil.copytree(CORPUS, home / "corpus")
        out = run_ingest(str(home / "corpus"), source_name="sample", policy="hipaa")
        assert out.success, out.failure
        settings = load_settings()
        engine = QueryEngine(settings)
        engine.warm_up()
        started = time.perf_counter()
        _timed_ask(engine, "warm-up question about visiting hours", ["staff"], [], args.k)
        warm_up_s = time.perf_counter() - started

        asks = [_timed_ask(engine, q, g, [], args.k) for _ in range(args.asks) for q, g in QUESTIONS]
        turns = []
        for _ in range(args.asks):
            earlier: list[str] = []
            for q, g in CONVERSATION:
                turns.append(_timed_ask(engine, q, g, earlier, args.k))
                earlier.append(q)
        follow_ups = [t for t in turns if t["turns_used"]]
        engine.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)

    def median(rows: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)

    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor()},
        "settings": {"k": args.k or settings.chat_passages, "llm_max_tokens": settings.llm_max_tokens,
                     "llm_context_tokens": settings.llm_context_tokens, "llm_backend": settings.llm_backend},
        "load_and_first_ask_s": round(warm_up_s, 2),
        "asks": len(asks),
        "first_token_median_s": median(asks, "first_token_s"),
        "total_median_s": median(asks, "total_s"),
        "retrieve_and_audit_median_s": median(asks, "retrieve_and_audit_s"),
        "prompt_tokens_median": median(asks, "prompt_tokens"),
        "completion_tokens_median": median(asks, "completion_tokens"),
        "outcomes": {o: sum(1 for a in asks if a["outcome"] == o) for o in {a["outcome"] for a in asks}},
        "follow_up_first_token_median_s": median(follow_ups, "first_token_s"),
        "follow_up_total_median_s": median(follow_ups, "total_s"),
        "per_ask": asks + turns,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        if key != "per_ask":
            print(f"{key:34} {value}")


if __name__ == "__main__":
    main()
