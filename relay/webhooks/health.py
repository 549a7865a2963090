"""Endpoint health for the status page: one row per origin — breaker state (this process),
success rate over the breaker window (this process), last error, pending deliveries (all
processes) — for every configured origin and the ``TOP_OTHER_ORIGINS`` busiest others."""

from __future__ import annotations

from typing import Any

from relay.origins import OriginLabels
from relay.webhooks.breaker import BreakerState, CircuitBreaker
from relay.webhooks.lookup import iso

TOP_OTHER_ORIGINS = 20


def _row(
    origin: str, breaker: CircuitBreaker | None, pending: int, in_flight: int, configured: bool
) -> dict[str, Any]:
    attempts, ok = breaker.window_counts() if breaker else (0, 0)
    return {
        "origin": origin,
        "configured": configured,
        "state": breaker.state.value if breaker else BreakerState.CLOSED.value,
        "attempts": attempts,
        "success_rate": round(ok / attempts, 3) if attempts else None,
        "last_error": breaker.last_error if breaker else None,
        "last_error_at": iso(breaker.last_error_at) if breaker else None,
        "pending": pending,
        "in_flight": in_flight,
    }


def endpoint_rows(
    breakers: dict[str, CircuitBreaker],
    in_flight: dict[str, int],
    pending: dict[str, int],
    labels: OriginLabels,
) -> list[dict[str, Any]]:
    """Configured origins first (always listed), then the others that matter most: not closed
    first, then by pending deliveries, then by attempts — at most ``TOP_OTHER_ORIGINS``."""
    rows = [
        _row(o, breakers.get(o), pending.get(o, 0), in_flight.get(o, 0), True)
        for o in labels.configured
    ]
    others = (set(breakers) | set(pending)) - set(labels.configured)

    def weight(origin: str) -> tuple[int, int, int]:
        b = breakers.get(origin)
        closed = b is None or b.state is BreakerState.CLOSED
        return (0 if closed else 1, pending.get(origin, 0), b.window_counts()[0] if b else 0)

    top = sorted(others, key=weight, reverse=True)[:TOP_OTHER_ORIGINS]
    rows += [_row(o, breakers.get(o), pending.get(o, 0), in_flight.get(o, 0), False) for o in top]
    return rows
