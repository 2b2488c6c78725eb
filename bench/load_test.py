"""Query-service load test: N concurrent clients for M seconds against `enclave serve` on loopback.

    python bench/load_test.py [--clients 8] [--seconds 20] [--runs 3] [--ask-share 0.1] [--json]
                              [--workers 2] [--postgres ADMIN_URL] [--pad-chunks 100000]

What it measures, per run and as the median over runs: throughput (successful requests per second
over the timed window), p50 and p99 latency of successful requests as a client sees them, errors,
and whether the audit log holds exactly one record for each successful request.

Set-up, once per invocation: a fresh temporary ENCLAVE_HOME (SQLite catalog and audit log in it),
the sample corpus ingested with `enclave ingest --policy hipaa`, and `enclave serve` started as a
subprocess on a free 127.0.0.1 port with a generated JWT signing key. Each client is a closed loop
(one request in flight at a time) posting to /v1/search, or to /v1/ask for an --ask-share of its
requests (the embedded llama.cpp model: slow on a CPU), as one of a fixed set of users, each with
its own signed token and groups, two of whom match no access rule and see only public documents.
Questions are written about the sample corpus. Warm-up requests precede each timed window.

Checks, each run; any failure gives exit status 1:
- errors: authenticated requests that did not get 200, transport failures, returned documents the
  user's groups may not see (judged by the corpus's own ``.access.json`` files, read through
  ``FileShareSource``), and replies whose ``x-request-id`` header is not the request_id in their body
  (the one the audit record holds);
- a few unauthenticated requests (no token, malformed token, wrong signing key, expired token,
  identity headers without trusted-header mode), spread over the window, must get 401 and leave no
  audit record; they are reported apart and are not counted as errors;
- audit: each 200 response's request_id is in exactly one of the records appended during the run,
  at the seq the response named (``audit_id``); no appended record is left unexplained; the whole
  chain verifies (``AuditLog.verify``, as ``enclave audit verify``).

Options for the scale figures: ``--workers`` service processes share the port, catalog, audit chain
and index files; ``--postgres`` puts the catalog and audit log in a fresh database on that server
(ingested as its owner, ``enclave db upgrade --app-role``, then served as the app role);
``--pad-chunks`` adds synthetic chunks (bench/pad_index.py) before the service starts. The CPU
time the service processes used in each timed window, divided by the requests answered, is
reported as CPU ms per request: less sensitive than throughput to other work on a shared machine.

The load generator runs on the same machine as the service and takes some of its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import jwt
from pydantic import SecretStr
from timing import percentiles_ms

from connectors.base import AccessRule
from connectors.filesystem import FileShareSource
from rag.audit import AuditLog
from rag.config import Settings
from rag.service.auth import issue_token

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = ROOT / "tests" / "fixtures" / "sample-corpus"
STARTUP_TIMEOUT_S = 300.0
SEARCH_TIMEOUT_S = 60.0
ASK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]


USERS: tuple[User, ...] = (
    User("onc1", ("oncology", "staff")),
    User("nurse1", ("staff",)),
    User("fin1", ("finance",)),
    User("hr1", ("hr", "staff")),
    User("visitor1", ("visitors",)),  # a group no rule names: public documents only
    User("contractor1", ()),  # no groups at all: public documents only
)

QUESTIONS: tuple[str, ...] = (
    "How much is oxaliplatin reduced for grade 2 neuropathy?",
    "FOLFOX dose adjustments",
    "discharge summary after adjuvant chemotherapy",
    "Which antiemetics are given before the infusion?",
    "When is fluorouracil bolus omitted?",
    "What is the phone number of Margaret Okonkwo?",  # PII in the question: redacted before search and audit
    "When are wards open to visitors?",
    "Where is the visitor car park?",
    "How many days of annual leave per year?",
    "notice period for parental leave",
    "approval threshold for wire transfers",
    "supplier invoice beneficiary account",
    "How often is data protection training?",
    "Who do I report a suspected data breach to?",
)


@dataclass(frozen=True)
class Sample:
    """One authenticated request as the client saw it."""

    kind: str  # "search" | "ask"
    latency_s: float
    status: int  # 0: no HTTP response
    error: str | None
    request_id: str = ""
    audit_id: int = 0
    hits: int = 0


@dataclass(frozen=True)
class Probe:
    """One unauthenticated request."""

    variant: str
    status: int
    error_type: str


@dataclass(frozen=True)
class AuditCheck:
    appended: int
    missing: int
    duplicated: int
    misnumbered: int
    unexpected: int
    chain_ok: bool
    chain_records: int
    chain_problem: str | None


@dataclass(frozen=True)
class Target:
    """The running service and what the clients need to talk to it and to check its answers."""

    base_url: str
    tokens: dict[str, str]  # user name -> signed JWT
    rules: dict[str, AccessRule]  # document uri -> who may see it, from the corpus
    unauthenticated: list[tuple[str, dict[str, str]]]  # (variant, headers) that must get 401
    log: AuditLog
    pid: int = 0  # the service's main process (its workers are its children)


@dataclass
class RunResult:
    run: int
    requests: int
    ok: int
    errors: int
    warmup_errors: int
    warmup_s: float
    load_1m: float  # the machine's 1-minute load average as the timed window opened: >cores means contention
    elapsed_s: float
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    by_kind: dict[str, dict[str, float]]
    no_hits: int
    unauth_sent: int
    unauth_401: int
    audit: AuditCheck
    error_kinds: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_request: float = 0.0  # CPU the service processes used in the window, per answered request
    client_cpu_ms_per_request: float = 0.0  # CPU this load generator used in the window (same cores)

    @property
    def passed(self) -> bool:
        a = self.audit
        return (self.errors == 0 and self.warmup_errors == 0 and self.unauth_401 == self.unauth_sent
                and a.missing == 0 and a.duplicated == 0 and a.misnumbered == 0 and a.unexpected == 0
                and a.chain_ok)


# --- the service under test ---------------------------------------------------------------------


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def enclave_command() -> str:
    beside = Path(sys.executable).with_name("enclave")
    found = str(beside) if beside.exists() else shutil.which("enclave")
    if found is None:
        raise SystemExit("the `enclave` command is not installed (run `make install`)")
    return found


def service_env(home: Path, jwt_key: str, policy: str) -> dict[str, str]:
    env = {**os.environ, "ENCLAVE_HOME": str(home), "ENCLAVE_JWT_KEY": jwt_key, "ENCLAVE_POLICY": policy}
    # A fresh home means its own SQLite catalog and audit log, whatever the caller's environment names;
    # identity comes from tokens only, so the header probes must get 401.
    for name in ("ENCLAVE_DATABASE_URL", "ENCLAVE_AUDIT_DATABASE_URL", "ENCLAVE_TRUSTED_HEADER_MODE"):
        env.pop(name, None)
    return env


def ingest(corpus: Path, env: dict[str, str], policy: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603  # fixed argv, our own command
        [enclave_command(), "ingest", str(corpus), "--source", "sample", "--policy", policy, "--no-progress"],
        env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"enclave ingest failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


@contextmanager
def running_service(env: dict[str, str], log_path: Path, workers: int = 1) -> Iterator[tuple[str, int]]:
    """`enclave serve` on a free loopback port until /healthz answers; (base url, pid); stopped on exit."""
    port = free_loopback_port()
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(  # noqa: S603  # fixed argv, our own command
            [enclave_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
            + (["--workers", str(workers)] if workers != 1 else []),  # older services take no --workers
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"enclave serve exited with {proc.returncode}:\n{tail}")
                try:
                    if httpx.get(base_url + "/healthz", timeout=2, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"enclave serve did not answer /healthz within {STARTUP_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
            yield base_url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class PostgresDatabase:
    """A fresh database on the server ``admin_url`` points at, and an app role to serve it as; dropped after."""

    app_role = "enclave_load_app"

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        self.name = f"enclave_load_{secrets.token_hex(5)}"
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": self.app_role}).first() is None:
                conn.execute(text(f"CREATE ROLE {self.app_role} LOGIN"))
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        url = make_url(admin_url).set(database=self.name)
        self.owner_url = url.render_as_string(hide_password=False)
        self.app_url = url.set(username=self.app_role, password=None).render_as_string(hide_password=False)

    def drop(self) -> None:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def upgrade_db(env: dict[str, str], app_role: str) -> None:
    done = subprocess.run([enclave_command(), "db", "upgrade", "--app-role", app_role],  # noqa: S603  # fixed argv
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"enclave db upgrade failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (Linux /proc; 0 where unreadable)."""
    if pid <= 0:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


