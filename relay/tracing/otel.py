"""Tracing on: the relay's spans on the OpenTelemetry SDK, exported in batches.

Imported only when an exporter is configured (``relay.tracing.spans.start_tracing``), so a relay
without tracing never loads the SDK. The provider reads the standard variables itself: exporter
endpoint, headers, timeout and certificates (``OTEL_EXPORTER_OTLP_*``), sampler
(``OTEL_TRACES_SAMPLER``), batching (``OTEL_BSP_*``) and resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``; ``service.name`` defaults to ``mindvideo-relay``).

The relay's HTTP client calls (MindVideo, webhook POSTs) get CLIENT spans from the maintained
aiohttp client instrumentation when it is installed, unless
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names ``aiohttp-client``: they cost more CPU than the
relay's own spans (about 150 µs a call on the benchmark machine against 25 µs a relay span).
Their URL attribute shows the path only for
MindVideo's origin (task ids, no secrets); for any other, a webhook endpoint among them, only
scheme, host and port, since webhook paths and queries may carry tokens.

Attributes are bounded and never carry a prompt, an input, metadata or a secret: idempotency key,
task id, model, result type and status, event id, webhook attempt and outcome, the Kafka position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from types import TracebackType
from typing import Any

import yarl
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from relay.exceptions import OperatorError, RequestRejected, RetryableError
from relay.tracing.config import TracingConfig
from relay.tracing.context import TRACEPARENT, TRACESTATE, TraceContext
from relay.tracing.spans import AttributeValue, Span, Tracing

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "mindvideo-relay"
TRACER_NAME = "relay"
SHUTDOWN_TIMEOUT_S = 5.0
_PROPAGATOR = TraceContextTextMapPropagator()


class OtelSpan(Span):
    """A recording span; current while entered."""

    __slots__ = ("_span", "_token")
    recording = True

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: object | None = None

    def __enter__(self) -> OtelSpan:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if isinstance(exc, asyncio.CancelledError):
                # Handed over to the next owner (or shut down): not a failure of the step.
                self._span.set_attribute("relay.cancelled", True)
            elif exc is not None:
                self._span.set_status(Status(StatusCode.ERROR, _error_summary(exc)))
                self._span.set_attribute("error.type", _error_type(exc))
            self._span.end()
        finally:
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]

    def set(self, name: str, value: AttributeValue | None) -> None:
        if value is not None:
            self._span.set_attribute(name, value)


def build_tracing(
    config: TracingConfig, *, service_version: str, mindvideo_base_url: str
) -> OtelTracing:
    """A tracer provider with a batch processor per configured exporter, and the HTTP client
    instrumented (``mindvideo_base_url``: the one origin whose URL paths client spans show)."""
    provider = TracerProvider(resource=_resource(service_version))
    for name in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    instrumentor = (
        _instrument_http_client(provider, mindvideo_base_url) if config.http_client_spans else None
    )
    tracing = OtelTracing(provider, service_version=service_version, instrumentor=instrumentor)
    log.info(
        "tracing on",
        extra={"exporters": ",".join(config.exporters), "http_client_spans": bool(instrumentor)},
    )
    return tracing


class OtelTracing(Tracing):
    """Tracing on, with spans from ``provider`` (which ``shutdown`` shuts down)."""

    enabled = True

    def __init__(
        self,
        provider: TracerProvider,
        *,
        service_version: str,
        instrumentor: Any = None,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
    ) -> None:
        self._provider = provider
        self._shutdown_timeout_s = shutdown_timeout_s
        self._tracer = provider.get_tracer(TRACER_NAME, service_version)
        self._instrumentor = instrumentor

    def consume(self, parent: TraceContext | None, topic: str, partition: int, offset: int) -> Span:
        span = self._tracer.start_span(
            "consume",
            context=_remote(parent),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": topic,
                "messaging.destination.partition.id": str(partition),
                "messaging.kafka.offset": offset,
            },
        )
        return OtelSpan(span)

    def step(self, name: str) -> Span:
        return OtelSpan(self._tracer.start_span(name))

    def attempt(self, parent: TraceContext | None) -> Span:
        return OtelSpan(self._tracer.start_span("webhook.attempt", context=_remote(parent)))

    def outbound(self, incoming: TraceContext | None) -> TraceContext | None:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        if TRACEPARENT not in carrier:  # no current span: keep what came in
            return incoming
        return TraceContext(carrier[TRACEPARENT], carrier.get(TRACESTATE))

    async def shutdown(self) -> None:
        """Export what is buffered, off the event loop and for at most ``shutdown_timeout_s``:
        an unreachable collector must not hold up a SIGTERM (the exporter alone may wait its
        ``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s by default). The flush runs in a daemon thread,
        which never keeps the process alive."""
        if self._instrumentor is not None:
            self._instrumentor.uninstrument()
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def flush() -> None:
            try:
                self._provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(_resolve, finished)

        threading.Thread(target=flush, name="tracing-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(finished), self._shutdown_timeout_s)
        except TimeoutError:
            log.warning(
                "buffered spans not exported at shutdown",
                extra={"timeout_s": self._shutdown_timeout_s},
            )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _remote(parent: TraceContext | None) -> otel_context.Context:
    """A context whose span is the remote parent, or ``None`` (a new trace)."""
    if parent is None:
        return otel_context.Context()  # not the current one: a record starts its own trace
    carrier = {TRACEPARENT: parent.traceparent}
    if parent.tracestate:
        carrier[TRACESTATE] = parent.tracestate
    return _PROPAGATOR.extract(carrier, context=otel_context.Context())


def _resource(service_version: str) -> Resource:
    resource = Resource.create({SERVICE_VERSION: service_version})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _instrument_http_client(provider: TracerProvider, mindvideo_base_url: str) -> Any:
    """CLIENT spans for aiohttp requests, or ``None`` when the instrumentation is missing."""
    try:
        from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    except ImportError:
        log.info("aiohttp client instrumentation not installed; no HTTP client spans")
        return None
    mindvideo = yarl.URL(mindvideo_base_url).origin()

    def shown(url: yarl.URL) -> str:
        origin = url.origin()
        return str(origin) + url.path if origin == mindvideo else str(origin)

    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider, url_filter=shown)
    return instrumentor


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def _error_summary(exc: BaseException) -> str:
    """What went wrong, from closed sets only: an exception's message may quote a MindVideo
    answer, and that may echo the request's input."""
    if isinstance(exc, RetryableError):
        return f"retryable: {exc.reason}"
    if isinstance(exc, RequestRejected):
        return f"rejected: {exc.code[:80]}"
    if isinstance(exc, OperatorError):
        return f"operator: HTTP {exc.status}"
    return type(exc).__name__
