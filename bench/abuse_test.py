"""Abuse load test: oversized, malformed and slow requests mixed into normal traffic (issue 10).

    python bench/abuse_test.py [--clients 4] [--seconds 20] [--slow 16] [--json]

Set-up as bench/load_test.py (whose pieces it reuses): a fresh ENCLAVE_HOME, the sample corpus
ingested, ``enclave serve`` on a free loopback port. Then two timed windows of the same length:

1. baseline: ``--clients`` closed-loop clients send normal searches (and an ``--ask-share`` of asks);
2. abuse: the same normal clients, and beside them, all at once:
   - bodies declared at 50 MB with a token (refused by Content-Length) and without one (401, unread);
   - 2 MB bodies sent chunked, without Content-Length (refused while they stream in);
   - 400 KB chat messages and 65-message chats (under the body limit: refused by the schema);
   - a lone surrogate in a chat message, and bodies that are not JSON;
   - ``--slow`` connections that send their headers and then one byte of body every second
     until the window closes (slowloris), and closed-loop asks (the model: seconds each);
   - GETs of 404 paths that carry a name and a phone number.

Checks; any failure gives exit status 1:
- normal requests keep being served: no errors, and throughput under abuse at least
  ``--min-share`` of the baseline's;
- memory stays bounded: the service's peak RSS under abuse at most ``--max-growth-mb`` above its
  peak in the baseline window (sampled every 0.25 s, through psutil);
- audit: every authenticated request, normal or abusive, has exactly one record (matched by
  request id where the client got an answer, by count per refusal reason where the connection was
  cut first), unauthenticated ones none, and the chain verifies.

The load generator runs on the same machine as the service and takes some of its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from load_test import (
    QUESTIONS,
    SAMPLE_CORPUS,
    USERS,
    LoadClient,
    Sample,
    ingest,
    machine_info,
    running_service,
    service_env,
)
from pydantic import SecretStr
from timing import percentiles_ms

from connectors.filesystem import FileShareSource
from rag.audit import AuditLog
from rag.config import Settings
from rag.service.auth import issue_token

PERSONAL_PATH = "/patient/John%20Q.%20Marlowe%20415-555-0199/"


@dataclass
class Abuse:
    """What the abusive clients sent and what came back."""

    sent: Counter[str] = field(default_factory=Counter)  # by kind
    status: Counter[str] = field(default_factory=Counter)  # "kind status"
    request_ids: dict[str, list[str]] = field(default_factory=dict)  # authenticated, answered: kind -> ids
    cut: Counter[str] = field(default_factory=Counter)  # authenticated, connection cut before an answer
    answers: list[float] = field(default_factory=list)  # latency of abusive asks that got 200

    def note(self, kind: str, status: int, request_id: str | None, authenticated: bool) -> None:
        self.sent[kind] += 1
        self.status[f"{kind} {status}"] += 1
        if authenticated:
            if request_id:
                self.request_ids.setdefault(kind, []).append(request_id)
            else:
                self.cut[kind] += 1


def _host_port(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").split(":")
    return host, int(port)


async def _raw(base_url: str, head: bytes, body: bytes, drip_until: float | None = None) -> tuple[int, str | None]:
    """Raw HTTP/1.1 on a socket: send ``head`` and ``body``; with ``drip_until``, then one byte a second
    until that time. Returns the status (0: no answer) and the x-request-id of the answer."""
    host, port = _host_port(base_url)
    reader, writer = await asyncio.open_connection(host, port)
    data = b""
    try:
        writer.write(head + body)
        await writer.drain()
        while drip_until is not None and time.perf_counter() < drip_until:
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout=1.0)
                break  # the server answered (or closed) while we dripped
            except TimeoutError:
                writer.write(b" ")
                await writer.drain()
        if not data:
            data = await asyncio.wait_for(reader.read(65536), timeout=30.0)
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
    if not data.startswith(b"HTTP/1.1 "):
        return 0, None
    request_id = next((line.split(b":", 1)[1].strip().decode() for line in data.split(b"\r\n")
                       if line.lower().startswith(b"x-request-id:")), None)
    return int(data.split(b" ", 2)[1]), request_id


def _head(path: str, token: str | None, length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _post(http: httpx.AsyncClient, abuse: Abuse, kind: str, path: str, token: str, **kwargs: Any) -> None:
    try:
        reply = await http.post(path, headers={"Authorization": f"Bearer {token}",
                                               "content-type": "application/json"}, timeout=120, **kwargs)
    except httpx.HTTPError:
        abuse.note(kind, 0, None, True)
        return
    abuse.note(kind, reply.status_code, reply.headers.get("x-request-id"), True)


async def abusive_loop(base_url: str, http: httpx.AsyncClient, token: str, deadline: float, abuse: Abuse,
                       rng: random.Random) -> None:
    """One abuser: cycles through the oversized and malformed requests until the deadline."""

    def chunked() -> Any:
        async def gen() -> Any:
            yield b'{"question": "'
            for _ in range(32):
                yield b"x" * 65536
            yield b'"}'
        return gen()

    while time.perf_counter() < deadline:
        choice = rng.randrange(8)
        if choice == 0:  # declared 50 MB with a token: 413 before a byte of body is read
            status, rid = await _raw(base_url, _head("/v1/search", token, 50_000_000), b'{"question": "')
            abuse.note("declared-50MB", status, rid, True)
        elif choice == 1:  # declared 50 MB without a token: 401, unread, unaudited
            status, _ = await _raw(base_url, _head("/v1/ask", None, 50_000_000), b'{"question": "')
            abuse.note("declared-50MB-no-token", status, None, False)
        elif choice == 2:
            await _post(http, abuse, "chunked-2MB", "/v1/search", token, content=chunked())
        elif choice == 3:
            body = {"messages": [{"role": "user", "content": "Marlowe 415-555-0199 " * 20_000}]}  # ~420 KB
            await _post(http, abuse, "chat-400KB", "/v1/chat/completions", token, json=body)
        elif choice == 4:
            body = {"messages": [{"role": "user", "content": "hello"}] * 65}
            await _post(http, abuse, "chat-65-messages", "/v1/chat/completions", token, json=body)
        elif choice == 5:
            raw = b'{"messages":[{"role":"user","content":[{"type":"text","text":"leave \\ud800 policy"}]}]}'
            await _post(http, abuse, "lone-surrogate", "/v1/chat/completions", token, content=raw)
        elif choice == 6:
            await _post(http, abuse, "not-json", "/v1/ask", token, content=b"{question: " + b"[" * 10_000)
        else:
            try:
                reply = await http.get(PERSONAL_PATH + str(rng.randrange(10**9)), timeout=30)
                abuse.note("404-personal-path", reply.status_code, None, False)
            except httpx.HTTPError:
                abuse.note("404-personal-path", 0, None, False)


async def slow_connection(base_url: str, token: str, deadline: float, abuse: Abuse) -> None:
    """Slowloris: headers promising a small body, then one byte a second until the service gives up
    on it (ENCLAVE_BODY_TIMEOUT_S) or the window closes; again, until the window closes."""
    while time.perf_counter() < deadline:
        status, rid = await _raw(base_url, _head("/v1/search", token, 100_000), b'{"question": "',
                                 drip_until=deadline)
        abuse.note("slow-body", status, rid, True)


async def slow_asks(client: LoadClient, deadline: float, abuse: Abuse, rng: random.Random) -> None:
    while time.perf_counter() < deadline:
        sample = await client.request("ask", rng.choice(USERS), rng.choice(QUESTIONS))
        abuse.note("ask", sample.status, sample.request_id or None, True)
        if sample.status == 200:
            abuse.answers.append(sample.latency_s)


async def sample_rss(pid: int, until: asyncio.Event, out: list[float]) -> None:
    proc = psutil.Process(pid)
    while not until.is_set():
        try:
            out.append(proc.memory_info().rss / 2**20)
        except psutil.Error:
            return
        await asyncio.sleep(0.25)


async def window(base_url: str, tokens: dict[str, str], rules: dict[str, Any], pid: int, args: argparse.Namespace,
                 abusive: bool, seed: int) -> tuple[list[Sample], Abuse, list[float]]:
    limits = httpx.Limits(max_connections=args.clients + 16, max_keepalive_connections=args.clients + 16)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, trust_env=False) as http:
        client = LoadClient(http, tokens, rules)
        rng = random.Random(seed)
        rss: list[float] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(pid, stop, rss))
        deadline = time.perf_counter() + args.seconds
        abuse = Abuse()
        tasks = []
        if abusive:
            token = tokens[USERS[1].name]
            tasks += [abusive_loop(base_url, http, token, deadline, abuse, random.Random(rng.random()))
                      for _ in range(args.abusers)]
            tasks += [slow_connection(base_url, token, deadline, abuse) for _ in range(args.slow)]
            tasks += [slow_asks(client, deadline, abuse, random.Random(rng.random())) for _ in range(args.askers)]
        normal = asyncio.gather(*(client.closed_loop(random.Random(rng.random()), deadline, args.ask_share)
                                  for _ in range(args.clients)))
        per_client, *_ = await asyncio.gather(normal, *tasks)
        stop.set()
        await sampler
    return [s for loop in per_client for s in loop], abuse, rss


async def warm_up(base_url: str, tokens: dict[str, str], rules: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=base_url, trust_env=False) as http:
        client = LoadClient(http, tokens, rules)
        await client.request("ask", USERS[0], QUESTIONS[0])
        for question in QUESTIONS:
            await client.request("search", USERS[0], question)


def check_audit(log: AuditLog, head_before: int, normal: list[Sample], abuse: Abuse) -> dict[str, Any]:
    by_request: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    appended = 0
    for rec in log.records():
        if rec.seq > head_before:
            appended += 1
            by_request[rec.body["request_id"]] += 1
            reasons[rec.body["error_type"] or rec.body["outcome"]] += 1
    answered = [s.request_id for s in normal if s.status == 200]
    abusive_ids = [rid for ids in abuse.request_ids.values() for rid in ids]
    expected = len(answered) + len(abusive_ids) + sum(abuse.cut.values())
    report = log.verify()
    return {
        "appended": appended, "expected": expected,
        "normal_missing_or_duplicated": sum(1 for rid in answered if by_request[rid] != 1),
        "abusive_missing_or_duplicated": sum(1 for rid in abusive_ids if by_request[rid] != 1),
        "cut_before_answer": dict(abuse.cut), "records_by_reason": dict(reasons),
        "chain_ok": report.ok, "chain_problem": report.problem,
    }


def summarize(samples: list[Sample], seconds: float) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None]
    p50, p99 = percentiles_ms([s.latency_s for s in ok])
    return {"requests": len(samples), "ok": len(ok), "errors": len(samples) - len(ok),
            "error_kinds": dict(Counter(s.error for s in samples if s.error)),
            "throughput_rps": len(ok) / seconds, "p50_ms": p50, "p99_ms": p99}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--clients", type=int, default=4, help="normal closed-loop clients")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each window")
    ap.add_argument("--ask-share", type=float, default=0.0, help="share of normal requests sent to /v1/ask")
    ap.add_argument("--abusers", type=int, default=4, help="closed-loop clients sending oversized/malformed requests")
    ap.add_argument("--slow", type=int, default=16, help="slowloris connections held through the abuse window")
    ap.add_argument("--askers", type=int, default=1, help="closed-loop clients sending asks (the model) under abuse")
    ap.add_argument("--min-share", type=float, default=0.3,
                    help="normal throughput under abuse must be at least this share of the baseline's")
    ap.add_argument("--max-growth-mb", type=float, default=300.0,
                    help="peak RSS under abuse may exceed the baseline peak by at most this much")
    ap.add_argument("--body-timeout", type=float, default=5.0,
                    help="the service's ENCLAVE_BODY_TIMEOUT_S: how long a slow body may take")
    ap.add_argument("--policy", default="hipaa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rules = {doc.uri: doc.access for doc in FileShareSource(SAMPLE_CORPUS).scan() if doc.access is not None}
    home = Path(tempfile.mkdtemp(prefix="enclave-abuse-"))
    try:
        jwt_key = secrets.token_urlsafe(48)
        env = service_env(home, jwt_key, args.policy)
        env["ENCLAVE_BODY_TIMEOUT_S"] = str(args.body_timeout)
        settings = Settings(home=home, jwt_key=SecretStr(jwt_key))
        tokens = {u.name: issue_token(settings, u.name, list(u.groups), ttl_s=24 * 3600) for u in USERS}
        ingest_s = ingest(SAMPLE_CORPUS, env, args.policy)
        log = AuditLog(settings.audit_database_url)
        with running_service(env, home / "serve.log") as base_url:
            me = psutil.Process()
            [service] = [p for p in me.children(recursive=True) if "serve" in " ".join(p.cmdline())]
            # warm-up: the first search loads the models, the first ask the generator (its memory is
            # the baseline's, not growth under abuse)
            asyncio.run(warm_up(base_url, tokens, rules))
            head = log.head().seq
            base_samples, _, base_rss = asyncio.run(window(base_url, tokens, rules, service.pid, args, False,
                                                           args.seed + 1))
            base_audit = check_audit(log, head, base_samples, Abuse())
            head = log.head().seq
            samples, abuse, rss = asyncio.run(window(base_url, tokens, rules, service.pid, args, True, args.seed + 2))
            time.sleep(2.0)  # the slow connections' refusals are written as their sockets close
            audit = check_audit(log, head, samples, abuse)
        log.dispose()
    finally:
        shutil.rmtree(home, ignore_errors=True)

    baseline, under = summarize(base_samples, args.seconds), summarize(samples, args.seconds)
    checks = {
        "normal_served": under["errors"] == 0 and baseline["errors"] == 0
        and under["throughput_rps"] >= args.min_share * baseline["throughput_rps"],
        "memory_bounded": max(rss) <= max(base_rss) + args.max_growth_mb,
        "audit_exact": (audit["appended"] == audit["expected"] and audit["normal_missing_or_duplicated"] == 0
                        and audit["abusive_missing_or_duplicated"] == 0 and audit["chain_ok"]
                        and base_audit["appended"] == base_audit["expected"]),
    }
    summary = {
        "config": {k: v for k, v in vars(args).items() if k != "json"}, "machine": machine_info(),
        "ingest_s": ingest_s, "baseline": baseline, "under_abuse": under,
        "rss_mb": {"baseline_peak": max(base_rss), "abuse_peak": max(rss), "abuse_final": rss[-1]},
        "abuse_sent": dict(abuse.sent), "abuse_status": dict(sorted(abuse.status.items())),
        "abusive_asks_ok_p50_ms": percentiles_ms(abuse.answers)[0],
        "audit": audit, "checks": checks, "passed": all(checks.values()),
    }
    print(json.dumps(summary, indent=2) if args.json else _table(summary))
    return 0 if summary["passed"] else 1


def _table(s: dict[str, Any]) -> str:
    b, u, r, a = s["baseline"], s["under_abuse"], s["rss_mb"], s["audit"]
    lines = [
        f"Abuse test: {s['config']['clients']} normal clients, {s['config']['seconds']:g} s per window; "
        f"{s['config']['abusers']} abusers, {s['config']['slow']} slow connections, {s['config']['askers']} askers",
        f"{'window':<12} {'ok':>6} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'peak RSS MB':>12}",
        f"{'baseline':<12} {b['ok']:>6} {b['errors']:>6} {b['throughput_rps']:>7.1f} {b['p50_ms']:>8.1f} "
        f"{b['p99_ms']:>8.1f} {r['baseline_peak']:>12.0f}",
        f"{'under abuse':<12} {u['ok']:>6} {u['errors']:>6} {u['throughput_rps']:>7.1f} {u['p50_ms']:>8.1f} "
        f"{u['p99_ms']:>8.1f} {r['abuse_peak']:>12.0f}",
        "abusive requests: " + ", ".join(f"{k} {v}" for k, v in s["abuse_status"].items()),
        f"audit: {a['appended']} records appended, {a['expected']} expected; by reason {a['records_by_reason']}; "
        f"chain {'ok' if a['chain_ok'] else 'BROKEN'}",
        "checks: " + ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in s["checks"].items()),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
