"""Fault injection: the misbehaviour a relay must survive, drawn from a seeded random stream.

Faults apply only to ``/api/v1`` requests, never to ``/_sim/``. A 429 or 5xx is decided before
the handler runs, so such a request has no side effect (no task, no charge). They can be set at
start (``SimConfig``) and changed while running (``PUT /_sim/faults``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay.sim.wire import ApiError

Share = Annotated[float, Field(ge=0.0, le=1.0)]
"""A probability: the share of requests (or streams, or tasks) a fault hits."""

SERVER_ERROR_STATUSES = (500, 502, 503)
_SERVER_ERROR_CODES = {500: "internal_error", 502: "bad_gateway", 503: "service_unavailable"}


class FaultConfig(BaseModel):
    """The fault settings that can change at run time; ``PUT /_sim/faults`` answers this."""

    model_config = ConfigDict(extra="forbid")

    failure_rate: Share = 0.0
    rate_429: Share = 0.0
    retry_after_s: int = Field(default=1, ge=0, le=3600)
    rate_5xx: Share = 0.0
    latency_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)
    # Added after the handler ran: the request took effect (a task created and charged), only
    # its answer is late; a client that gives up meanwhile never learns of it.
    reply_delay_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)
    stream_drop_rate: Share = 0.0

    @model_validator(mode="after")
    def _shares_fit(self) -> FaultConfig:
        # One draw decides 429 vs 5xx vs pass, so the configured shares are exact.
        if self.rate_429 + self.rate_5xx > 1.0:
            raise ValueError("rate_429 + rate_5xx must be 1 or less")
        return self


@dataclass(frozen=True)
class Rejection:
    """A request the fault layer answers instead of the handler."""

    status: int
    retry_after_s: int | None

    def to_error(self) -> ApiError:
        headers = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        if self.status == 429:
            return ApiError(429, "rate_limited", "too many requests (simulated)", headers=headers)
        code = _SERVER_ERROR_CODES.get(self.status, "internal_error")
        return ApiError(self.status, code, "upstream error (simulated)", headers=headers)


class FaultInjector:
    """Holds the current ``FaultConfig`` and draws each fault from its own seeded stream."""

    def __init__(self, config: FaultConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng

    @property
    def config(self) -> FaultConfig:
        return self._config

    def update(self, patch: Mapping[str, Any]) -> FaultConfig:
        """Apply a partial change; an invalid one raises ``ValidationError`` and changes nothing."""
        merged = {**self._config.model_dump(), **patch}
        self._config = FaultConfig.model_validate(merged)
        return self._config

    def draw_rejection(self) -> Rejection | None:
        """Whether this ``/api/v1`` request is refused by a 429 or a 5xx before any side effect."""
        cfg = self._config
        if cfg.rate_429 == 0.0 and cfg.rate_5xx == 0.0:
            return None
        roll = self._rng.random()
        if roll < cfg.rate_429:
            return Rejection(429, cfg.retry_after_s)
        if roll < cfg.rate_429 + cfg.rate_5xx:
            status = self._rng.choice(SERVER_ERROR_STATUSES)
            return Rejection(status, cfg.retry_after_s if status == 503 else None)
        return None

    def draw_stream_drop(self) -> bool:
        """Whether this event stream is cut before its terminal event."""
        rate = self._config.stream_drop_rate
        return rate > 0.0 and self._rng.random() < rate

    @property
    def latency_s(self) -> float:
        return self._config.latency_ms / 1000.0

    @property
    def reply_delay_s(self) -> float:
        return self._config.reply_delay_ms / 1000.0
