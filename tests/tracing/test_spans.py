"""The spans of one request through the real dispatcher and steps (fakes of our own components,
the SDK's in-memory exporter): one trace per request, continuing the producer's, each step a
child of ``consume``, and the result carrying the publish span's context downstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from relay.devtools.processes import LOCALHOST, free_port
from relay.exceptions import RequestRejected, RetryableError
from relay.tracing.context import TraceContext
from relay.tracing.otel import OtelTracing
from tests.pipeline.fakes import MODEL, Harness, request, source

PRODUCER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
PARENT = TraceContext(f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01", "vendor=opaque")


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


def _harness(exporter: InMemorySpanExporter) -> Harness:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Harness(tracing=OtelTracing(provider, service_version="test"))


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_one_trace_per_request_continuing_the_producers(
    exported: InMemorySpanExporter,
) -> None:
    h = _harness(exported)
    h.client.errors["submit"].append(RetryableError("503", reason="http_5xx"))
    record = source("k1", request("k1", webhook_url="https://hooks.example.com/a"))
    record.trace = PARENT
    await h.processor.process(record)

    spans = exported.get_finished_spans()
    assert {_hex(s.context.trace_id, 32) for s in spans} == {PRODUCER_TRACE}
    (consume,) = _by_name(spans, "consume")
    assert consume.kind is SpanKind.CONSUMER
    assert consume.parent is not None
    assert consume.parent.is_remote
    assert _hex(consume.parent.span_id, 16) == PRODUCER_SPAN
    assert str(consume.context.trace_state) == str(consume.parent.trace_state)
    assert consume.attributes is not None
    assert consume.attributes["relay.idempotency_key"] == "k1"
    assert consume.attributes["relay.model"] == MODEL
    assert consume.attributes["messaging.destination.name"] == "requests"

    steps = [s for s in spans if s is not consume]
    assert [s.name for s in steps] == ["claim", "submit", "submit", "follow", "publish"]
    for step in steps:
        assert step.parent is not None
        assert step.parent.span_id == consume.context.span_id, f"{step.name} under consume"
    failed, submitted = _by_name(spans, "submit")
    assert failed.status.status_code is StatusCode.ERROR, (
        "each try is a span; the failed one says so"
    )
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "relay.exceptions.RetryableError"
    assert submitted.status.status_code is StatusCode.UNSET
    (result, _) = h.publisher.results[0]
    (follow,) = _by_name(spans, "follow")
    assert follow.attributes is not None
    assert follow.attributes["relay.task_id"] == result.task_id

    (publish,) = _by_name(spans, "publish")
    (outbound,) = h.publisher.traces
    assert outbound is not None
    assert outbound.trace_id == PRODUCER_TRACE
    assert outbound.span_id == _hex(publish.context.span_id, 16), "the webhook's parent: publish"
    assert outbound.tracestate == "vendor=opaque", "the producer's tracestate goes on"

    everything = str([dict(s.attributes or {}) for s in spans])
    assert "prompt of k1" not in everything, "no input in a trace"
    assert "hooks.example.com" not in everything


async def test_a_request_without_a_traceparent_starts_its_own_trace(
    exported: InMemorySpanExporter,
) -> None:
    h = _harness(exported)
    await h.processor.process(source("k1", request("k1")))
    await h.processor.process(source("k2", request("k2"), offset=1))
    spans = exported.get_finished_spans()
    roots = _by_name(spans, "consume")
    assert [root.parent for root in roots] == [None, None]
    assert len({root.context.trace_id for root in roots}) == 2, "one trace per request"
    for span in spans:
        assert span.context.trace_id in {root.context.trace_id for root in roots}
    traces = [t.trace_id for t in h.publisher.traces if t is not None]
    assert traces == [_hex(root.context.trace_id, 32) for root in roots]


async def test_a_rejection_is_traced_and_marked(exported: InMemorySpanExporter) -> None:
    h = _harness(exported)
    h.client.errors["submit"].append(RequestRejected("invalid_input", "prompt too long"))
    record = source("k1", request("k1"))
    record.trace = PARENT
    await h.processor.process(record)
    spans = exported.get_finished_spans()
    (submit,) = _by_name(spans, "submit")
    assert submit.status.status_code is StatusCode.ERROR
    assert submit.status.description == "rejected: invalid_input", "the code, not the message"
    (publish,) = _by_name(spans, "publish")
    assert publish.attributes is not None
    assert publish.attributes["relay.result.type"] == "request.rejected"


async def test_shutdown_does_not_wait_for_a_collector_that_hangs() -> None:
    """SIGTERM must not wait the exporter's 10 s timeout on a collector that never answers."""
    hang = asyncio.Event()

    async def never_answer(_: web.Request) -> web.Response:
        await hang.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/traces", never_answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOCALHOST, port).start()
    try:
        provider = TracerProvider()
        exporter = OTLPSpanExporter(endpoint=f"http://{LOCALHOST}:{port}/v1/traces", timeout=30)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracing = OtelTracing(provider, service_version="test", shutdown_timeout_s=0.5)
        with tracing.step("claim"):
            pass
        started = time.monotonic()
        await tracing.shutdown()
        assert time.monotonic() - started < 5.0
    finally:
        hang.set()
        await runner.cleanup()
