"""Operator settings, read once from ``RELAY_*`` environment variables (DESIGN §7) and passed in."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]
CommaFloats = Annotated[list[float], NoDecode]

DEFAULT_WEBHOOK_RETRY_SCHEDULE_S = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class RelaySettings(BaseSettings):
    """Everything an operator can set. Secrets are ``SecretStr`` so they never print."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

    # Kafka
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_group_id: str = "mindvideo-relay"
    kafka_group_instance_id: str | None = None
    kafka_enable_idempotence: bool = True
    kafka_session_timeout_ms: int = Field(default=10_000, ge=6_000)
    kafka_heartbeat_interval_ms: int = Field(default=2_000, ge=100)
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

    # HTTP and process
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    log_level: str = "INFO"
    log_format: str = "auto"

    _split_lists = field_validator(
        "webhook_secrets", "webhook_allowed_hosts", "webhook_retry_schedule", mode="before"
    )(_split)

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec(cls, value: list[str]) -> list[str]:
        for secret in value:
            if not secret.startswith("whsec_"):
                raise ValueError("each webhook secret must start with 'whsec_'")
        return value

    @field_validator("mindvideo_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def redacted(self) -> dict[str, object]:
        """The settings as a dict fit for a log line: secrets masked."""
        data = self.model_dump()
        data["mindvideo_api_key"] = "***" if self.mindvideo_api_key.get_secret_value() else ""
        data["webhook_secrets"] = [f"whsec_***({i})" for i in range(len(self.webhook_secrets))]
        return data
