"""Attempt history and tombstones round-trip in their compact form, and the status page's
endpoint rows list configured origins first and a bounded, ordered list of others."""

from __future__ import annotations

from typing import Any

from relay.origins import OriginLabels
from relay.webhooks.breaker import BreakerConfig, CircuitBreaker
from relay.webhooks.health import TOP_OTHER_ORIGINS, endpoint_rows
from relay.webhooks.history import (
    MAX_HISTORY,
    AttemptRecord,
    Tombstone,
    append_attempt,
    decode_history,
    decode_tombstones,
    marker,
)
from relay.webhooks.lookup import format_text


def test_history_is_capped_and_round_trips() -> None:
    history = ""
    records = [AttemptRecord(1_764_500_000_000 + i, "http_5xx", 500, i) for i in range(20)]
    for record in records:
        history = append_attempt(history, record)
    assert decode_history(history) == records[-MAX_HISTORY:]
    assert decode_history(history + ",garbage,") == records[-MAX_HISTORY:]
    timeout = AttemptRecord(1_764_500_000_000, "timeout", None, 15_000)
    assert decode_history(append_attempt("", timeout)) == [timeout]


def test_tombstones_of_one_key_are_found_by_their_delivery_id() -> None:
    first = Tombstone(
        "0123abcd",
        "dead_lettered",
        "task.succeeded",
        "https://a.example",
        [AttemptRecord(1_764_500_000_000, "connection_error", None, 3)],
    )
    second = Tombstone("89ef4567", "delivered", "request.rejected", "https://b.example:8443", [])
    value = first.encode() + second.encode()
    assert decode_tombstones(value) == [first, second]
    assert marker("0123abcd" + "f" * 24) in value
    assert marker("0123abce" + "f" * 24) not in value
    assert len(first.encode()) < 60


def test_endpoint_rows_list_configured_origins_then_the_busiest_others() -> None:
    config = BreakerConfig(min_requests=2)
    breakers = {f"https://o{i}.example": CircuitBreaker(config) for i in range(40)}
    breakers["https://o7.example"].record("unanswered", "connection_error: refused")
    breakers["https://o7.example"].record("unanswered", "connection_error: refused")
    pending = {"https://o3.example": 9, "https://only-pending.example": 50}
    labels = OriginLabels(["https://configured.example"])
    rows = endpoint_rows(breakers, {}, pending, labels)
    assert rows[0]["origin"] == "https://configured.example"
    assert rows[0]["configured"] is True
    assert rows[0]["state"] == "closed"
    others = [r["origin"] for r in rows[1:]]
    assert len(others) == TOP_OTHER_ORIGINS
    assert others[:3] == [
        "https://o7.example",
        "https://only-pending.example",
        "https://o3.example",
    ]
    assert rows[1]["state"] == "open"
    assert rows[1]["success_rate"] == 0.0
    assert rows[1]["last_error"] == "connection_error: refused"


def test_lookup_text_names_each_attempt() -> None:
    doc: dict[str, Any] = {
        "key": "order-1",
        "deliveries": [
            {
                "delivery_id": "0123abcd",
                "type": "task.succeeded",
                "origin": "https://a.example",
                "state": "pending",
                "next_due_at": "2026-11-30T12:00:05.000+00:00",
                "attempts_made": 1,
                "attempts": [
                    {
                        "at": "2026-11-30T12:00:00.000+00:00",
                        "status": 503,
                        "outcome": "http_5xx",
                        "latency_ms": 40,
                        "error": "HTTP 503",
                    }
                ],
            }
        ],
    }
    text = format_text(doc)
    assert text.startswith("key order-1: 1 deliveries in Redis\n")
    doc["redis"] = {"address": "redis://***@redis.internal:6379/2", "prefix": "prod"}
    text = format_text(doc)
    assert text.startswith(
        "key order-1: 1 deliveries in Redis at redis://***@redis.internal:6379/2 (prefix prod)\n"
    ), "which Redis was read: an empty answer from the wrong one is not 'nothing sent'"
    assert "0123abcd task.succeeded -> https://a.example: pending, 1 attempts" in text
    assert "next attempt 2026-11-30T12:00:05.000+00:00" in text
    assert "503 (HTTP 503)  40 ms" in text
