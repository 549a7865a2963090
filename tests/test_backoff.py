from __future__ import annotations

import random
from datetime import UTC, datetime

from relay.backoff import Backoff, parse_retry_after


def test_delays_grow_and_are_capped() -> None:
    backoff = Backoff(0.5, 8.0, random.Random(1))
    delays = [backoff.delay_s(n) for n in range(1, 12)]
    assert all(0.25 <= d <= 8.0 for d in delays)
    assert delays[0] <= 0.5
    assert max(delays[6:]) > 4.0, "late attempts reach the cap's half at least"


def test_retry_after_wins_but_is_clamped() -> None:
    backoff = Backoff(0.5, 2.0, random.Random(1))
    assert backoff.delay_s(1, retry_after_s=5.0) == 5.0
    assert backoff.delay_s(1, retry_after_s=10_000.0) == 8.0


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 11, 25, 19, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 25 Nov 2026 19:00:07 GMT", now) == 7.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
