"""What ``relay dev`` runs with: the user's exported settings win, addresses of the services it
starts itself are taken as ports or refused, and the export block reaches the stack. Also its
port check, which must not mistake TIME-WAIT for a listener. No service is started here."""

from __future__ import annotations

import argparse
import base64
import os
import socket

import pytest

from relay.devtools.dev import add_arguments, check_port_free
from relay.devtools.devconfig import (
    DevPorts,
    dev_settings,
    export_block,
    honoured_summary,
    resolve_ports,
)
from relay.devtools.processes import free_port
from relay.exceptions import ConfigurationError
from relay.settings import RelaySettings
from tests.devtools.support import in_time_wait, leave_in_time_wait, parse_exports, plain_bind_fails

WEBHOOK_URL = "http://127.0.0.1:8091/webhooks"


def _dev_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _settings(monkeypatch: pytest.MonkeyPatch, **variables: str) -> RelaySettings:
    for name in [n for n in os.environ if n.upper().startswith("RELAY_")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return RelaySettings()


def test_defaults_withoutparse_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    base = _settings(monkeypatch)
    ports = resolve_ports(_dev_args(), base)
    assert ports == DevPorts(kafka=9092, redis=6390, sim=8090, http=8080, webhook=8091)
    dev = dev_settings(base, ports, "tansu", WEBHOOK_URL)
    s = dev.settings
    assert s.webhook_retry_schedule == [0.0, 1.0, 5.0, 30.0]
    assert s.kafka_enable_idempotence is False, "Tansu refuses the idempotent producer"
    assert s.webhook_default_url == WEBHOOK_URL
    assert dev.honoured == []
    exports = parse_exports(export_block(dev))
    secret = s.webhook_secrets[0].get_secret_value()
    assert exports == {
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "RELAY_KAFKA_ENABLE_IDEMPOTENCE": "false",
        "RELAY_REQUEST_TOPIC": "mindvideo.requests",
        "RELAY_RESULT_TOPIC": "mindvideo.results",
        "RELAY_DEAD_LETTER_TOPIC": "mindvideo.requests.dlq",
        "RELAY_WEBHOOK_DEAD_LETTER_TOPIC": "mindvideo.webhooks.dlq",
        "RELAY_REDIS_URL": "redis://127.0.0.1:6390/0",
        "RELAY_REDIS_KEY_PREFIX": "mvrelay",
        "RELAY_MINDVIDEO_BASE_URL": "http://127.0.0.1:8090",
        "RELAY_MINDVIDEO_API_KEY": "mv_test_local",  # the simulator's throwaway key
        "RELAY_WEBHOOK_SECRETS": secret,
    }
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24


def test_exported_settings_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    user_secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    base = _settings(
        monkeypatch,
        RELAY_WEBHOOK_RETRY_SCHEDULE="0,1",
        RELAY_WEBHOOK_SECRETS=user_secret,
        RELAY_REQUEST_TOPIC="my.requests",
        RELAY_KAFKA_BOOTSTRAP_SERVERS="localhost:19092",
        RELAY_REDIS_URL="redis://127.0.0.1:16390",
        RELAY_HTTP_PORT="18080",
        RELAY_WEBHOOK_ALLOWED_HOSTS="10.0.0.0/8",
    )
    ports = resolve_ports(_dev_args(), base)
    assert (ports.kafka, ports.redis, ports.http) == (19092, 16390, 18080)
    dev = dev_settings(base, ports, "tansu", WEBHOOK_URL)
    s = dev.settings
    assert s.webhook_retry_schedule == [0.0, 1.0], "an exported schedule is not overridden"
    assert [x.get_secret_value() for x in s.webhook_secrets] == [user_secret]
    assert s.request_topic == "my.requests"
    assert s.webhook_allowed_hosts == ["10.0.0.0/8", "127.0.0.1"], "the receiver stays reachable"
    assert "RELAY_WEBHOOK_RETRY_SCHEDULE=0,1" in honoured_summary(dev)
    assert "RELAY_WEBHOOK_SECRETS=***" in honoured_summary(dev)
    block = export_block(dev)
    assert user_secret not in block, "a secret the user exported is theirs: not echoed"
    assert parse_exports(block)["RELAY_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert parse_exports(block)["RELAY_REQUEST_TOPIC"] == "my.requests"


@pytest.mark.parametrize(
    ("variables", "argv", "message"),
    [
        (
            {"RELAY_REDIS_URL": "redis://redis.example:6379/0"},
            [],
            "RELAY_REDIS_URL=redis://redis.example:6379/0 is not on this machine, but relay dev "
            "starts its own Redis",
        ),
        (
            {"RELAY_KAFKA_BOOTSTRAP_SERVERS": "b-1.msk.example:9096,b-2.msk.example:9096"},
            [],
            "RELAY_KAFKA_BOOTSTRAP_SERVERS=b-1.msk.example:9096,b-2.msk.example:9096 is not on "
            "this machine",
        ),
        (
            {"RELAY_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"},
            ["--kafka-port", "9300"],
            "RELAY_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 disagrees with --kafka-port 9300",
        ),
        (
            {"RELAY_MINDVIDEO_BASE_URL": "https://api.mindvideo.ai"},
            [],
            "RELAY_MINDVIDEO_BASE_URL=https://api.mindvideo.ai is not on this machine",
        ),
        (
            {"RELAY_MINDVIDEO_API_KEY": "mv_live_real"},
            [],
            "RELAY_MINDVIDEO_API_KEY is set, but relay dev's simulator accepts only its own key",
        ),
        (
            {"RELAY_KAFKA_ENABLE_IDEMPOTENCE": "true"},
            [],
            "RELAY_KAFKA_ENABLE_IDEMPOTENCE=true, but Tansu refuses the idempotent producer",
        ),
    ],
    ids=["remote-redis", "remote-kafka", "flag-disagrees", "real-mindvideo", "real-key", "tansu"],
)
def test_exports_relay_dev_cannot_honour_are_refused(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], argv: list[str], message: str
) -> None:
    base = _settings(monkeypatch, **variables)
    with pytest.raises(ConfigurationError) as info:
        resolve_ports(_dev_args(*argv), base)
    assert info.value.exit_code == 2
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_port_check_passes_a_port_in_time_wait() -> None:
    port = free_port()
    leave_in_time_wait(port)
    assert in_time_wait(port), "the test set-up left the port in TIME-WAIT"
    assert plain_bind_fails(port), "a bind without address reuse fails: the old check's error"
    check_port_free("Redis", port, "--redis-port")


def test_port_check_refuses_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"Redis port {port} is in use.*--redis-port"):
            check_port_free("Redis", port, "--redis-port")
