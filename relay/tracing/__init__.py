"""OpenTelemetry tracing, configured by the standard ``OTEL_*`` variables; off and free unless an
exporter is configured.

``context``: the W3C ``traceparent``/``tracestate`` the relay carries (always, tracing or not).
``config``: whether tracing is on, and which ``OTEL_*`` values the relay refuses.
``spans``: what the pipeline and the webhook worker call, and the no-op used while off.
``otel``: the SDK-backed implementation, imported only when tracing is on.
"""
