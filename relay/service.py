"""The relay service: builds its components from settings, starts them, stops them in reverse."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from relay import __version__
from relay.backoff import Backoff
from relay.exceptions import ConfigurationError, OperatorError, RetryableError
from relay.http import build_http_app
from relay.kafka import kafka_client_options, start_kafka_client
from relay.kafkahealth import KafkaHealth
from relay.loopmonitor import LoopLagMonitor
from relay.metrics import RelayMetrics
from relay.pipeline.consumer import RequestConsumer
from relay.pipeline.follower import TaskFollower
from relay.pipeline.gate import CredentialGate
from relay.pipeline.handover import Handover
from relay.pipeline.idempotency import IdempotencyStore
from relay.pipeline.mindvideo import MindVideoClient
from relay.pipeline.outcomes import OutcomeRecorder
from relay.pipeline.processor import RequestProcessor
from relay.pipeline.publisher import (
    BATCH_OVERHEAD_BYTES,
    DEFAULT_MAX_BATCH_BYTES,
    ResultPublisher,
    build_producer,
)
from relay.pipeline.steps import RequestSteps
from relay.redis import RedisClient, redis_client
from relay.retry import RetryPolicy
from relay.settings import RelaySettings
from relay.shutdown import STOP_STEP_KAFKA_DOWN_S, STOP_STEP_TIMEOUT_S, StopBudget
from relay.spend.guard import build_guard
from relay.spend.monitor import BudgetMonitor
from relay.startup import check_eviction_policy
from relay.status import RecentResults
from relay.topics import create_topics, max_message_bytes
from relay.tracing.config import TRACING_OFF, TracingConfig
from relay.tracing.spans import NO_TRACING, Tracing, start_tracing
from relay.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger(__name__)

REDIS_PING_TIMEOUT_S = 1.0
# The readiness write's key lives this long: one short-lived key per process.
REDIS_CHECK_TTL_MS = 10_000
REDIS_MAX_CONNECTIONS = 100
# Commit retries while Kafka is out (the lifecycle's retries follow the MindVideo backoff settings).
COMMIT_BACKOFF_BASE_S = 1.0
COMMIT_BACKOFF_MAX_S = 30.0
DEPENDENCY_CHECK_INTERVAL_S = 5.0
# The consume loop's last fetch (200 ms) ends before it sees the stop.
FETCH_STOP_S = 1.0


class Relay:
    """One relay process: consume → dedupe → submit → follow → publish, plus its HTTP endpoints."""

    def __init__(
        self,
        settings: RelaySettings,
        metrics: RelayMetrics | None = None,
        *,
        tracing: TracingConfig = TRACING_OFF,
    ) -> None:
        """``tracing``: from the ``OTEL_*`` variables (``relay.tracing.config``); off by default."""
        self.settings = settings
        self._tracing_config = tracing
        self.tracing: Tracing = NO_TRACING
        self.metrics = metrics or RelayMetrics(model_labels=settings.metrics_models)
        # The status page's last results, beside the counters they match.
        self.recent = RecentResults()
        self.gate = CredentialGate()
        self.handover = Handover()
        self.http_port: int | None = None
        self._redis: RedisClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stream_session: aiohttp.ClientSession | None = None
        self._consumer: RequestConsumer | None = None
        self._kafka_consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None  # set once started
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._client: MindVideoClient | None = None
        self._webhooks: WebhookDispatcher | None = None
        self._loop_lag = LoopLagMonitor(self.metrics.event_loop_lag)
        self._budgets: BudgetMonitor | None = None
        # Stop steps that timed out or failed: their clients are left half-closed.
        self.abandoned_steps: list[str] = []
        self.kafka_health = KafkaHealth(
            settings.kafka_health_timeout_s,
            bootstrap=settings.kafka_bootstrap_servers,
            on_change=self._kafka_changed,
        )

    async def start(self) -> None:
        """Start what ``RELAY_ROLE`` asks for: the request pipeline, the webhook dispatcher, or
        both (the default); the HTTP endpoints always."""
        s = self.settings
        # The settings given explicitly at INFO (compact); all of them only at DEBUG.
        log.info(
            "starting mindvideo-relay", extra={"version": __version__, "settings": s.compact()}
        )
        log.debug("all settings", extra={"settings": s.redacted()})
        # First: the HTTP client instrumentation applies to sessions created after it.
        self.tracing = start_tracing(
            self._tracing_config,
            service_version=__version__,
            mindvideo_base_url=s.mindvideo_base_url,
        )
        if "webhooks_enabled" in s.model_fields_set:
            log.warning("RELAY_WEBHOOKS_ENABLED is deprecated; RELAY_ROLE replaces it")
        kafka = kafka_client_options(s)
        self._loop_lag.start()
        if s.kafka_create_topics:
            await create_topics(
                kafka,
                [s.request_topic, s.result_topic, s.dead_letter_topic],
                s.kafka_topic_partitions,
                exact=False,
            )
        # A burst waits for a connection instead of failing (redis-py's default pool raises).
        self._redis = redis_client(s, max_connections=REDIS_MAX_CONNECTIONS)
        await self._redis.ping()
        await check_eviction_policy(
            self._redis, s, on_allowed=lambda: self.metrics.redis_eviction_allowed.set(1)
        )
        limits = await max_message_bytes(kafka, [s.result_topic, s.dead_letter_topic])
        producer = build_producer(
            kafka,
            client_id=s.kafka_client_id,
            enable_idempotence=s.kafka_enable_idempotence,
            max_batch_bytes=min([DEFAULT_MAX_BATCH_BYTES, *limits.values()]) - BATCH_OVERHEAD_BYTES,
        )
        try:
            await start_kafka_client(producer, kafka)
        except BaseException:
            await producer.stop()  # releases its client; start() leaves it open on failure
            raise
        self._producer = producer
        self.kafka_health.ok()
        if s.role != "requests":
            # First, and without waiting for a group join: pending retries resume at once.
            self._webhooks = WebhookDispatcher(
                s, self._redis, producer, self.metrics, tracing=self.tracing
            )
            await self._webhooks.start()
        if s.role == "webhooks":
            # No request consumer and no MindVideo client: this process only delivers webhooks.
            assert self._webhooks is not None
            await self._start_http()
            self._tasks = [
                asyncio.create_task(self._webhooks.wait(), name="webhooks"),
                asyncio.create_task(self._watch_dependencies(), name="dependency-health"),
                asyncio.create_task(self._watch_kafka(), name="kafka-health"),
            ]
            log.info("relay started", extra={"http_port": self.http_port, "role": s.role})
            return
        self._session = self._mindvideo_session(s.mindvideo_max_connections)
        # Event streams live as long as their tasks: a pool of their own, so they can never
        # take the connections submits and polls need.
        self._stream_session = self._mindvideo_session(s.mindvideo_max_streams)
        backoff = Backoff(s.mindvideo_backoff_base_s, s.mindvideo_backoff_max_s)
        self._client = MindVideoClient(
            self._session,
            base_url=s.mindvideo_base_url,
            api_key=s.mindvideo_api_key.get_secret_value(),
            metrics=self.metrics,
            backoff=backoff,
            max_attempts=s.mindvideo_max_attempts,
            request_timeout_s=s.mindvideo_request_timeout_s,
            sleep=self.handover.sleep,
            stream_session=self._stream_session,
        )
        follower = TaskFollower(
            self._client,
            self.metrics,
            poll_interval_s=s.mindvideo_poll_interval_s,
            stream_idle_timeout_s=s.mindvideo_stream_idle_timeout_s,
            task_timeout_s=s.task_timeout_s,
            max_streams=s.mindvideo_max_streams,
            max_polls_per_s=s.mindvideo_max_polls_per_s,
        )
        self.metrics.event_streams_open.set_function(lambda: follower.streams.in_use)
        # Spend budgets (issue 13): None when RELAY_BUDGETS sets none; the monitor runs anyway
        # (it exports the last `relay reconcile` drift).
        budget = build_guard(s, self._redis, self.metrics)
        self._budgets = BudgetMonitor(
            self._redis, self.metrics, prefix=s.redis_key_prefix, guard=budget
        )
        await self._budgets.refresh()
        await self._budgets.start()
        publisher = ResultPublisher(
            producer,
            self.metrics,
            result_topic=s.result_topic,
            dead_letter_topic=s.dead_letter_topic,
            max_message_bytes=limits,
            # Both roles here: this process delivers its own results' webhooks at once.
            on_publish=self._webhooks.direct.offer if self._webhooks else None,
        )
        publisher.on_broker_ok = self.kafka_health.ok
        steps = RequestSteps(
            store=IdempotencyStore(
                self._redis, prefix=s.redis_key_prefix, retention_s=s.idempotency_retention_s
            ),
            client=self._client,
            follower=follower,
            publisher=publisher,
            outcomes=OutcomeRecorder(self.metrics, self.recent),
            handover=self.handover,
            max_record_bytes=s.max_record_bytes,
            max_metadata_bytes=s.max_metadata_bytes,
            max_json_depth=s.max_json_depth,
            task_timeout_s=s.task_timeout_s,
            tracing=self.tracing,
            budget=budget,
        )
        processor = RequestProcessor(
            steps,
            gate=self.gate,
            handover=self.handover,
            budget=budget,
            retry=RetryPolicy(
                backoff,
                self.metrics.retries,
                scope="lifecycle",
                max_attempts=s.record_max_attempts,
                outages_unbounded=True,
                sleep=self.handover.sleep,
            ),
            tracing=self.tracing,
        )
        self._kafka_consumer = AIOKafkaConsumer(
            **kafka,
            group_id=s.kafka_group_id,
            group_instance_id=s.kafka_group_instance_id,
            client_id=s.kafka_client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            max_poll_interval_ms=s.kafka_max_poll_interval_ms,
            max_partition_fetch_bytes=max(1024 * 1024, s.max_record_bytes * 4),
        )
        self._consumer = RequestConsumer(
            self._kafka_consumer,
            processor.process,
            self.metrics,
            self.gate,
            topic=s.request_topic,
            max_in_flight_per_partition=s.max_in_flight_per_partition,
            max_in_flight=s.max_in_flight,
            commit_interval_s=s.commit_interval_s,
            retry=RetryPolicy(
                Backoff(COMMIT_BACKOFF_BASE_S, COMMIT_BACKOFF_MAX_S),
                self.metrics.retries,
                scope="consumer",
                max_attempts=s.record_max_attempts,
                outages_unbounded=True,
            ),
            handover=self.handover,
        )
        self._consumer.on_broker_ok = self.kafka_health.ok
        reachability = self._client.reachability
        self._consumer.can_move = lambda: not reachability.unreachable
        self._consumer.subscribe()
        # Served before the group join: a slow join shows as /readyz "joining", not as silence.
        await self._start_http()
        await start_kafka_client(self._kafka_consumer, kafka)
        self.kafka_health.ok()  # the join was a round trip, however long it took
        self._tasks = [
            asyncio.create_task(self._consumer.run(), name="consume"),
            asyncio.create_task(self._probe_credentials(), name="credential-probe"),
            asyncio.create_task(self._watch_dependencies(), name="dependency-health"),
            asyncio.create_task(self._watch_kafka(), name="kafka-health"),
        ]
        log.info(
            "relay started",
            extra={"http_port": self.http_port, "role": s.role, "request_topic": s.request_topic},
        )

    async def wait(self) -> None:
        """Return when the consume loop (or, in the ``webhooks`` role, the dispatcher) ends:
        only on stop or on a fatal error."""
        await self._tasks[0]

    async def stop(self) -> None:
        """Stop fetching, drain within the grace period, commit, leave the group, close.

        Every step after the drain is bounded (``relay.shutdown``): with Kafka or Redis gone a
        commit, a flush or a close is abandoned after its timeout instead of holding the pod
        until the kubelet's SIGKILL. The webhook worker drains beside the request consumer, so
        both fit the one grace period.
        """
        grace = self.settings.shutdown_grace_s
        log.info("stopping", extra={"grace_s": grace})
        budget = StopBudget(grace)
        kafka_down = self.kafka_health.problem() is not None
        kafka_step_s = STOP_STEP_KAFKA_DOWN_S if kafka_down else STOP_STEP_TIMEOUT_S
        if self._consumer is not None:
            self._consumer.stop_fetching()
        # The consume loop ends by itself once fetching stops; the rest is cancelled (waiting
        # on the dispatcher does not stop it: it is stopped below).
        for task in self._tasks[1:] if self._consumer is not None else self._tasks:
            task.cancel()
        if self._tasks:
            await budget.step(
                "stop tasks",
                lambda: asyncio.gather(*self._tasks, return_exceptions=True),
                timeout_s=kafka_step_s + FETCH_STOP_S,
            )
        webhooks = self._webhooks
        webhooks_stop = (
            asyncio.create_task(webhooks.stop(grace), name="webhooks-stop")
            if webhooks is not None
            else None
        )
        consumer = self._consumer
        if consumer is not None:
            # The grace for the work, then the final commit: bounded, Kafka may be gone.
            await budget.step(
                "drain and final commit",
                lambda: consumer.drain(grace),
                timeout_s=grace + kafka_step_s,
            )
        kafka_consumer = self._kafka_consumer
        if kafka_consumer is not None:
            await budget.step("leave the group", kafka_consumer.stop, timeout_s=kafka_step_s)
        if webhooks_stop is not None:
            await budget.step(
                "stop webhooks", lambda: asyncio.shield(webhooks_stop), timeout_s=kafka_step_s
            )
            webhooks_stop.cancel()
        if self._budgets is not None:
            await budget.step("stop budgets", self._budgets.stop, timeout_s=STOP_STEP_TIMEOUT_S)
        if self._producer is not None:
            await budget.step("flush the producer", self._producer.stop, timeout_s=kafka_step_s)
        if self._runner is not None:
            await budget.step("close HTTP", self._runner.cleanup, timeout_s=STOP_STEP_TIMEOUT_S)
        for session in (self._session, self._stream_session):
            if session is not None:
                await budget.step("close sessions", session.close, timeout_s=STOP_STEP_TIMEOUT_S)
        if self._redis is not None:
            await budget.step("close Redis", self._redis.aclose, timeout_s=STOP_STEP_TIMEOUT_S)
        await self._loop_lag.stop()
        # Last: spans of the drained work are exported too.
        await budget.step("flush traces", self.tracing.shutdown, timeout_s=STOP_STEP_TIMEOUT_S)
        self.abandoned_steps = budget.timed_out
        log.info("stopped", extra={"abandoned_steps": budget.timed_out} if budget.timed_out else {})

    async def readiness(self) -> dict[str, str | None]:
        checks: dict[str, str | None] = {"kafka": None, "redis": None, "mindvideo": None}
        kafka_problem = self.kafka_health.problem()
        if self.settings.role == "webhooks":
            # No request pipeline, no MindVideo: the webhooks check covers the intake's Kafka.
            del checks["kafka"], checks["mindvideo"]
        elif self._kafka_consumer is None or not self._tasks:
            checks["kafka"] = "joining: connecting to Kafka and joining the consumer group"
        elif self._tasks[0].done():
            checks["kafka"] = "the consume loop is not running"
        elif self._consumer is not None and not self._consumer.joined:
            checks["kafka"] = f"joining the consumer group {self.settings.kafka_group_id}"
        else:
            checks["kafka"] = kafka_problem
        checks["redis"] = await self._redis_problem()
        if "mindvideo" in checks:
            unreachable = self._client.reachability.problem() if self._client else None
            checks["mindvideo"] = self.gate.reason or unreachable
        if self._webhooks is not None:
            checks["webhooks"] = self._webhooks.problem()
            if "kafka" not in checks:
                checks["webhooks"] = checks["webhooks"] or kafka_problem
        return checks

    async def _redis_problem(self) -> str | None:
        """A real write, not a ping: a full Redis (maxmemory with noeviction) still answers
        PING but refuses every write the relay needs, and must show as not ready."""
        if self._redis is None:
            return "not connected yet"
        key = f"{self.settings.redis_key_prefix}:readyz:{{{socket.gethostname()}:{os.getpid()}}}"
        try:
            await asyncio.wait_for(
                self._redis.set(key, b"1", px=REDIS_CHECK_TTL_MS), REDIS_PING_TIMEOUT_S
            )
        except OutOfMemoryError as exc:
            return (
                f"Redis is full (OOM), a write failed: {exc} Raise maxmemory or shorten"
                " RELAY_IDEMPOTENCY_RETENTION_S / RELAY_WEBHOOK_DONE_RETENTION_S"
            )
        except ResponseError as exc:
            return f"a write failed: {exc}"
        except (RedisError, OSError, TimeoutError) as exc:
            return f"a write failed: {exc!r}"
        return None

    def _mindvideo_session(self, connections: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.settings.mindvideo_connect_timeout_s
            ),
            headers={"User-Agent": f"mindvideo-relay/{__version__}"},
        )

    async def _start_http(self) -> None:
        token = self.settings.http_token
        app = build_http_app(
            self.metrics,
            self.readiness,
            recent=self.recent,
            token=token.get_secret_value() if token else None,
            webhook_endpoints=self._webhooks.endpoints if self._webhooks else None,
            webhook_lookup=self._webhooks.lookup if self._webhooks else None,
            budgets=self._budgets.view if self._budgets is not None else None,
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.settings.http_host, self.settings.http_port
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigurationError(
                [f"cannot listen on {host}:{port} ({exc.strerror}); change RELAY_HTTP_PORT"]
            ) from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.settings.http_port

    async def _watch_dependencies(self) -> None:
        """Export the readiness checks as ``relay_dependency_up`` for alerts and dashboards."""
        while True:
            for name, problem in (await self.readiness()).items():
                self.metrics.dependency_up.labels(name).set(0 if problem else 1)
            await asyncio.sleep(DEPENDENCY_CHECK_INTERVAL_S)

    async def _watch_kafka(self) -> None:
        """Probe the cluster whenever no record, commit or offsets answer proved it alive."""
        assert self._producer is not None
        client = self._producer.client
        await self.kafka_health.run(client.fetch_all_metadata)

    def _kafka_changed(self, up: bool) -> None:
        """Kafka went down or came back: the metric at once, and no stale lag while down."""
        self.metrics.dependency_up.labels("kafka").set(1 if up else 0)
        if not up and self._consumer is not None:
            self._consumer.forget_lag()

    async def _probe_credentials(self) -> None:
        assert self._client is not None
        while True:
            await self.gate.wait_closed()
            await asyncio.sleep(self.settings.mindvideo_probe_interval_s)
            try:
                await self._client.probe()
            except OperatorError as exc:
                self.gate.close(exc)
                continue
            except RetryableError as exc:
                log.info("credential probe inconclusive", extra={"reason": str(exc)})
                continue
            self.gate.reopen()
