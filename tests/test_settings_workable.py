"""Settings that parse but cannot work are refused at start: exit 2, one line naming the
variable and the fix (issue 16)."""

from __future__ import annotations

import pytest

from tests.test_settings import VALID, _relay_run, clean_env

__all__ = ["clean_env"]

CANNOT_WORK = {
    "base URL without a scheme": (
        {"RELAY_MINDVIDEO_BASE_URL": "api.mindvideo.ai"},
        "RELAY_MINDVIDEO_BASE_URL='api.mindvideo.ai' is not an http(s) URL",
    ),
    "base URL with the API root in it": (
        {"RELAY_MINDVIDEO_BASE_URL": "https://api.mindvideo.ai/api/v1/"},
        "the relay adds /api/v1",
    ),
    "webhook default URL without a scheme": (
        {"RELAY_WEBHOOK_DEFAULT_URL": "hooks.example.com/relay"},
        "RELAY_WEBHOOK_DEFAULT_URL: 'hooks.example.com/relay' is not an http(s) URL",
    ),
    "allow-list CIDR that is not one": (
        {"RELAY_WEBHOOK_ALLOWED_HOSTS": "hooks.internal,10.0.0.0/33"},
        "RELAY_WEBHOOK_ALLOWED_HOSTS: '10.0.0.0/33' is not a valid address or CIDR range",
    ),
    "allow-list address that is not one": (
        {"RELAY_WEBHOOK_ALLOWED_HOSTS": "10.0.0.256"},
        "'10.0.0.256' is not a valid address",
    ),
    "per-partition bound above the process bound": (
        {"RELAY_MAX_IN_FLIGHT_PER_PARTITION": "600", "RELAY_MAX_IN_FLIGHT": "100"},
        "RELAY_MAX_IN_FLIGHT_PER_PARTITION=600 is above RELAY_MAX_IN_FLIGHT=100",
    ),
    "heartbeat not below the session": (
        {"RELAY_KAFKA_HEARTBEAT_INTERVAL_MS": "10000"},
        "RELAY_KAFKA_HEARTBEAT_INTERVAL_MS=10000 must be below RELAY_KAFKA_SESSION_TIMEOUT_MS",
    ),
    "empty topic": ({"RELAY_RESULT_TOPIC": ""}, "RELAY_RESULT_TOPIC='' is not a valid Kafka name"),
    "topic with a space": (
        {"RELAY_REQUEST_TOPIC": "my requests"},
        "RELAY_REQUEST_TOPIC='my requests' is not a valid Kafka name",
    ),
    "requests topic is the results topic": (
        {"RELAY_REQUEST_TOPIC": "t", "RELAY_RESULT_TOPIC": "t"},
        "the relay would consume its own output",
    ),
    "empty key prefix": ({"RELAY_REDIS_KEY_PREFIX": " "}, "RELAY_REDIS_KEY_PREFIX=' ' must be"),
    "backoff base above its maximum": (
        {"RELAY_MINDVIDEO_BACKOFF_BASE_S": "60"},
        "RELAY_MINDVIDEO_BACKOFF_BASE_S is above RELAY_MINDVIDEO_BACKOFF_MAX_S",
    ),
}


@pytest.mark.parametrize(("variables", "message"), CANNOT_WORK.values(), ids=CANNOT_WORK.keys())
def test_a_setting_that_cannot_work_is_refused_at_start(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str],
    message: str,
) -> None:
    code, lines = _relay_run(clean_env, capsys, **{**VALID, **variables})
    assert code == 2
    assert len(lines) == 1, lines
    assert message in lines[0], lines[0]


def test_workable_values_pass(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from relay.configuration import load_service_settings

    for name, value in {
        **VALID,
        "RELAY_MINDVIDEO_BASE_URL": "http://127.0.0.1:8400/mindvideo-proxy",
        "RELAY_WEBHOOK_DEFAULT_URL": "https://a.example.com/x,http://10.0.0.5:8080/hook",
        "RELAY_WEBHOOK_ALLOWED_HOSTS": "hooks.internal,cafe.be,10.0.0.0/8,[fd00::1],192.168.1.7",
        "RELAY_MAX_IN_FLIGHT": "100",
    }.items():
        clean_env.setenv(name, value)
    settings = load_service_settings()
    assert settings.max_in_flight == 100
