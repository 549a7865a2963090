"""The webhook dispatcher of one relay process: intake from the results topic plus the delivery
worker, built from settings and started and stopped by :class:`relay.service.Relay`."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp.abc import AbstractResolver
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from relay.kafka import kafka_client_options
from relay.metrics import RelayMetrics
from relay.origins import OriginLabels, origin_of
from relay.redis import RedisClient
from relay.settings import RelaySettings
from relay.topics import create_topics
from relay.tracing.spans import NO_TRACING, Tracing
from relay.webhooks.admission import EndpointAdmission
from relay.webhooks.breaker import BreakerConfig, BreakerState, EndpointGuards
from relay.webhooks.client import WebhookClient
from relay.webhooks.deliveries import store_from_settings
from relay.webhooks.direct import DirectDelivery
from relay.webhooks.events import OperationalEvents
from relay.webhooks.finisher import DeliveryFinisher
from relay.webhooks.health import endpoint_rows
from relay.webhooks.intake import ResultIntake
from relay.webhooks.lookup import lookup_key
from relay.webhooks.ratelimit import RateLimiter, RateLimits
from relay.webhooks.schedule import RetrySchedule
from relay.webhooks.signing import WebhookSigner
from relay.webhooks.ssrf import SsrfPolicy
from relay.webhooks.worker import DeliveryWorker

log = logging.getLogger(__name__)

MAX_STOP_GRACE_S = 10.0
INTAKE_STOP_TIMEOUT_S = 1.0
MAX_CONCURRENT_LOOKUPS = 2


def breaker_config(s: RelaySettings) -> BreakerConfig:
    return BreakerConfig(
        unanswered_ratio=s.webhook_breaker_unanswered_ratio,
        min_requests=s.webhook_breaker_min_requests,
        window_s=s.webhook_breaker_window_s,
        no_success_s=s.webhook_breaker_no_success_s,
        cooldown_s=s.webhook_breaker_cooldown_s,
        max_cooldown_s=s.webhook_breaker_max_cooldown_s,
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
        tracing: Tracing = NO_TRACING,
    ) -> None:
        s = settings
        self._settings = s
        self._metrics = metrics
        self._client = WebhookClient(
            WebhookSigner([x.get_secret_value() for x in s.webhook_secrets], clock),
            SsrfPolicy(s.webhook_allowed_hosts),
            connect_timeout_s=s.webhook_connect_timeout_s,
            timeout_s=s.webhook_timeout_s,
            max_connections=s.webhook_max_in_flight,
            resolver=resolver,
        )
        self.store = store_from_settings(redis, s)
        self.labels = OriginLabels(s.webhook_configured_origins)
        self.events = OperationalEvents(
            producer,
            metrics,
            topic=s.webhook_events_topic,
            source=f"{s.kafka_client_id}@{socket.gethostname()}",
        )
        self.guards = EndpointGuards(
            breaker_config(s),
            max_in_flight_per_endpoint=s.webhook_max_in_flight_per_endpoint,
            listener=self._circuit_changed,
        )
        limits = RateLimits.from_setting(s.webhook_rate_limits)
        limiter = None
        if limits.by_origin or limits.default is not None:
            limiter = RateLimiter(redis, prefix=s.redis_key_prefix, limits=limits)
        finisher = DeliveryFinisher(
            self.store,
            RetrySchedule(
                s.webhook_retry_schedule,
                jitter=s.webhook_retry_jitter,
                retry_after_max_s=s.webhook_retry_after_max_s,
            ),
            producer,
            metrics,
            self.events,
            dead_letter_topic=s.webhook_dead_letter_topic,
            clock=clock,
        )
        self.worker = DeliveryWorker(
            self.store,
            self._client,
            EndpointAdmission(
                self.guards,
                limiter,
                max_waiting=s.webhook_max_in_flight_per_endpoint,
                max_unproven=s.webhook_unproven_in_flight,
            ),
            finisher,
            metrics,
            self.labels,
            max_in_flight=s.webhook_max_in_flight,
            lease_s=s.webhook_lease_s,
            poll_interval_s=s.webhook_poll_interval_s,
            clock=clock,
            tracing=tracing,
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
        # The fast path, used only when the request pipeline publishes in this process
        # (``relay.service`` wires it to the publisher for RELAY_ROLE=all).
        self.direct = DirectDelivery(
            self.store,
            self.worker,
            metrics,
            default_endpoints=s.webhook_default_urls,
            lease_s=s.webhook_lease_s,
            paced=lambda endpoint: limits.rate_for(origin_of(endpoint)) is not None,
            clock=clock,
        )
        self.intake = ResultIntake(
            self._consumer,
            self.store,
            metrics,
            topic=s.result_topic,
            default_endpoints=s.webhook_default_urls,
            on_scheduled=self.worker.wake,
            direct=self.direct,
            clock=clock,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._events_task: asyncio.Task[None] | None = None
        self._lookups = asyncio.Semaphore(MAX_CONCURRENT_LOOKUPS)

    def _circuit_changed(
        self, origin: str, old: BreakerState, new: BreakerState, reason: str
    ) -> None:
        label = self.labels(origin)
        self._metrics.webhook_circuit_transitions.labels(label, new.value).inc()
        cooldown_s = self.guards.breaker(origin).cooldown_s
        log.log(
            logging.WARNING if new is BreakerState.OPEN else logging.INFO,
            "webhook circuit %s",
            new.value,
            extra={"origin": origin, "from": old.value, "reason": reason, "cooldown_s": cooldown_s},
        )
        self.events.circuit_changed(origin, new, reason, cooldown_s)

    async def endpoints(self) -> list[dict[str, Any]]:
        """The status page's endpoint rows (pending counts as the worker last read them)."""
        pending = self.worker.pending_by_origin
        breakers = self.guards.known()
        in_flight = {o: self.guards.in_flight(o) for o in breakers}
        return endpoint_rows(breakers, in_flight, pending, self.labels)

    async def lookup(self, key: str, dead_letters: bool = True) -> dict[str, Any]:
        """Every attempt of every delivery of ``key`` (Redis and the dead-letter topic)."""
        async with self._lookups:
            return await lookup_key(self._settings, self.store, key, dead_letters=dead_letters)

    async def start(self) -> None:
        s = self._settings
        if s.kafka_create_topics:
            await create_topics(
                kafka_client_options(s),
                [t for t in (s.webhook_dead_letter_topic, s.webhook_events_topic) if t],
                s.kafka_topic_partitions,
                exact=False,
            )
        await self._client.start()
        self._tasks = [
            asyncio.create_task(self.intake.run(), name="webhook-intake"),
            asyncio.create_task(self.worker.run(), name="webhook-worker"),
        ]
        self._events_task = asyncio.create_task(self.events.run(), name="webhook-events")
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
        await self.direct.stop()
        await self.worker.stop(min(grace_s, MAX_STOP_GRACE_S))
        if self._tasks:
            # The intake may still be joining its group; scheduling is idempotent, so cut it.
            _, pending = await asyncio.wait(self._tasks, timeout=INTAKE_STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._consumer.stop()
        await self._client.stop()
        if self._events_task is not None:
            self._events_task.cancel()
            await asyncio.gather(self._events_task, return_exceptions=True)
