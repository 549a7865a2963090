"""Retry schedule parsing and jitter, ``Retry-After`` clamping, HTTP outcome classification and
the per-endpoint circuit breaker (on an injected clock)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from relay.models import WebhookDeadLetter
from relay.settings import DEFAULT_WEBHOOK_RETRY_SCHEDULE_S, RelaySettings
from relay.webhooks.breaker import BreakerConfig, BreakerState, CircuitBreaker, EndpointGuards
from relay.webhooks.client import classify_status
from relay.webhooks.schedule import RetrySchedule


def test_schedule_is_parsed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RelaySettings().webhook_retry_schedule == DEFAULT_WEBHOOK_RETRY_SCHEDULE_S
    assert DEFAULT_WEBHOOK_RETRY_SCHEDULE_S == [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    monkeypatch.setenv("RELAY_WEBHOOK_RETRY_SCHEDULE", "0, 0.5,1,1 ,1,2")
    assert RelaySettings().webhook_retry_schedule == [0, 0.5, 1, 1, 1, 2]
    for bad in ("0,-1", "", "0,soon"):
        monkeypatch.setenv("RELAY_WEBHOOK_RETRY_SCHEDULE", bad)
        with pytest.raises(ValidationError):
            RelaySettings()


def test_webhook_settings_defaults_and_derived_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_KAFKA_GROUP_ID", "g1")
    monkeypatch.setenv("RELAY_WEBHOOK_DEFAULT_URL", "https://a.example/h, https://b.example/h")
    s = RelaySettings()
    assert s.webhooks_enabled is True
    assert s.webhook_consumer_group == "g1.webhooks"
    assert s.webhook_dead_letter_topic == "mindvideo.webhooks.dlq"
    assert s.webhook_default_urls == ["https://a.example/h", "https://b.example/h"]
    monkeypatch.setenv("RELAY_WEBHOOK_GROUP_ID", "hooks")
    monkeypatch.setenv("RELAY_WEBHOOK_TIMEOUT_S", "90")
    with pytest.raises(ValidationError, match="LEASE"):
        RelaySettings()
    monkeypatch.setenv("RELAY_WEBHOOK_LEASE_S", "120")
    assert RelaySettings().webhook_consumer_group == "hooks"


def test_jitter_stays_within_twenty_percent() -> None:
    schedule = RetrySchedule([0, 5, 300, 1800], jitter=0.2, rng=random.Random(1))
    assert schedule.max_attempts == 4
    for attempt, base in enumerate([0, 5, 300, 1800]):
        draws = [schedule.delay_before(attempt) for _ in range(500)]
        assert all(d is not None and base * 0.8 <= d <= base * 1.2 for d in draws)
        if base:
            assert max(d or 0 for d in draws) - min(d or 0 for d in draws) > base * 0.3
    assert schedule.delay_before(4) is None


def test_retry_after_is_honoured_and_clamped() -> None:
    schedule = RetrySchedule([0, 1, 1], jitter=0.0, retry_after_max_s=60)
    assert schedule.delay_before(1, retry_after_s=30) == 30
    assert schedule.delay_before(1, retry_after_s=86400) == 60
    assert schedule.delay_before(1, retry_after_s=0.1) == 1
    assert schedule.delay_before(3, retry_after_s=5) is None


@pytest.mark.parametrize(
    ("status", "outcome", "retryable", "healthy"),
    [
        (200, "success", False, True),
        (204, "success", False, True),
        (410, "gone", False, True),
        (301, "http_4xx", True, True),
        (400, "http_4xx", True, True),
        (429, "http_4xx", True, False),
        (500, "http_5xx", True, False),
        (503, "http_5xx", True, False),
    ],
)
def test_status_classification(status: int, outcome: str, retryable: bool, healthy: bool) -> None:
    result = classify_status(status, "7")
    assert result.outcome == outcome
    assert result.retryable is retryable
    assert result.endpoint_healthy is healthy
    assert result.retry_after_s == (7.0 if status in (429, 503) else None)


def _state(breaker: CircuitBreaker) -> BreakerState:
    """Read through a call so mypy does not narrow the state across the breaker's methods."""
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_consecutive_failures_and_half_opens_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        BreakerConfig(consecutive_failures=3, min_requests=100, cooldown_s=30), clock
    )
    for _ in range(2):
        assert breaker.allow()
        breaker.record(False)
    assert _state(breaker) is BreakerState.CLOSED
    breaker.record(True)  # a success resets the streak
    for _ in range(3):
        breaker.record(False)
    assert _state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_in_s() == 30
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow(), "one probe after the cool-down"
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow(), "only one probe at a time"
    clock.now += 10
    assert breaker.retry_in_s() == 20, "the others wait for the probe, at most a cool-down"
    breaker.record(False)
    assert _state(breaker) is BreakerState.OPEN
    clock.now += 30
    assert breaker.allow()
    breaker.record(True)
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.allow()


