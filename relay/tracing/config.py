"""Whether tracing is on, from the standard ``OTEL_*`` variables, checked strictly.

Tracing is **off** unless an exporter is configured: ``OTEL_TRACES_EXPORTER`` names one
(``otlp`` or ``console``), or, with that variable unset, an OTLP endpoint is given
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``: what an operator or
an injecting operator sets). ``OTEL_SDK_DISABLED=true`` and ``OTEL_TRACES_EXPORTER=none`` turn it
off whatever else is set. (The OpenTelemetry specification defaults the exporter to ``otlp``; a
relay that sent spans to ``localhost:4318`` because nobody configured anything would be neither
off nor free.)

The SDK reads the rest itself (endpoint, headers, timeout, certificates, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``), but it only logs a warning and falls back for
values it does not know. Those whose fallback would silently run the relay differently from what
the operator wrote are problems here, reported with the ``RELAY_*`` ones (exit 2): an exporter or
protocol the relay does not ship, an unknown sampler or ratio, a propagator other than W3C trace
context, an endpoint that is not an http(s) URL, and tracing configured without the SDK installed.
Variables that do not matter while tracing is off are not judged then: a cluster-wide
``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` meant for other services does not stop a relay that does
not trace.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

EXPORTERS = ("otlp", "console")
PROTOCOL = "http/protobuf"
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
PROPAGATORS = ("tracecontext", "baggage")
INSTALL_HINT = "pip install 'mindvideo-relay[otel]'"
# The aiohttp client instrumentation's name, as OTEL_PYTHON_DISABLED_INSTRUMENTATIONS lists it.
HTTP_CLIENT_INSTRUMENTATION = "aiohttp-client"
_SDK_MODULES = {
    "otlp": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"),
    "console": ("opentelemetry.sdk",),
}


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """What the relay traces with; no exporters means tracing is off. ``http_client_spans``:
    CLIENT spans for every HTTP call (the aiohttp instrumentation), unless
    ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names ``aiohttp-client`` (or ``*``)."""

    exporters: tuple[str, ...] = ()
    http_client_spans: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


TRACING_OFF = TracingConfig()


def read_tracing_config(environ: Mapping[str, str]) -> tuple[TracingConfig, list[str]]:
    """The configuration, and one problem per ``OTEL_*`` variable the relay cannot honour
    (each a line naming the variable). With problems, the configuration is tracing off."""
    env = {name: value.strip() for name, value in environ.items() if name.startswith("OTEL_")}
    problems: list[str] = []
    disabled = env.get("OTEL_SDK_DISABLED", "").lower()
    if disabled not in ("", "true", "false"):
        problems.append(f"OTEL_SDK_DISABLED={disabled!r}: should be 'true' or 'false'")
    exporters = _exporters(env, problems)
    if disabled == "true" or not exporters or problems:
        return TRACING_OFF, problems
    problems.extend(_protocol_problems(env, exporters))
    problems.extend(_endpoint_problems(env, exporters))
    problems.extend(_sampler_problems(env))
    problems.extend(_propagator_problems(env))
    problems.extend(_missing_packages(env, exporters))
    if problems:
        return TRACING_OFF, problems
    disabled_instrumentations = {
        name.strip() for name in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
    }
    http_client_spans = not disabled_instrumentations & {HTTP_CLIENT_INSTRUMENTATION, "*"}
    return TracingConfig(exporters, http_client_spans), []


def _exporters(env: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    raw = env.get("OTEL_TRACES_EXPORTER", "")
    if not raw:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ("otlp",) if endpoint else ()
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    if names == ["none"]:
        return ()
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        problems.append(
            f"OTEL_TRACES_EXPORTER={raw!r}: the relay exports traces with "
            f"{' or '.join(repr(e) for e in EXPORTERS)} (comma-separated), or 'none' for no "
            f"tracing; {', '.join(repr(u) for u in unknown)} is not supported"
        )
        return ()
    return tuple(dict.fromkeys(names))


def _protocol_problems(env: Mapping[str, str], exporters: tuple[str, ...]) -> list[str]:
    if "otlp" not in exporters:
        return []
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name)
        if value:
            if value.lower() != PROTOCOL:
                return [
                    f"{name}={value!r}: the relay exports OTLP over HTTP only; set it to "
                    f"{PROTOCOL!r} (and point the endpoint at the collector's HTTP port, "
                    "usually 4318)"
                ]
            return []
    return []


def _endpoint_problems(env: Mapping[str, str], exporters: tuple[str, ...]) -> list[str]:
    if "otlp" not in exporters:
        return []
    problems = []
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = env.get(name)
        if not value:
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(
                f"{name}: should be an http:// or https:// URL of the collector, "
                "e.g. http://otel-collector:4318"
            )
    return problems


def _sampler_problems(env: Mapping[str, str]) -> list[str]:
    sampler = env.get("OTEL_TRACES_SAMPLER", "").lower()
    if sampler and sampler not in SAMPLERS:
        return [f"OTEL_TRACES_SAMPLER={sampler!r}: should be one of {', '.join(SAMPLERS)}"]
    arg = env.get("OTEL_TRACES_SAMPLER_ARG")
    if sampler in RATIO_SAMPLERS and arg:
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            return [
                f"OTEL_TRACES_SAMPLER_ARG={arg!r}: the share of traces {sampler} keeps, "
                "a number from 0 to 1"
            ]
    return []


def _propagator_problems(env: Mapping[str, str]) -> list[str]:
    raw = env.get("OTEL_PROPAGATORS")
    if not raw:
        return []
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    if "tracecontext" not in names or any(name not in PROPAGATORS for name in names):
        return [
            f"OTEL_PROPAGATORS={raw!r}: the relay carries W3C trace context (traceparent, "
            "tracestate) through Kafka and webhooks; set it to 'tracecontext' or "
            "'tracecontext,baggage'"
        ]
    return []


def _missing_packages(env: Mapping[str, str], exporters: tuple[str, ...]) -> list[str]:
    """Tracing asked for without the ``otel`` extra installed (found without importing it)."""
    source = next(
        (
            name
            for name in (
                "OTEL_TRACES_EXPORTER",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            )
            if env.get(name)
        ),
        "OTEL_TRACES_EXPORTER",
    )
    for exporter in exporters:
        for module in _SDK_MODULES[exporter]:
            if not _installed(module):
                return [
                    f"{source}: tracing with the {exporter!r} exporter needs the OpenTelemetry "
                    f"SDK, which is not installed: {INSTALL_HINT}"
                ]
    return []


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False
