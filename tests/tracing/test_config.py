"""Which ``OTEL_*`` settings turn tracing on, and the ones the relay refuses at start (exit 2, one
line naming the variable) instead of silently running differently from what was written."""

from __future__ import annotations

import os

import pytest

from relay.cli import main
from relay.tracing.config import TRACING_OFF, TracingConfig, read_tracing_config

ENDPOINT = "http://collector.example:4318"


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "relay-eu"}, ()),  # naming the service turns nothing on
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT + "/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ("console", "otlp")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, ()),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, ()),
        # Not judged while tracing is off: meant for other services in the same namespace.
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_PROPAGATORS": "tracecontext"}, ("otlp",)),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.25",
                "OTEL_PROPAGATORS": "tracecontext,baggage",
            },
            ("otlp",),
        ),
    ],
)
def test_tracing_is_on_only_with_an_exporter(env: dict[str, str], exporters: tuple[str]) -> None:
    config, problems = read_tracing_config(env)
    assert problems == []
    assert config == TracingConfig(exporters)
    assert config.enabled is bool(exporters)


MISTAKES = {
    "zipkin": ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin': the relay"),
    "grpc": (
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='grpc': the relay exports OTLP over HTTP only",
    ),
    "sampler": (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_TRACES_SAMPLER": "sometimes"},
        "OTEL_TRACES_SAMPLER='sometimes': should be one of",
    ),
    "ratio": (
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "10%",
        },
        "OTEL_TRACES_SAMPLER_ARG='10%': the share of traces traceidratio keeps",
    ),
    "b3": (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_PROPAGATORS": "b3"},
        "OTEL_PROPAGATORS='b3': the relay carries W3C trace context",
    ),
    "endpoint": (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
        "OTEL_EXPORTER_OTLP_ENDPOINT: should be an http:// or https:// URL",
    ),
    "disabled": ({"OTEL_SDK_DISABLED": "yes"}, "OTEL_SDK_DISABLED='yes': should be"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_relay_run_refuses_what_it_cannot_honour(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env, expected = MISTAKES[name]
    for variable in [n for n in os.environ if n.startswith(("RELAY_", "OTEL_"))]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("RELAY_MINDVIDEO_API_KEY", "mv_test_k")
    monkeypatch.setenv("RELAY_WEBHOOK_ALLOW_UNSIGNED", "true")
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert read_tracing_config(env)[0] == TRACING_OFF
    assert main(["run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("relay run: invalid configuration: ")
    assert expected in lines[0]


def test_tracing_problems_are_reported_with_the_relay_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in [n for n in os.environ if n.startswith(("RELAY_", "OTEL_"))]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("RELAY_LOG_LEVEL", "verbose")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    assert main(["run"]) == 2
    line = capsys.readouterr().err.strip()
    assert "RELAY_LOG_LEVEL='verbose'" in line
    assert "OTEL_TRACES_EXPORTER='jaeger'" in line, "every problem in one run"


@pytest.mark.parametrize(
    ("disabled", "spans"),
    [("", True), ("redis", True), ("redis, aiohttp-client", False), ("*", False)],
)
def test_http_client_spans_follow_the_standard_opt_out(disabled: str, spans: bool) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled,
    }
    config, problems = read_tracing_config(env)
    assert problems == []
    assert config == TracingConfig(("otlp",), http_client_spans=spans)


def test_tracing_without_the_sdk_installed_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import relay.tracing.config as config

    monkeypatch.setattr(config, "_installed", lambda module: not module.startswith("opentelemetry"))
    _, problems = read_tracing_config({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT})
    assert problems == [
        "OTEL_EXPORTER_OTLP_ENDPOINT: tracing with the 'otlp' exporter needs the OpenTelemetry "
        "SDK, which is not installed: pip install 'mindvideo-relay[otel]'"
    ]
