"""The one retry policy: outages for as long as they last where allowed, anything else a bounded
number of times, every wait jittered, capped and counted with bounded labels."""

from __future__ import annotations

import random

from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.backoff import Backoff
from relay.exceptions import OperatorError, RetryableError
from relay.metrics import RelayMetrics
from relay.retry import RetryPolicy, is_outage, retry_reason


def _policy(*, unbounded: bool, sleeps: list[float]) -> tuple[RetryPolicy, RelayMetrics]:
    metrics = RelayMetrics()

    async def sleep(delay_s: float) -> None:
        sleeps.append(delay_s)

    policy = RetryPolicy(
        Backoff(1.0, 8.0, random.Random(1)),
        metrics.retries,
        scope="lifecycle",
        max_attempts=3,
        outages_unbounded=unbounded,
        sleep=sleep,
    )
    return policy, metrics


def test_outages_and_other_errors_have_their_own_bound() -> None:
    unbounded, _ = _policy(unbounded=True, sleeps=[])
    bounded, _ = _policy(unbounded=False, sleeps=[])
    outage = RetryableError("503", reason="http_5xx")
    assert unbounded.allows(10_000, outage)
    assert not bounded.allows(3, outage)
    assert bounded.allows(2, outage)
    assert unbounded.allows(2, ValueError("bug"))
    assert not unbounded.allows(3, ValueError("bug"))


async def test_each_wait_is_jittered_capped_and_counted() -> None:
    sleeps: list[float] = []
    policy, metrics = _policy(unbounded=True, sleeps=sleeps)
    for attempt in range(1, 7):
        await policy.pause(attempt, RedisConnectionError("down"))
    await policy.pause(1, RetryableError("429", retry_after_s=20.0, reason="http_429"))
    assert all(0.5 <= s <= 8.0 for s in sleeps[:6])
    assert sleeps[0] <= 1.0
    assert sleeps[6] == 20.0, "a server's Retry-After wins"
    samples = {
        labels["reason"]: value
        for labels, value in (
            (s.labels, s.value)
            for family in metrics.registry.collect()
            if family.name == "relay_retries"
            for s in family.samples
            if s.name == "relay_retries_total"
        )
    }
    assert samples == {"redis": 6.0, "mindvideo_http_429": 1.0}


def test_reasons_come_from_a_closed_set() -> None:
    assert retry_reason(RetryableError("x", reason="network")) == "mindvideo_network"
    assert retry_reason(RedisConnectionError("x")) == "redis"
    assert retry_reason(KafkaConnectionError()) == "kafka"
    assert retry_reason(ConnectionResetError()) == "network"
    assert retry_reason(OperatorError(401, "x")) == "credentials"
    assert retry_reason(ValueError("a producer-controlled message")) == "internal"
    assert is_outage(TimeoutError())
    assert not is_outage(OperatorError(401, "x"))