def test_breaker_opens_on_failure_ratio_in_window() -> None:
    clock = Clock()
    config = BreakerConfig(
        consecutive_failures=100, failure_ratio=0.5, min_requests=10, window_s=60, cooldown_s=5
    )
    breaker = CircuitBreaker(config, clock)
    for i in range(9):
        breaker.record(i % 2 == 0)  # 4 failures of 9: below min_requests anyway
        clock.now += 1
    assert _state(breaker) is BreakerState.CLOSED
    breaker.record(False)  # 5 of 10 failed
    assert _state(breaker) is BreakerState.OPEN
    # Old outcomes leave the window.
    clock.now += 5
    assert breaker.allow()
    breaker.record(True)
    for _ in range(6):
        breaker.record(False)
        clock.now += 100
    assert _state(breaker) is BreakerState.CLOSED, "failures spread beyond the window don't trip"


def test_a_lost_probe_stops_blocking_after_a_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=1, cooldown_s=10), clock)
    breaker.record(False)
    clock.now += 10
    assert breaker.allow()
    assert not breaker.allow()
    clock.now += 10
    assert breaker.allow()


def test_endpoint_guards_isolate_endpoints() -> None:
    clock = Clock()
    guards = EndpointGuards(
        BreakerConfig(consecutive_failures=1), max_in_flight_per_endpoint=2, clock=clock
    )
    guards.acquire("slow")
    guards.acquire("slow")
    assert not guards.has_capacity("slow")
    assert guards.has_capacity("fast")
    guards.breaker("slow").record(False)
    assert guards.open_count() == 1
    assert guards.breaker("fast").allow()
    guards.release("slow")
    assert guards.has_capacity("slow")


def test_dead_letter_headers_round_trip_a_long_endpoint() -> None:
    endpoint = "https://hooks.example/" + "p" * 2000
    letter = WebhookDeadLetter(
        endpoint=endpoint,
        event_id="evt_1",
        idempotency_key="k",
        type="task.succeeded",
        reason="exhausted",
        attempts=8,
        last_status=503,
        last_error="x" * 5000,
        published_ms=1,
    )
    back = WebhookDeadLetter.from_record(b"k", letter.headers())
    assert back.endpoint == endpoint, "replay needs the whole endpoint"
    assert back.last_error == "x" * 1000
    assert back.model_dump(exclude={"last_error"}) == letter.model_dump(exclude={"last_error"})


def test_breaker_window_totals_survive_busy_seconds_and_eviction() -> None:
    clock = Clock()
    config = BreakerConfig(
        consecutive_failures=100, failure_ratio=0.5, min_requests=10, window_s=60, cooldown_s=5
    )
    breaker = CircuitBreaker(config, clock)
    for _ in range(10_000):  # one busy second of successes
        breaker.record(True)
    for _ in range(20):
        breaker.record(False)
    assert _state(breaker) is BreakerState.CLOSED, "20 failures of 10,020 is a healthy endpoint"
    clock.now += 61  # the busy second leaves the window
    for _ in range(10):
        breaker.record(False)
    assert _state(breaker) is BreakerState.OPEN, "now 10 of 10 failed in the window"
