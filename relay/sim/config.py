"""Settings of the MindVideo simulator, read once and passed in (flags and env live in ``cli``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from relay.schemas import SEEDANCE_4_0
from relay.sim.faults import FaultConfig, Share

DEFAULT_API_KEY = "mv_test_local"
DEFAULT_PORT = 8090
DEFAULT_KEEPALIVE_S = 15.0
SEEDANCE_2K_IMAGE_USD = Decimal("0.0252")


class DurationRange(BaseModel):
    """A duration in seconds, fixed (``3``) or drawn uniformly from a range (``"2-8"``)."""

    model_config = ConfigDict(frozen=True)

    min_s: float = Field(ge=0.0)
    max_s: float = Field(ge=0.0)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a duration must be a number or a range like '2-8'")
        if isinstance(value, int | float):
            return {"min_s": value, "max_s": value}
        if isinstance(value, str):
            low, sep, high = value.strip().partition("-")
            try:
                lo = float(low)
                hi = float(high) if sep else lo
            except ValueError as exc:
                raise ValueError(f"not a duration or range of seconds: {value!r}") from exc
            return {"min_s": lo, "max_s": hi}
        if isinstance(value, Sequence) and len(value) == 2:
            return {"min_s": value[0], "max_s": value[1]}
        return value

    @model_validator(mode="after")
    def _ordered(self) -> DurationRange:
        if self.max_s < self.min_s:
            raise ValueError("a range must be written low-high")
        return self

    @model_serializer
    def _as_text(self) -> str:
        return str(self)

    def __str__(self) -> str:
        if self.min_s == self.max_s:
            return f"{self.min_s:g}"
        return f"{self.min_s:g}-{self.max_s:g}"

    def draw(self, rng: random.Random) -> float:
        """One duration: the fixed value, or uniform within the range."""
        if self.min_s == self.max_s:
            return self.min_s
        return rng.uniform(self.min_s, self.max_s)


def _default_models() -> dict[str, Decimal]:
    return {SEEDANCE_4_0: SEEDANCE_2K_IMAGE_USD}


class SimConfig(BaseModel):
    """Everything the simulator can be told at start.

    ``models`` maps each known slug to its price per 2K image (1K is half, 4K double).
    ``public_base_url`` replaces the request's scheme and host in output image URLs.
    ``seed`` makes the timeline, outcomes and faults reproducible; ``None`` seeds from the OS.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=lambda: [DEFAULT_API_KEY])
    queued_s: DurationRange = DurationRange(min_s=1.0, max_s=1.0)
    processing_s: DurationRange = DurationRange(min_s=2.0, max_s=8.0)
    failure_rate: Share = 0.0
    rate_429: Share = 0.0
    retry_after_s: int = Field(default=1, ge=0, le=3600)
    rate_5xx: Share = 0.0
    latency_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)
    stream_drop_rate: Share = 0.0
    keepalive_s: float = Field(default=DEFAULT_KEEPALIVE_S, gt=0.0)
    seed: int | None = None
    models: dict[str, Decimal] = Field(default_factory=_default_models)
    public_base_url: str | None = None

    def fault_config(self) -> FaultConfig:
        """The start-time value of the run-time adjustable faults."""
        return FaultConfig(
            failure_rate=self.failure_rate,
            rate_429=self.rate_429,
            retry_after_s=self.retry_after_s,
            rate_5xx=self.rate_5xx,
            latency_ms=self.latency_ms,
            stream_drop_rate=self.stream_drop_rate,
        )
