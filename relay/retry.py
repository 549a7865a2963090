"""One retry policy for the whole relay: jittered backoff, a bound, and a metric.

Three places retry, and all three use ``RetryPolicy``: the MindVideo client (a few attempts per
call), the request lifecycle (a step after an outage or an unexpected error) and the consumer
(offset commits). What is retried for how long is the same rule everywhere:

- an **outage** (MindVideo unreachable, 5xx, 429; Redis or Kafka unreachable) is retried for as
  long as it lasts when the policy says ``outages_unbounded`` (the lifecycle, the consumer): it
  is nobody's fault and it ends; a request held by it is never rejected;
- **anything else** is retried up to ``max_attempts`` tries in all, then the caller gives up
  (the lifecycle dead-letters the record with reason ``internal_error``).

Every wait is counted in ``relay_retries_total{scope, reason}``; both labels come from closed
sets (``SCOPES`` and ``retry_reason``), never from a message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka.errors import KafkaError
from prometheus_client import Counter
from redis.exceptions import RedisError

from relay.backoff import Backoff
from relay.exceptions import OperatorError, RetryableError

Sleep = Callable[[float], Awaitable[None]]

SCOPES = ("mindvideo", "lifecycle", "consumer")
# Outages: retried for as long as they last where the policy allows it.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    RetryableError,
    RedisError,
    KafkaError,
    ConnectionError,
    TimeoutError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means a dependency is unavailable (not that something is wrong)."""
    return isinstance(exc, OUTAGE_ERRORS)


def retry_reason(exc: BaseException) -> str:
    """The metric label for why a retry happens: a short word from a closed set."""
    if isinstance(exc, RetryableError):
        return f"mindvideo_{exc.reason}"
    if isinstance(exc, RedisError):
        return "redis"
    if isinstance(exc, KafkaError):
        return "kafka"
    if isinstance(exc, ConnectionError | TimeoutError):
        return "network"
    if isinstance(exc, OperatorError):
        return "credentials"
    return "internal"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again after a failure, how long to wait first, and the count of it.

    ``attempt`` is the number of tries made so far (1 after the first failure).
    """

    backoff: Backoff
    counter: Counter
    scope: str
    max_attempts: int
    outages_unbounded: bool
    sleep: Sleep = asyncio.sleep

    def allows(self, attempt: int, exc: BaseException) -> bool:
        """Whether another try may follow ``attempt`` failed tries, the last raising ``exc``."""
        if self.outages_unbounded and is_outage(exc):
            return True
        return attempt < self.max_attempts

    def delay_s(self, attempt: int, exc: BaseException) -> float:
        """The jittered wait before the next try; a server's ``Retry-After`` is honoured."""
        retry_after = exc.retry_after_s if isinstance(exc, RetryableError) else None
        return self.backoff.delay_s(attempt, retry_after)

    async def pause(self, attempt: int, exc: BaseException) -> float:
        """Count the retry, then wait before it; returns the wait in seconds."""
        delay = self.delay_s(attempt, exc)
        self.counter.labels(self.scope, retry_reason(exc)).inc()
        await self.sleep(delay)
        return delay
