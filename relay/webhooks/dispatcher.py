"""The webhook dispatcher of one relay process: intake from the results topic plus the delivery
worker, built from settings and started and stopped by :class:`relay.service.Relay`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp.abc import AbstractResolver
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from relay.kafka import kafka_client_options
from relay.metrics import RelayMetrics
from relay.redis import RedisClient
from relay.settings import RelaySettings
from relay.topics import create_topics
from relay.webhooks.breaker import BreakerConfig, EndpointGuards
from relay.webhooks.client import WebhookClient
from relay.webhooks.deliveries import DeliveryStore
from relay.webhooks.intake import ResultIntake
from relay.webhooks.schedule import RetrySchedule
from relay.webhooks.signing import WebhookSigner
from relay.webhooks.ssrf import SsrfPolicy
from relay.webhooks.worker import DeliveryWorker

log = logging.getLogger(__name__)

MAX_STOP_GRACE_S = 10.0
INTAKE_STOP_TIMEOUT_S = 1.0


def delivery_store(redis: RedisClient, settings: RelaySettings) -> DeliveryStore:
    return DeliveryStore(
        redis, prefix=settings.redis_key_prefix, done_retention_s=settings.webhook_done_retention_s
    )


class WebhookDispatcher:
    """Delivers every published result to its endpoint(s), signed, with durable retries."""

    def __init__(
        self,
        settings: RelaySettings,
        redis: RedisClient,
        producer: AIOKafkaProducer,
        metrics: RelayMetrics,
        *,
        resolver: AbstractResolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        s = settings
        self._settings = s
        self._client = WebhookClient(
            WebhookSigner(s.webhook_secrets, clock),
            SsrfPolicy(s.webhook_allowed_hosts),
            connect_timeout_s=s.webhook_connect_timeout_s,
            timeout_s=s.webhook_timeout_s,
            max_connections=s.webhook_max_in_flight,
            resolver=resolver,
        )
        store = delivery_store(redis, s)
        breaker = BreakerConfig(
            consecutive_failures=s.webhook_breaker_consecutive_failures,
            failure_ratio=s.webhook_breaker_failure_ratio,
            min_requests=s.webhook_breaker_min_requests,
            window_s=s.webhook_breaker_window_s,
            cooldown_s=s.webhook_breaker_cooldown_s,
        )
        self.worker = DeliveryWorker(
            store,
            self._client,
            EndpointGuards(
                breaker, max_in_flight_per_endpoint=s.webhook_max_in_flight_per_endpoint
            ),
            RetrySchedule(
                s.webhook_retry_schedule,
                jitter=s.webhook_retry_jitter,
                retry_after_max_s=s.webhook_retry_after_max_s,
            ),
            producer,
            metrics,
            dead_letter_topic=s.webhook_dead_letter_topic,
            max_in_flight=s.webhook_max_in_flight,
            lease_s=s.webhook_lease_s,
            poll_interval_s=s.webhook_poll_interval_s,
            clock=clock,
        )
        self._consumer = AIOKafkaConsumer(
            **kafka_client_options(s),
            group_id=s.webhook_consumer_group,
            group_instance_id=s.kafka_group_instance_id,
            client_id=f"{s.kafka_client_id}-webhooks",
            enable_auto_commit=False,
            auto_offset_reset=s.webhook_auto_offset_reset,
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
        )
        self.intake = ResultIntake(
            self._consumer,
            store,
            metrics,
            topic=s.result_topic,
            default_endpoints=s.webhook_default_urls,
            on_scheduled=self.worker.wake,
            clock=clock,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self._settings
        if s.kafka_create_topics:
            await create_topics(
                kafka_client_options(s),
                [s.webhook_dead_letter_topic],
                s.kafka_topic_partitions,
                exact=False,
            )
        await self._client.start()
        self._tasks = [
            asyncio.create_task(self.intake.run(), name="webhook-intake"),
            asyncio.create_task(self.worker.run(), name="webhook-worker"),
        ]
        log.info(
            "webhook dispatcher started",
            extra={
                "group_id": s.webhook_consumer_group,
                "signing_secrets": len(s.webhook_secrets),
                "default_endpoints": len(s.webhook_default_urls),
                "retry_schedule_s": s.webhook_retry_schedule,
            },
        )

    async def wait(self) -> None:
        """Return when the intake or the worker ends: only on stop or on a fatal error."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a fatal error propagates to the caller

    def problem(self) -> str | None:
        """For readiness: why the dispatcher is not working, or ``None``."""
        for task in self._tasks:
            if task.done():
                return f"{task.get_name()} is not running"
        return None

    async def stop(self, grace_s: float) -> None:
        """Stop reading results, let attempts in flight finish within the grace, close."""
        self.intake.stop()
        await self.worker.stop(min(grace_s, MAX_STOP_GRACE_S))
        if self._tasks:
            # The intake may still be joining its group; scheduling is idempotent, so cut it.
            _, pending = await asyncio.wait(self._tasks, timeout=INTAKE_STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._consumer.stop()
        await self._client.stop()
