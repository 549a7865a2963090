"""What the pipeline and the webhook worker call to trace, and the implementation used while
tracing is off.

Off is the default and must cost nothing: ``NO_TRACING`` imports no OpenTelemetry, creates no
SDK object, and every call returns the one shared ``NOOP_SPAN`` (no allocation per request).
Callers guard anything more than a call behind ``span.recording``. The only work left while off
is carrying the producer's ``traceparent`` through unchanged (``outbound``), so a trace begun
upstream still reaches the webhook receiver.

On, ``relay.tracing.otel.OtelTracing`` (imported only then) overrides these methods with
OpenTelemetry SDK spans. Spans are used as context managers: entering makes the span current
(so spans started inside it, the HTTP client's included, are its children), leaving ends it and
marks it failed when an exception passes through.
"""

from __future__ import annotations

from types import TracebackType
from typing import ClassVar

from relay.tracing.config import TracingConfig
from relay.tracing.context import TraceContext

AttributeValue = str | int | float | bool


class Span:
    """A span in progress. This base class is the no-op span used while tracing is off."""

    __slots__ = ()
    recording: ClassVar[bool] = False

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def set(self, name: str, value: AttributeValue | None) -> None:
        """Set an attribute (``None`` values are skipped)."""


NOOP_SPAN = Span()


class Tracing:
    """The relay's tracer. This base class is tracing switched off."""

    enabled: ClassVar[bool] = False

    def consume(self, parent: TraceContext | None, topic: str, partition: int, offset: int) -> Span:
        """The span of one request record's whole journey through this process, a child of
        the producer's ``traceparent`` (a new trace without one)."""
        return NOOP_SPAN

    def step(self, name: str) -> Span:
        """The span of one try of a lifecycle step, a child of the current span."""
        return NOOP_SPAN

    def attempt(self, parent: TraceContext | None) -> Span:
        """The span of one webhook attempt, a child of the result record's ``traceparent``."""
        return NOOP_SPAN

    def outbound(self, incoming: TraceContext | None) -> TraceContext | None:
        """The trace context to write downstream (result record, webhook request): the current
        span's while tracing; while off, ``incoming`` unchanged."""
        return incoming

    async def shutdown(self) -> None:
        """Export what is buffered and release the SDK (nothing to do while off)."""


NO_TRACING = Tracing()


def start_tracing(
    config: TracingConfig, *, service_version: str, mindvideo_base_url: str
) -> Tracing:
    """``NO_TRACING`` unless ``config`` names an exporter; then the SDK is imported and a tracer
    provider built (its exporter, sampler, batching and resource read from ``OTEL_*``).
    ``mindvideo_base_url``: the one origin whose URL paths HTTP client spans may show."""
    if not config.enabled:
        return NO_TRACING
    from relay.tracing.otel import build_tracing

    return build_tracing(
        config, service_version=service_version, mindvideo_base_url=mindvideo_base_url
    )
