"""Tracing end to end on real processes: a producer's ``traceparent`` is continued through the
relay (a separate process configured only by ``OTEL_*`` variables, exporting OTLP over HTTP to a
collector run by the test) to every webhook attempt, and the webhook receiver gets it.

Without tracing configured, the relay exports nothing and forwards the producer's context as it
came, to the result record and to the webhook."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence
from functools import partial

import pytest_asyncio
from aiokafka import AIOKafkaProducer

from tests.support.otlp_collector import CollectedSpan, OtlpCollector
from tests.support.pipeline import Pipeline
from tests.support.services import ManagedProcess, TopicFactory
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import MODEL, read_topic, webhook_dlq, webhook_env

TIMEOUT_S = 30.0
SPAN_KIND_CONSUMER = 5  # opentelemetry.proto.trace.v1.Span.SpanKind
STEPS = ("claim", "submit", "follow", "publish")
PROMPT = "a secret prompt about the panda"
URL_TOKEN = "tok-3f9a7c"  # a credential in the webhook path, as some receivers use


def _traceparent(index: int) -> str:
    return f"00-{index + 1:032x}-{index + 1:016x}-01"


def _record(key: str, traceparent: str | None) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    body = {"idempotency_key": key, "model": MODEL, "input": {"prompt": PROMPT}}
    headers = [] if traceparent is None else [("traceparent", traceparent.encode())]
    if traceparent is not None:
        headers.append(("tracestate", b"producer=p1"))
    return key.encode(), json.dumps(body).encode(), headers


async def _produce(
    pipeline: Pipeline, records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.bootstrap)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(
                pipeline.requests_topic, value=value, key=key, headers=headers
            )
    finally:
        await producer.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def collector() -> AsyncIterator[OtlpCollector]:
    running = OtlpCollector()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    # The first attempt of every delivery fails: the retry comes back out of Redis.
    running = Receiver(behaviour=lambda n: 500 if n == 1 else 200, path=f"/hook/{URL_TOKEN}")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def _start_relay(
    pipeline: Pipeline, topics: TopicFactory, receiver: Receiver, **otel: str
) -> ManagedProcess:
    """A relay delivering to ``receiver`` (a retry after 0.5 s), with only ``otel`` set of the
    ``OTEL_*`` variables (spans exported every 100 ms)."""
    assert not [name for name in os.environ if name.startswith("OTEL_")], (
        "the test controls every OTEL_* variable of the relay it starts"
    )
    dlq = await webhook_dlq(pipeline, topics)
    proc, _ = await pipeline.start_relay(
        **webhook_env(
            dlq, RELAY_WEBHOOK_DEFAULT_URL=receiver.url, RELAY_WEBHOOK_RETRY_SCHEDULE="0,0.5"
        ),
        OTEL_BSP_SCHEDULE_DELAY="100",
        **otel,
    )
    return proc


def _complete(collector: OtlpCollector, trace_id: str) -> bool:
    """Every span of a request has been exported: both webhook attempts, and ``consume``
    (which ends last in the relay)."""
    spans = collector.in_trace(trace_id)
    attempts = sum(s.name == "webhook.attempt" for s in spans)
    return attempts == 2 and any(s.name == "consume" for s in spans)


def _one(spans: list[CollectedSpan], name: str) -> CollectedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, f"{len(found)} {name} spans"
    return found[0]


async def test_one_connected_trace_per_request_from_producer_to_webhook(
    pipeline: Pipeline,
    topics: TopicFactory,
    unique: str,
    collector: OtlpCollector,
    receiver: Receiver,
) -> None:
    await _start_relay(pipeline, topics, receiver, OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint)
    keys = [f"trace-{unique[:8]}-{i}" for i in range(3)]
    untraced = f"untraced-{unique[:8]}"
    await _produce(
        pipeline,
        [_record(k, _traceparent(i)) for i, k in enumerate(keys)] + [_record(untraced, None)],
    )
    results = {
        r.key: r for r in await read_topic(pipeline.bootstrap, pipeline.results_topic, 4, TIMEOUT_S)
    }
    assert set(results) == {*keys, untraced}
    assert await receiver.wait_for(lambda: len(receiver.answered()) == 4, TIMEOUT_S)

    for index, key in enumerate(keys):
        trace_id, producer_span = _traceparent(index)[3:35], _traceparent(index)[36:52]
        # Every span of the request, the last webhook attempt's included, has been exported.
        assert await collector.wait_for(partial(_complete, collector, trace_id), TIMEOUT_S), [
            s.name for s in collector.in_trace(trace_id)
        ]
        spans = collector.in_trace(trace_id)
        ids = {s.span_id for s in spans}
        assert len(ids) == len(spans)
        for span in spans:  # one tree, hanging from the producer's span
            assert span.parent_span_id in ids | {producer_span}, f"{span.name} is disconnected"
            assert span.service == "mindvideo-relay"

        consume = _one(spans, "consume")
        assert consume.parent_span_id == producer_span
        assert consume.kind == SPAN_KIND_CONSUMER
        assert consume.attributes["relay.idempotency_key"] == key
        assert consume.attributes["messaging.destination.name"] == pipeline.requests_topic
        steps = {name: _one(spans, name) for name in STEPS}
        for step in steps.values():
            assert step.parent_span_id == consume.span_id, f"{step.name} is a child of consume"
        result = results[key]
        task_id = json.loads(result.value)["task_id"]
        assert steps["submit"].attributes["relay.task_id"] == task_id
        assert steps["follow"].attributes["relay.task_id"] == task_id
        assert steps["publish"].attributes["relay.result.type"] == "task.succeeded"
        mindvideo_calls = [
            s for s in spans if s.kind == 3 and s.parent_span_id == steps["submit"].span_id
        ]
        assert mindvideo_calls, "the submit's HTTP call is a client span under it"

        published = result.headers["traceparent"].decode()
        assert published == f"00-{trace_id}-{steps['publish'].span_id}-01"
        assert result.headers["tracestate"] == b"producer=p1"

        attempts = [s for s in spans if s.name == "webhook.attempt"]
        assert [a.parent_span_id for a in attempts] == [steps["publish"].span_id] * 2
        assert sorted(a.attributes["relay.webhook.attempt"] for a in attempts) == [1, 2]
        assert {a.attributes["relay.webhook.outcome"] for a in attempts} == {"http_5xx", "success"}
        assert {a.attributes["server.address"] for a in attempts} == {"127.0.0.1"}
        event_id = json.loads(result.value)["event_id"]
        deliveries = receiver.by_id()[event_id]
        assert len(deliveries) == 2
        for delivery in deliveries:
            sent = delivery.headers["traceparent"]
            assert sent[3:35] == trace_id, "the webhook joins the producer's trace"
            assert sent[36:52] in ids, "its parent is a span of that trace"
            assert delivery.headers["tracestate"] == "producer=p1"

    # The request without a traceparent is a trace of its own, rooted at its consume span.
    own = results[untraced].headers["traceparent"].decode()[3:35]
    assert own not in {_traceparent(i)[3:35] for i in range(3)}
    assert await collector.wait_for(
        lambda: any(s.name == "consume" for s in collector.in_trace(own)), TIMEOUT_S
    )
    assert _one(collector.in_trace(own), "consume").parent_span_id == ""

    shown = json.dumps([s.attributes for s in collector.spans])
    assert PROMPT not in shown, "no prompt in any span"
    assert URL_TOKEN not in shown, "webhook paths (which may carry tokens) are not shown"


async def test_without_an_exporter_nothing_is_exported_and_the_context_goes_through(
    pipeline: Pipeline,
    topics: TopicFactory,
    unique: str,
    collector: OtlpCollector,
    receiver: Receiver,
) -> None:
    proc = await _start_relay(
        pipeline,
        topics,
        receiver,
        # An endpoint set cluster-wide for other services, and this relay told not to trace.
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_TRACES_EXPORTER="none",
    )
    key = f"off-{unique[:8]}"
    parent = _traceparent(41)
    await _produce(pipeline, [_record(key, parent)])
    (result,) = await read_topic(pipeline.bootstrap, pipeline.results_topic, 1, TIMEOUT_S)
    assert json.loads(result.value)["type"] == "task.succeeded", "the relay runs"
    assert result.headers["traceparent"] == parent.encode(), "forwarded unchanged"
    assert result.headers["tracestate"] == b"producer=p1"
    assert await receiver.wait_for(lambda: len(receiver.answered()) == 1, TIMEOUT_S)
    for delivery in receiver.deliveries:
        assert delivery.headers["traceparent"] == parent
        assert delivery.headers["tracestate"] == "producer=p1"
    await asyncio.sleep(1.0)  # a span would have been exported by now (100 ms batches)
    assert collector.requests == 0, "no span is exported"
    proc.stop()
    assert "tracing on" not in proc.log_tail(10_000)
