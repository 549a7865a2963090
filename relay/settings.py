"""Operator settings, read once from ``RELAY_*`` environment variables (DESIGN §7) and passed in.

``load_settings()`` is how every command reads them: strictly (an unknown ``RELAY_*`` variable is
an error naming the closest setting), and with every problem turned into one line that names the
variable to change (``relay.settings_errors``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relay.logs import redact_url, url_origin
from relay.models import DEFAULT_MAX_JSON_DEPTH, MAX_MODEL_CHARS, decode_secret
from relay.origins import INVALID_ORIGIN, origin_of, parse_origin
from relay.spend.prices import PriceHints, parse_hints
from relay.spend.rules import BudgetRule, parse_rules

CommaList = Annotated[list[str], NoDecode]
CommaFloats = Annotated[list[float], NoDecode]
CommaSecrets = Annotated[list[SecretStr], NoDecode]
# The values relay.logs.setup_logging understands.
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["auto", "json", "text"]

# Standard Webhooks secrets are 24 to 64 random bytes; a shorter HMAC key is guessable.
MIN_WEBHOOK_SECRET_BYTES = 24
_MAKE_KEY = (
    "python -c \"import base64,os; print('whsec_'+base64.b64encode(os.urandom(32)).decode())\""
)

DEFAULT_WEBHOOK_RETRY_SCHEDULE_S = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


def _upper(value: object) -> object:  # for the production connectivity block
    return value.strip().upper() if isinstance(value, str) else value


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RelaySettings(BaseSettings):
    """Everything an operator can set. Secrets are ``SecretStr`` so they never print."""

    # hide_input_in_errors: a rejected RELAY_WEBHOOK_SECRETS must not be echoed to stderr.
    model_config = SettingsConfigDict(
        env_prefix="RELAY_", extra="ignore", hide_input_in_errors=True
    )

    # Kafka
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_group_id: str = "mindvideo-relay"
    kafka_group_instance_id: str | None = None
    kafka_enable_idempotence: bool = True
    kafka_session_timeout_ms: int = Field(default=10_000, ge=6_000)
    kafka_heartbeat_interval_ms: int = Field(default=2_000, ge=100)
    # Also the rebalance timeout: how long a rebalance waits for members to rejoin. The relay
    # polls every 200 ms whatever its load, so it can be far below Kafka's 5-minute default.
    kafka_max_poll_interval_ms: int = Field(default=60_000, ge=5_000)
    kafka_client_id: str = "mindvideo-relay"
    request_topic: str = "mindvideo.requests"
    result_topic: str = "mindvideo.results"
    dead_letter_topic: str = "mindvideo.requests.dlq"
    commit_interval_s: float = Field(default=1.0, gt=0)
    kafka_create_topics: bool = False
    kafka_topic_partitions: int = Field(default=8, ge=1)
    # Kafka counts as down (/readyz 503, relay_dependency_up 0) after this long without a
    # successful broker round trip (relay/kafkahealth.py).
    kafka_health_timeout_s: float = Field(default=15.0, gt=0)

    # Work in flight
    max_in_flight_per_partition: int = Field(default=500, ge=1)
    max_in_flight: int = Field(default=5_000, ge=1)
    max_record_bytes: int = Field(default=256 * 1024, ge=1024)
    max_metadata_bytes: int = Field(default=4 * 1024, ge=0)

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "mvrelay"
    idempotency_retention_s: int = Field(default=7 * 24 * 3600, ge=60)

    # MindVideo
    mindvideo_base_url: str = "https://api.mindvideo.ai"
    mindvideo_api_key: SecretStr = SecretStr("")
    mindvideo_connect_timeout_s: float = Field(default=5.0, gt=0)
    mindvideo_request_timeout_s: float = Field(default=30.0, gt=0)
    mindvideo_max_connections: int = Field(default=200, ge=1)
    mindvideo_max_attempts: int = Field(default=8, ge=1)
    mindvideo_backoff_base_s: float = Field(default=0.5, gt=0)
    mindvideo_backoff_max_s: float = Field(default=30.0, gt=0)
    mindvideo_poll_interval_s: float = Field(default=2.0, gt=0)
    # Event streams held at once, on a connection pool of their own (a stream holds its
    # connection while its task runs); tasks beyond it poll, all together at most
    # ``mindvideo_max_polls_per_s`` times a second.
    mindvideo_max_streams: int = Field(default=500, ge=1)
    mindvideo_max_polls_per_s: float = Field(default=100.0, gt=0)
    mindvideo_stream_idle_timeout_s: float = Field(default=60.0, gt=0)
    mindvideo_probe_interval_s: float = Field(default=5.0, gt=0)
    task_timeout_s: float = Field(default=6 * 3600.0, gt=0)

    # Request lifecycle (docs/architecture.md, "Request lifecycle"): tries of a record that
    # fails for a reason other than an outage, before it is dead-lettered as internal_error.
    record_max_attempts: int = Field(default=5, ge=1)

    # Webhooks
    webhook_secrets: CommaSecrets = Field(default_factory=list)
    webhook_default_url: str | None = None
    webhook_allowed_hosts: CommaList = Field(default_factory=list)
    webhook_retry_schedule: CommaFloats = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_SCHEDULE_S)
    )
    # Webhook delivery (docs/webhooks.md)
    webhooks_enabled: bool = True
    webhook_group_id: str | None = None
    webhook_dead_letter_topic: str = "mindvideo.webhooks.dlq"
    webhook_auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    webhook_connect_timeout_s: float = Field(default=5.0, gt=0)
    webhook_timeout_s: float = Field(default=15.0, gt=0)
    webhook_retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    webhook_retry_after_max_s: float = Field(default=3600.0, ge=0)
    webhook_max_in_flight: int = Field(default=200, ge=1)
    webhook_max_in_flight_per_endpoint: int = Field(default=10, ge=1)
    # Deliveries to origins without a recent success, all together (None: half of the above).
    webhook_max_unproven_in_flight: int | None = Field(default=None, ge=1)
    webhook_lease_s: float = Field(default=60.0, gt=0)
    webhook_poll_interval_s: float = Field(default=1.0, gt=0)
    webhook_done_retention_s: int = Field(default=7 * 24 * 3600, ge=60)
    # Per-origin breakers (docs/webhooks.md "Circuit breakers"), rate limits, events, shards
    webhook_breaker_unanswered_ratio: float = Field(default=0.8, gt=0, le=1)
    webhook_breaker_min_requests: int = Field(default=10, ge=1)
    webhook_breaker_window_s: float = Field(default=60.0, gt=0)
    webhook_breaker_no_success_s: float = Field(default=60.0, gt=0)
    webhook_breaker_cooldown_s: float = Field(default=30.0, gt=0)
    webhook_breaker_max_cooldown_s: float = Field(default=600.0, gt=0)
    # JSON {"https://hooks.example.com": 20, "default": 50}: requests/s per origin, all processes
    webhook_rate_limits: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    webhook_events_topic: str | None = None
    webhook_shards: int = Field(default=16, ge=1, le=1024)

    # --- Production connectivity (DESIGN §8; README "Connecting to production Kafka and Redis").
    # Kept together on purpose. Checked as a whole by _connectivity below: every combination
    # that cannot work (SASL without credentials, a certificate without its key, an unreadable
    # file, a Sentinel without sentinels) is refused at start, naming the RELAY_ variable.
    role: Literal["all", "requests", "webhooks"] = "all"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True
    redis_mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    redis_sentinels: CommaList = Field(default_factory=list)
    redis_sentinel_master: str | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_ssl_cafile: Path | None = None

    _upper_case = field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")(
        _upper
    )
    _split_sentinels = field_validator("redis_sentinels", mode="before")(_split)

    @model_validator(mode="after")
    def _connectivity(self) -> RelaySettings:
        from relay.kafka import security_problems
        from relay.redis import topology_problems

        problems = [*security_problems(self), *topology_problems(self)]
        # RELAY_WEBHOOKS_ENABLED is the older spelling of RELAY_ROLE: if both are set, they agree.
        disagree = (self.role, self.webhooks_enabled) in (("requests", True), ("webhooks", False))
        if disagree and "webhooks_enabled" in self.model_fields_set:
            problems.append(
                f"RELAY_ROLE={self.role} and RELAY_WEBHOOKS_ENABLED="
                f"{str(self.webhooks_enabled).lower()} disagree; unset RELAY_WEBHOOKS_ENABLED "
                "(RELAY_ROLE replaces it)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        if self.role == "all" and not self.webhooks_enabled:
            self.role = "requests"  # the deprecated spelling of RELAY_ROLE=requests
        # Kept in step with the role, bypassing pydantic so it still reads as not set.
        object.__setattr__(self, "webhooks_enabled", self.role != "requests")
        return self

    # --- end of production connectivity

    # HTTP and process
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # Protects the status page; /healthz, /readyz and /metrics stay open for probes and scrapes.
    http_token: SecretStr | None = None
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"

    # --- Start-up safety (issues 10 and 16): what may only be waived by name ---
    # Run with no webhook signing secret at all: deliveries go out unsigned.
    webhook_allow_unsigned: bool = False
    # Run against a Redis whose maxmemory-policy may evict keys (idempotency records, deliveries).
    redis_allow_eviction: bool = False

    # --- Hostile input and bounded resources (issue 10: decode, metric labels) ---
    # How deeply a request record's objects and arrays may nest (the record itself is level 1).
    # At most 128: a result wraps metadata one level deeper, and pydantic's encoder stops at 255.
    max_json_depth: int = Field(default=DEFAULT_MAX_JSON_DEPTH, ge=2, le=128)
    # Models counted under their own `model` label besides those the relay validates; any other
    # model a producer names is counted as `other`, so producers cannot grow /metrics.
    metrics_models: CommaList = Field(default_factory=list)

    @field_validator("metrics_models", mode="before")
    @classmethod
    def _split_metrics_models(cls, value: object) -> object:
        return _split(value)

    @field_validator("metrics_models")
    @classmethod
    def _model_slugs(cls, value: list[str]) -> list[str]:
        for slug in value:
            if len(slug) > MAX_MODEL_CHARS or not slug.isprintable():
                raise ValueError(
                    f"each model must be printable and at most {MAX_MODEL_CHARS} chars"
                )
        return value

    # --- end of the hostile-input block ---

    # --- Spend budgets and deadlines (issue 13; README "Spend budgets") ---
    # JSON list of {"name", "scope": global|model|metadata.<field>, "window": minute|hour|day|month,
    # "limit_usd"}; empty: no budgets, nothing is reserved.
    budgets: Annotated[list[BudgetRule], NoDecode] = Field(default_factory=list)
    # JSON {"model": {"2K": 0.0252, "*": ...}}: USD per image; else prices are learned.
    price_hints: Annotated[PriceHints, NoDecode] = Field(default_factory=dict)
    budget_mode: Literal["hold", "reject"] = "hold"
    # A reservation whose holder stops refreshing it (a crash before the submit) lapses this
    # long after its last refresh; the next owner of the request takes it over before then.
    budget_reservation_ttl_s: float = Field(default=300.0, ge=1)
    # How often a held request looks for room freed by other relay processes.
    budget_recheck_s: float = Field(default=30.0, gt=0)

    @field_validator("budgets", mode="before")
    @classmethod
    def _budget_rules(cls, value: object) -> object:
        return parse_rules(value)

    @field_validator("price_hints", mode="before")
    @classmethod
    def _price_hints(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError as exc:
                example = '{"model": {"2K": 0.0252}}'
                raise ValueError(f"must be JSON like {example}: {exc}") from None
        return parse_hints(value)

    # --- end of the spend block ---

    _split_lists = field_validator(
        "webhook_secrets", "webhook_allowed_hosts", "webhook_retry_schedule", mode="before"
    )(_split)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_case(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec(cls, value: list[SecretStr]) -> list[SecretStr]:
        for index, item in enumerate(value):
            secret = item.get_secret_value()
            if not secret.startswith("whsec_"):
                raise ValueError(
                    f"webhook secret #{index + 1} does not start with 'whsec_' (a Standard "
                    "Webhooks secret is whsec_ + base64 of 24+ random bytes; make one: "
                    f"{_MAKE_KEY})"
                )
            try:
                key = decode_secret(secret)
            except ValueError as exc:
                raise ValueError(f"webhook secret #{index + 1}: {exc}") from None
            if len(key) < MIN_WEBHOOK_SECRET_BYTES:
                raise ValueError(
                    f"webhook secret #{index + 1} is {len(key)} bytes; a signing secret needs "
                    f"at least {MIN_WEBHOOK_SECRET_BYTES} random bytes (make one: {_MAKE_KEY})"
                )
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value or any(delay < 0 for delay in value):
            raise ValueError("the retry schedule needs at least one delay, none negative")
        return value

    @field_validator("webhook_rate_limits", mode="before")
    @classmethod
    def _rate_limits(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError('not JSON; expected {"https://host": 20, "default": 50}') from None
        if not isinstance(value, dict):
            raise ValueError('expected a JSON object {"https://host": 20, "default": 50}')
        out: dict[str, float] = {}
        for name, rate in value.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
                raise ValueError(f"the rate of {name!r} must be requests per second > 0")
            out[name if name == "default" else parse_origin(name)] = float(rate)
        return out

    @model_validator(mode="after")
    def _lease_outlives_attempt(self) -> RelaySettings:
        if self.webhook_lease_s <= self.webhook_timeout_s:
            raise ValueError("RELAY_WEBHOOK_LEASE_S must be longer than RELAY_WEBHOOK_TIMEOUT_S")
        unproven = self.webhook_max_unproven_in_flight
        if unproven is not None and unproven >= self.webhook_max_in_flight:
            raise ValueError(
                "RELAY_WEBHOOK_MAX_UNPROVEN_IN_FLIGHT must be less than "
                "RELAY_WEBHOOK_MAX_IN_FLIGHT, so that proven origins always have slots"
            )
        if self.webhook_breaker_max_cooldown_s < self.webhook_breaker_cooldown_s:
            raise ValueError(
                "RELAY_WEBHOOK_BREAKER_MAX_COOLDOWN_S must be at least "
                "RELAY_WEBHOOK_BREAKER_COOLDOWN_S"
            )
        return self

    @property
    def webhook_unproven_in_flight(self) -> int:
        """``RELAY_WEBHOOK_MAX_UNPROVEN_IN_FLIGHT``, by default half of the process's slots."""
        if self.webhook_max_unproven_in_flight is not None:
            return self.webhook_max_unproven_in_flight
        return max(1, self.webhook_max_in_flight // 2)

    @property
    def webhook_configured_origins(self) -> list[str]:
        """Origins the operator named: their own metric labels and status rows."""
        named = [origin_of(url) for url in self.webhook_default_urls]
        named += [o for o in self.webhook_rate_limits if o != "default"]
        return [o for o in dict.fromkeys(named) if o != INVALID_ORIGIN]

    @property
    def webhook_default_urls(self) -> list[str]:
        """``RELAY_WEBHOOK_DEFAULT_URL`` split on commas: one delivery per endpoint."""
        return [u.strip() for u in (self.webhook_default_url or "").split(",") if u.strip()]

    @property
    def webhook_consumer_group(self) -> str:
        return self.webhook_group_id or f"{self.kafka_group_id}.webhooks"

    @field_validator("mindvideo_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _workable(self) -> RelaySettings:
        """Values valid alone that cannot work (relay.settings_checks): refused at start."""
        from relay.settings_checks import workable_problems

        problems = workable_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def service_problems(self) -> list[str]:
        """What ``relay run`` needs beyond valid values, each naming the variable to set.

        Checked only for the service: ``relay submit`` and ``relay webhooks replay`` sign
        nothing and call no MindVideo API.
        """
        problems = []
        # A webhooks-only process calls no MindVideo API; a requests-only one signs nothing.
        if self.role != "webhooks" and not self.mindvideo_api_key.get_secret_value().strip():
            problems.append(
                "RELAY_MINDVIDEO_API_KEY is empty: set it to your MindVideo key "
                "(mv_live_… or mv_test_…)"
            )
        if self.role != "requests" and not self.webhook_secrets and not self.webhook_allow_unsigned:
            problems.append(
                "RELAY_WEBHOOK_SECRETS is empty, so webhooks would go out unsigned: set a "
                f"whsec_ secret of at least {MIN_WEBHOOK_SECRET_BYTES} bytes, or "
                "RELAY_WEBHOOK_ALLOW_UNSIGNED=true to deliver unsigned on purpose"
            )
        return problems

    def redacted(self) -> dict[str, object]:
        """Every setting as a dict fit for a log line (logged at DEBUG): secrets masked, URLs
        without their userinfo, webhook endpoints reduced to scheme and host (their path or
        query may carry a token)."""
        data = self.model_dump()
        for name, value in data.items():
            if isinstance(value, SecretStr):
                data[name] = "***" if value.get_secret_value() else ""
            elif isinstance(value, list) and value and isinstance(value[0], SecretStr):
                data[name] = [f"***({i + 1})" for i in range(len(value))]
            elif isinstance(value, str) and "://" in value:
                data[name] = redact_url(value)
        if self.webhook_default_url:
            data["webhook_default_url"] = ",".join(map(url_origin, self.webhook_default_urls))
        return data

    def compact(self) -> dict[str, object]:
        """``redacted()`` limited to the settings given explicitly: the start-up log line."""
        full = self.redacted()
        return {name: full[name] for name in sorted(self.model_fields_set)}
