"""Operator settings, read once from ``RELAY_*`` environment variables (DESIGN §7) and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relay.models import decode_secret

CommaList = Annotated[list[str], NoDecode]
CommaFloats = Annotated[list[float], NoDecode]

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

    # Webhooks
    webhook_secrets: CommaList = Field(default_factory=list)
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
    webhook_lease_s: float = Field(default=60.0, gt=0)
    webhook_poll_interval_s: float = Field(default=1.0, gt=0)
    webhook_done_retention_s: int = Field(default=7 * 24 * 3600, ge=60)
    webhook_breaker_consecutive_failures: int = Field(default=5, ge=1)
    webhook_breaker_failure_ratio: float = Field(default=0.7, gt=0, le=1)
    webhook_breaker_min_requests: int = Field(default=10, ge=1)
    webhook_breaker_window_s: float = Field(default=300.0, gt=0)
    webhook_breaker_cooldown_s: float = Field(default=30.0, gt=0)

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
    log_level: str = "INFO"
    log_format: str = "auto"

    _split_lists = field_validator(
        "webhook_secrets", "webhook_allowed_hosts", "webhook_retry_schedule", mode="before"
    )(_split)

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec(cls, value: list[str]) -> list[str]:
        for index, secret in enumerate(value):
            if not secret.startswith("whsec_"):
                raise ValueError("each webhook secret must start with 'whsec_'")
            try:
                decode_secret(secret)
            except ValueError as exc:
                raise ValueError(f"webhook secret #{index + 1}: {exc}") from None
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value or any(delay < 0 for delay in value):
            raise ValueError("the retry schedule needs at least one delay, none negative")
        return value

    @model_validator(mode="after")
    def _lease_outlives_attempt(self) -> RelaySettings:
        if self.webhook_lease_s <= self.webhook_timeout_s:
            raise ValueError("RELAY_WEBHOOK_LEASE_S must be longer than RELAY_WEBHOOK_TIMEOUT_S")
        return self

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
        return value.rstrip("/")

    def redacted(self) -> dict[str, object]:
        """The settings as a dict fit for a log line: secrets masked."""
        data = self.model_dump()
        data["mindvideo_api_key"] = "***" if self.mindvideo_api_key.get_secret_value() else ""
        data["webhook_secrets"] = [f"whsec_***({i})" for i in range(len(self.webhook_secrets))]
        data["http_token"] = "***" if self.http_token else None
        data["redis_url"] = _without_password(self.redis_url)
        data["kafka_sasl_password"] = "***" if self.kafka_sasl_password else None
        data["redis_sentinel_password"] = "***" if self.redis_sentinel_password else None
        return data


def _without_password(url: str) -> str:
    """``redis://user:secret@host`` → ``redis://user:***@host``: a URL may carry a password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