# --- clients ------------------------------------------------------------------------------------


class LoadClient:
    """Authenticated requests against one service, checked against the corpus's access rules."""

    def __init__(self, http: httpx.AsyncClient, tokens: dict[str, str], rules: dict[str, AccessRule]) -> None:
        self.http = http
        self.tokens = tokens
        self.rules = rules

    async def request(self, kind: str, user: User, question: str) -> Sample:
        path, timeout = ("/v1/ask", ASK_TIMEOUT_S) if kind == "ask" else ("/v1/search", SEARCH_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {self.tokens[user.name]}"}
        started = time.perf_counter()
        try:
            reply = await self.http.post(path, json={"question": question}, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return Sample(kind, time.perf_counter() - started, 0, type(exc).__name__)
        latency = time.perf_counter() - started
        if reply.status_code != 200:
            return Sample(kind, latency, reply.status_code, f"HTTP {reply.status_code}")
        body = reply.json()
        uris = [h["source_uri"] for h in body.get("hits", body.get("citations", []))]
        denied = [u for u in uris if u not in self.rules or not self.rules[u].admits(user.groups)]
        error = f"access violation ({len(denied)} documents)" if denied else None
        if reply.headers.get("x-request-id") != body["request_id"]:
            error = error or "x-request-id differs from the audited request_id"
        return Sample(kind, latency, 200, error, body["request_id"], int(body["audit_id"]), len(uris))

    async def closed_loop(self, rng: random.Random, deadline: float, ask_share: float) -> list[Sample]:
        samples: list[Sample] = []
        while time.perf_counter() < deadline:
            kind = "ask" if rng.random() < ask_share else "search"
            samples.append(await self.request(kind, rng.choice(USERS), rng.choice(QUESTIONS)))
        return samples


def unauthenticated_headers(settings: Settings) -> list[tuple[str, dict[str, str]]]:
    wrong_key = Settings(home=settings.home, jwt_key=SecretStr(secrets.token_urlsafe(48)))
    expired = jwt.encode({"sub": "onc1", "groups": ["oncology"], "aud": settings.jwt_audience, "exp": 1},
                         settings.jwt_key.get_secret_value(), algorithm=settings.jwt_algorithm)
    return [
        ("no token", {}),
        ("malformed token", {"Authorization": "Bearer not-a-jwt"}),
        ("wrong signing key", {"Authorization": f"Bearer {issue_token(wrong_key, 'onc1', ['oncology'])}"}),
        ("expired token", {"Authorization": f"Bearer {expired}"}),
        ("identity headers only", {"x-enclave-user": "onc1", "x-enclave-groups": "oncology"}),
    ]


async def unauthenticated_probes(http: httpx.AsyncClient, variants: list[tuple[str, dict[str, str]]],
                                 count: int, window_s: float) -> list[Probe]:
    """``count`` unauthenticated requests spread evenly over the timed window."""
    probes: list[Probe] = []
    for i in range(count):
        await asyncio.sleep(window_s / (count + 1))
        name, headers = variants[i % len(variants)]
        path = "/v1/ask" if i % 2 else "/v1/search"
        try:
            reply = await http.post(path, json={"question": QUESTIONS[i % len(QUESTIONS)]}, headers=headers,
                                    timeout=SEARCH_TIMEOUT_S)
        except httpx.HTTPError:
            probes.append(Probe(name, 0, ""))
            continue
        error_type = reply.json().get("error", {}).get("type", "") if reply.status_code == 401 else ""
        probes.append(Probe(name, reply.status_code, error_type))
    return probes


# --- audit --------------------------------------------------------------------------------------


def check_audit(log: AuditLog, head_before: int, ok: list[Sample]) -> AuditCheck:
    """Match the records appended since ``head_before`` with the successful responses, then verify."""
    seqs_by_request: dict[str, list[int]] = {}
    appended = 0
    for rec in log.records():
        if rec.seq > head_before:
            appended += 1
            seqs_by_request.setdefault(rec.body["request_id"], []).append(rec.seq)
    answered = {s.request_id for s in ok}
    report = log.verify()
    return AuditCheck(
        appended=appended,
        missing=sum(1 for s in ok if s.request_id not in seqs_by_request),
        duplicated=sum(len(seqs) - 1 for seqs in seqs_by_request.values()),
        misnumbered=sum(1 for s in ok if seqs_by_request.get(s.request_id, [s.audit_id]) != [s.audit_id]),
        unexpected=sum(len(seqs) for rid, seqs in seqs_by_request.items() if rid not in answered),
        chain_ok=report.ok, chain_records=report.records, chain_problem=report.problem,
    )


# --- one run ------------------------------------------------------------------------------------


async def run_once(run: int, target: Target, args: argparse.Namespace) -> RunResult:
    limits = httpx.Limits(max_connections=args.clients + 2, max_keepalive_connections=args.clients + 2)
    async with httpx.AsyncClient(base_url=target.base_url, limits=limits, trust_env=False) as http:
        client = LoadClient(http, target.tokens, target.rules)
        rng = random.Random(args.seed * 1000 + run)
        warmup: list[Sample] = []
        warmup_started = time.perf_counter()
        if args.ask_share > 0:  # the first ask loads the model
            warmup.append(await client.request("ask", USERS[0], QUESTIONS[0]))
        warmup += await asyncio.gather(*(client.request("search", rng.choice(USERS), rng.choice(QUESTIONS))
                                         for _ in range(args.clients * args.warmup)))
        head_before = target.log.head().seq
        load_1m = os.getloadavg()[0]
        cpu_before = process_tree_cpu_s(target.pid)
        client_cpu_before = time.process_time()
        started = time.perf_counter()
        warmup_s = started - warmup_started
        deadline = started + args.seconds
        probing = asyncio.create_task(unauthenticated_probes(http, target.unauthenticated, args.unauth,
                                                             args.seconds))
        per_client = await asyncio.gather(*(client.closed_loop(random.Random(rng.random()), deadline, args.ask_share)
                                            for _ in range(args.clients)))
        probed = await probing
        elapsed = time.perf_counter() - started
        cpu_s = process_tree_cpu_s(target.pid) - cpu_before
        client_cpu_s = time.process_time() - client_cpu_before
    samples = [s for loop in per_client for s in loop]
    ok = [s for s in samples if s.error is None]
    # an answered request is audited even when the client then rejects it (an access violation)
    audited = [s for s in samples if s.status == 200]
    audit = check_audit(target.log, head_before, audited)
    p50, p99 = percentiles_ms([s.latency_s for s in ok])
    by_kind: dict[str, dict[str, float]] = {}
    for kind in sorted({s.kind for s in samples}):
        kp50, kp99 = percentiles_ms([s.latency_s for s in ok if s.kind == kind])
        by_kind[kind] = {"ok": sum(1 for s in ok if s.kind == kind), "p50_ms": kp50, "p99_ms": kp99}
    return RunResult(
        run=run, requests=len(samples), ok=len(ok), errors=len(samples) - len(ok),
        warmup_errors=sum(1 for s in warmup if s.error is not None), warmup_s=warmup_s, load_1m=load_1m,
        elapsed_s=elapsed, throughput_rps=len(ok) / elapsed, p50_ms=p50, p99_ms=p99, by_kind=by_kind,
        no_hits=sum(1 for s in ok if s.hits == 0),
        unauth_sent=len(probed),
        unauth_401=sum(1 for p in probed if p.status == 401 and p.error_type == "unauthenticated"),
        audit=audit, error_kinds=dict(Counter(s.error for s in samples if s.error is not None)),
        cpu_ms_per_request=1000.0 * cpu_s / max(1, len(samples) + len(probed)),
        client_cpu_ms_per_request=1000.0 * client_cpu_s / max(1, len(samples) + len(probed)),
    )


# --- report -------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "memory_gib": round(memory / 2**30, 1), "python": platform.python_version(),
            "torch": installed("torch"), "faiss": installed("faiss-cpu"), "uvicorn": installed("uvicorn")}


MEDIAN_KEYS = ("throughput_rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "client_cpu_ms_per_request")


def print_table(summary: dict[str, Any]) -> None:
    cfg, m = summary["config"], summary["machine"]
    print(f"Query service load test: {cfg['clients']} clients x {cfg['seconds']:g} s, {cfg['runs']} runs, "
          f"ask share {cfg['ask_share']:g}, {cfg['unauth']} unauthenticated probes per run")
    print(f"machine: {m['platform']}, {m['cpu_count']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, "
          f"torch {m['torch']} (clients and service on the same machine)")
    print(f"setup: ingest {summary['ingest_s']:.1f} s, service ready in {summary['startup_s']:.1f} s "
          f"({summary['startup_cpu_s']:.1f} CPU s), "
          f"{cfg['workers']} worker(s), catalog and audit on {cfg['database']}, {cfg['pad_chunks']} padding chunks")
    header = (f"{'run':>4} {'requests':>8} {'ok':>6} {'errors':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'401/sent':>8} {'audited':>7} {'missing':>7} {'dup':>4} {'unexp':>5} {'chain':>6} {'load':>5} "
              f"{'cpu ms/req':>10} {'client ms':>9}")
    print(header)
    print("-" * len(header))
    for r in summary["runs"]:
        a = r["audit"]
        chain = "ok" if a["chain_ok"] else "BROKEN"
        print(f"{r['run']:>4} {r['requests']:>8} {r['ok']:>6} {r['errors']:>6} {r['throughput_rps']:>7.1f} "
              f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['unauth_401']:>4}/{r['unauth_sent']:<3} "
              f"{a['appended']:>7} {a['missing']:>7} {a['duplicated']:>4} {a['unexpected']:>5} {chain:>6} "
              f"{r['load_1m']:>5.1f} {r['cpu_ms_per_request']:>10.1f} {r.get('client_cpu_ms_per_request', 0.0):>9.1f}")
    med = summary["median"]
    print(f"{'med':>4} {'':>8} {'':>6} {'':>6} {med['throughput_rps']:>7.1f} {med['p50_ms']:>8.1f} "
          f"{med['p99_ms']:>8.1f} {'':>8} {'':>7} {'':>7} {'':>4} {'':>5} {'':>6} {'':>5} "
          f"{med['cpu_ms_per_request']:>10.1f}")
    print("answered with no documents (public-only users, or nothing matched): "
          + ", ".join(f"run {r['run']} {r['no_hits']}/{r['ok']}" for r in summary["runs"]))
    for r in summary["runs"]:
        if len(r["by_kind"]) > 1:
            kinds = ", ".join(f"{k}: {v['ok']:.0f} ok, p50 {v['p50_ms']:.0f} ms, p99 {v['p99_ms']:.0f} ms"
                              for k, v in r["by_kind"].items())
            print(f"run {r['run']} by kind: {kinds}")
        if r["error_kinds"]:
            print(f"run {r['run']} errors: {r['error_kinds']}")
        if not r["audit"]["chain_ok"]:
            print(f"run {r['run']} chain: {r['audit']['chain_problem']}")
    for n, sw in summary["sweep"].items():
        m = sw["median"]
        print(f"{n:>3} clients: {m['throughput_rps']:7.1f} req/s, p50 {m['p50_ms']:7.1f} ms, "
              f"p99 {m['p99_ms']:7.1f} ms, {m['cpu_ms_per_request']:5.1f} CPU ms/req, {sw['errors']} errors, "
              + ("all checks pass" if sw["passed"] else "FAILED"))
    print("PASS: no errors, every 401 unaudited, one audit record per answered request, chain verifies"
          if summary["passed"] else "FAIL")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (closed loops)")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed window per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ask-share", type=float, default=0.0, help="share of requests sent to /v1/ask")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up searches per client before each run")
    ap.add_argument("--unauth", type=int, default=10, help="unauthenticated requests per run")
    ap.add_argument("--corpus", type=Path, default=SAMPLE_CORPUS)
    ap.add_argument("--policy", default="hipaa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="service processes (enclave serve --workers)")
    ap.add_argument("--postgres", default="", metavar="ADMIN_URL",
                    help="catalog and audit log in a fresh database on this PostgreSQL server, served as an app role")
    ap.add_argument("--pad-chunks", type=int, default=0, help="synthetic chunks added to the index before serving")
    ap.add_argument("--sweep", default="", metavar="N,N,...",
                    help="after the --clients runs, the same runs at each of these client counts (same service)")
    ap.add_argument("--keep-home", action="store_true", help="keep the temporary ENCLAVE_HOME (prints its path)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args()
    if not 0.0 <= args.ask_share <= 1.0:
        ap.error("--ask-share must lie in [0, 1]")

    rules = {doc.uri: doc.access for doc in FileShareSource(args.corpus).scan() if doc.access is not None}
    home = Path(tempfile.mkdtemp(prefix="enclave-load-"))
    database = PostgresDatabase(args.postgres) if args.postgres else None
    try:
        jwt_key = secrets.token_urlsafe(48)
        env = service_env(home, jwt_key, args.policy)
        if database is not None:
            env["ENCLAVE_DATABASE_URL"] = database.owner_url
        settings = Settings(home=home, jwt_key=SecretStr(jwt_key), database_url=env.get("ENCLAVE_DATABASE_URL", ""))
        tokens = {u.name: issue_token(settings, u.name, list(u.groups), ttl_s=24 * 3600) for u in USERS}
        ingest_s = ingest(args.corpus, env, args.policy)
        print(f"ingested {args.corpus} in {ingest_s:.1f} s", file=sys.stderr)
        if args.pad_chunks:
            from pad_index import pad

            synthetic: dict[str, Any] = {}
            print(f"padded with {args.pad_chunks} synthetic chunks in "
                  f"{pad(settings, args.pad_chunks, rules=synthetic):.1f} s", file=sys.stderr)
            rules.update({uri: AccessRule.from_json(access) for uri, access in synthetic.items()})
        if database is not None:
            # migrations as the owner, then the service connects as the app role
            upgrade_db(env, database.app_role)
            env["ENCLAVE_DATABASE_URL"] = database.app_url
        log = AuditLog(settings.audit_database_url)
        started = time.perf_counter()
        with running_service(env, home / "serve.log", args.workers) as (base_url, pid):
            startup_s = time.perf_counter() - started
            startup_cpu_s = process_tree_cpu_s(pid)  # CPU to readiness: what a quiet machine's wall time nears
            print(f"service ready at {base_url} in {startup_s:.1f} s ({startup_cpu_s:.1f} CPU s)", file=sys.stderr)
            target = Target(base_url, tokens, rules, unauthenticated_headers(settings), log, pid)
            results = []
            for run in range(1, args.runs + 1):
                result = asyncio.run(run_once(run, target, args))
                results.append(result)
                print(f"run {run}: warm-up {result.warmup_s:.1f} s, {result.ok} ok in {result.elapsed_s:.1f} s",
                      file=sys.stderr)
            sweep: dict[int, list[RunResult]] = {}
            for clients in (int(c) for c in args.sweep.split(",") if c.strip()):
                swept = argparse.Namespace(**{**vars(args), "clients": clients})
                sweep[clients] = [asyncio.run(run_once(run, target, swept)) for run in range(1, args.runs + 1)]
                print(f"{clients} clients: {[round(r.throughput_rps, 1) for r in sweep[clients]]} req/s",
                      file=sys.stderr)
        log.dispose()
    finally:
        if database is not None:
            database.drop()
        if args.keep_home:
            print(f"ENCLAVE_HOME kept at {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    summary = {
        "config": {"clients": args.clients, "seconds": args.seconds, "runs": args.runs, "ask_share": args.ask_share,
                   "warmup_per_client": args.warmup, "unauth": args.unauth, "corpus": str(args.corpus),
                   "policy": args.policy, "users": len(USERS), "questions": len(QUESTIONS),
                   "workers": args.workers, "database": "postgresql" if args.postgres else "sqlite",
                   "pad_chunks": args.pad_chunks},
        "machine": machine_info(), "ingest_s": ingest_s, "startup_s": startup_s, "startup_cpu_s": startup_cpu_s,
        "runs": [{**asdict(r), "passed": r.passed} for r in results],
        "median": {key: statistics.median(getattr(r, key) for r in results)
                   for key in MEDIAN_KEYS},
        "sweep": {n: {"median": {key: statistics.median(getattr(r, key) for r in rs)
                                 for key in MEDIAN_KEYS},
                      "errors": sum(r.errors for r in rs), "passed": all(r.passed for r in rs)}
                  for n, rs in sweep.items()},
        "passed": all(r.passed for r in results) and all(r.passed for rs in sweep.values() for r in rs),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
