"""Retry schedule parsing and jitter, ``Retry-After`` clamping, HTTP outcome classification
(breakers are tested in test_breaker.py)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from relay.models import WebhookDeadLetter
from relay.settings import DEFAULT_WEBHOOK_RETRY_SCHEDULE_S, RelaySettings
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
    ("status", "outcome", "retryable", "health"),
    [
        (200, "success", False, "ok"),
        (204, "success", False, "ok"),
        (410, "gone", False, "ok"),
        (301, "http_4xx", True, "ok"),
        (400, "http_4xx", True, "ok"),
        (429, "http_4xx", True, "error"),
        (500, "http_5xx", True, "error"),
        (503, "http_5xx", True, "error"),
    ],
)
def test_status_classification(status: int, outcome: str, retryable: bool, health: str) -> None:
    result = classify_status(status, "7")
    assert result.outcome == outcome
    assert result.retryable is retryable
    assert result.health == health
    assert result.endpoint_healthy is (health == "ok")
    assert result.retry_after_s == (7.0 if status in (429, 503) else None)


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
