"""Tracing off (no exporter configured) is free: the tracing SDK is not loaded, no SDK object
exists, the hooks keep nothing per request, and the producer's trace context still goes through
unchanged (a transparent hop, as W3C Trace Context asks of a participant that does not trace).

(redis-py 8 imports OpenTelemetry's *metrics* modules by itself when they are installed, for its
own metrics, which stay off unless an application initialises them; that is not tracing.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

from relay.tracing.config import TRACING_OFF
from relay.tracing.context import TraceContext
from relay.tracing.spans import NO_TRACING, NOOP_SPAN, start_tracing
from tests.pipeline.fakes import Harness, request, source

PARENT = TraceContext("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "a=1")

LOADED = """
import json, os, sys
from relay.cli import build_parser
from relay.configuration import load_tracing_config
from relay.service import Relay
from relay.tracing.spans import NO_TRACING, start_tracing
tracing = start_tracing(load_tracing_config(), service_version="0", mindvideo_base_url="http://x")
assert tracing is NO_TRACING
TRACING = ("relay.tracing.otel", "opentelemetry.sdk.trace", "opentelemetry.exporter",
           "opentelemetry.instrumentation", "opentelemetry.propagate")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(TRACING))))
"""


def test_a_relay_without_otel_configuration_loads_no_tracing_sdk() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", LOADED], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


def test_off_returns_the_shared_noop_span() -> None:
    tracing = start_tracing(TRACING_OFF, service_version="0", mindvideo_base_url="http://x")
    assert tracing is NO_TRACING
    assert tracing.consume(PARENT, "requests", 0, 1) is NOOP_SPAN
    assert tracing.step("claim") is NOOP_SPAN
    assert tracing.attempt(PARENT) is NOOP_SPAN
    assert tracing.outbound(PARENT) is PARENT, "forwarded as it came"
    assert tracing.outbound(None) is None
    assert not NOOP_SPAN.recording


def test_the_off_hooks_keep_nothing_per_request() -> None:
    def hooks() -> None:
        with NO_TRACING.consume(None, "requests", 0, 1) as span:
            if span.recording:
                span.set("relay.idempotency_key", "k")
            for name in ("claim", "submit", "follow", "publish"):
                with NO_TRACING.step(name):
                    NO_TRACING.outbound(None)
        with NO_TRACING.attempt(None):
            NO_TRACING.outbound(None)

    hooks()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10_000):
            hooks()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024, f"{grown} bytes kept after 10,000 requests"


async def test_off_the_result_carries_the_producers_context_unchanged() -> None:
    h = Harness()
    record = source("k1", request("k1"))
    record.trace = PARENT
    await h.processor.process(record)
    await h.processor.process(source("k2", request("k2"), offset=1))
    assert h.publisher.traces == [PARENT, None], "no context is made up while off"
