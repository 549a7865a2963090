"""Configuration mistakes as an operator makes them: each is one line on stderr that names the
``RELAY_*`` variable to change, with exit code 2, before anything is started (no service needed).
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from relay.cli import main
from relay.configuration import known_variables, load_service_settings, unknown_variables
from relay.logs import JsonFormatter, ReadableFormatter
from relay.settings import RelaySettings

GOOD_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
SHORT_SECRET = "whsec_" + base64.b64encode(b"sixteen-byte-key").decode()
VALID = {"RELAY_MINDVIDEO_API_KEY": "mv_test_k", "RELAY_WEBHOOK_SECRETS": GOOD_SECRET}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``RELAY_*`` variable from the machine running the tests."""
    for name in [n for n in os.environ if n.upper().startswith("RELAY_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def _relay_run(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **variables: str
) -> tuple[int, list[str]]:
    for name, value in variables.items():
        env.setenv(name, value)
    code = main(["run"])
    err = capsys.readouterr().err
    return code, err.strip().splitlines()


MISTAKES = {
    "bad-retry-schedule": (
        {"RELAY_WEBHOOK_RETRY_SCHEDULE": "0,5,soon"},
        "RELAY_WEBHOOK_RETRY_SCHEDULE='0,5,soon': entry 3: Input should be a valid number",
    ),
    "negative-retry-delay": (
        {"RELAY_WEBHOOK_RETRY_SCHEDULE": "0,-5"},
        "RELAY_WEBHOOK_RETRY_SCHEDULE='0,-5': the retry schedule needs",
    ),
    "log-level-verbose": (
        {"RELAY_LOG_LEVEL": "verbose"},
        "RELAY_LOG_LEVEL='verbose': Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or",
    ),
    "log-format-yaml": (
        {"RELAY_LOG_FORMAT": "yaml"},
        "RELAY_LOG_FORMAT='yaml': Input should be 'auto', 'json' or 'text'",
    ),
    "empty-api-key": (
        {"RELAY_MINDVIDEO_API_KEY": ""},
        "RELAY_MINDVIDEO_API_KEY is empty: set it to your MindVideo key",
    ),
    "misspelled-variable": (
        {"RELAY_KAFKA_BOOSTRAP_SERVERS": "kafka:9092"},
        "RELAY_KAFKA_BOOSTRAP_SERVERS is not a relay setting; "
        "did you mean RELAY_KAFKA_BOOTSTRAP_SERVERS?",
    ),
    "unknown-variable": (
        {"RELAY_FROBNICATE": "1"},
        "RELAY_FROBNICATE is not a relay setting; see the settings table in README.md",
    ),
    "short-secret": (
        {"RELAY_WEBHOOK_SECRETS": SHORT_SECRET},
        "RELAY_WEBHOOK_SECRETS: webhook secret #1 is 16 bytes; a signing secret needs at least 24",
    ),
    "no-secret-without-the-flag": (
        {"RELAY_WEBHOOK_SECRETS": ""},
        "RELAY_WEBHOOK_SECRETS is empty, so webhooks would go out unsigned: set a whsec_ secret "
        "of at least 24 bytes, or RELAY_WEBHOOK_ALLOW_UNSIGNED=true",
    ),
    "blank-http-token": (
        {"RELAY_HTTP_TOKEN": ""},
        "RELAY_HTTP_TOKEN is set but blank, which would leave the status page and "
        "/webhooks/deliveries open",
    ),
    "whitespace-http-token": ({"RELAY_HTTP_TOKEN": "  \t"}, "RELAY_HTTP_TOKEN is set but blank"),
    "http-token-with-a-newline": (
        {"RELAY_HTTP_TOKEN": "s3cret-token\n"},
        "RELAY_HTTP_TOKEN starts or ends with whitespace",
    ),
    "lease-shorter-than-timeout": (
        {"RELAY_WEBHOOK_LEASE_S": "5", "RELAY_WEBHOOK_TIMEOUT_S": "10"},
        "RELAY_WEBHOOK_LEASE_S must be longer than RELAY_WEBHOOK_TIMEOUT_S",
    ),
}


@pytest.mark.parametrize(("variables", "message"), MISTAKES.values(), ids=MISTAKES.keys())
def test_each_configuration_mistake_is_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str],
    message: str,
) -> None:
    code, lines = _relay_run(clean_env, capsys, **{**VALID, **variables})
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("relay run: invalid configuration: "), lines[0]
    assert message in lines[0]
    assert "Traceback" not in lines[0]
    assert "webhook_retry_schedule" not in lines[0], "variables, never internal field names"


def test_every_mistake_is_reported_at_once(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _relay_run(
        clean_env,
        capsys,
        RELAY_LOG_LEVEL="verbose",
        RELAY_LOG_FORMAT="yaml",
        RELAY_KAFKA_BOOSTRAP_SERVERS="x",
        RELAY_HTTP_PORT="eighty",
    )
    assert code == 2
    assert len(lines) == 1
    for variable in ("LOG_LEVEL", "LOG_FORMAT", "KAFKA_BOOSTRAP_SERVERS", "HTTP_PORT"):
        assert f"RELAY_{variable}" in lines[0]


def test_secrets_are_never_echoed_in_errors(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _relay_run(
        clean_env,
        capsys,
        RELAY_MINDVIDEO_API_KEY="mv_live_do-not-print",
        RELAY_WEBHOOK_SECRETS=f"{GOOD_SECRET},{SHORT_SECRET}",
        RELAY_REDIS_URL="redis://:hunter2@redis:6379/0",
        RELAY_HTTP_PORT="eighty",
    )
    assert code == 2
    text = "\n".join(lines)
    assert "webhook secret #2 is 16 bytes" in text
    for secret in ("do-not-print", GOOD_SECRET, SHORT_SECRET, "hunter2"):
        assert secret not in text


def test_exempt_prefixes_and_every_field_are_known(clean_env: pytest.MonkeyPatch) -> None:
    known = known_variables()
    assert unknown_variables(dict.fromkeys(known, "")) == []
    assert "RELAY_KAFKA_BOOTSTRAP_SERVERS" in known
    for name, value in {**VALID, "RELAY_SIM_PORT": "9000", "RELAY_TEST_REDIS_URL": "x"}.items():
        clean_env.setenv(name, value)
    assert load_service_settings().mindvideo_api_key.get_secret_value() == "mv_test_k"


def test_unsigned_delivery_needs_the_explicit_flag(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RELAY_MINDVIDEO_API_KEY", "mv_test_k")
    clean_env.setenv("RELAY_WEBHOOK_ALLOW_UNSIGNED", "true")
    assert load_service_settings().webhook_secrets == []
    clean_env.delenv("RELAY_WEBHOOK_ALLOW_UNSIGNED")
    clean_env.setenv("RELAY_WEBHOOKS_ENABLED", "false")  # nothing is signed: no secret needed
    assert load_service_settings().webhook_secrets == []


def test_log_settings_accept_any_case(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RELAY_LOG_LEVEL", "debug")
    clean_env.setenv("RELAY_LOG_FORMAT", "JSON")
    settings = RelaySettings()
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")


def test_settings_logs_hide_secrets_userinfo_and_webhook_paths(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("RELAY_WEBHOOK_SECRETS", GOOD_SECRET)
    clean_env.setenv("RELAY_MINDVIDEO_API_KEY", "mv_live_do-not-print")
    clean_env.setenv("RELAY_REDIS_URL", "rediss://relay:hunter2@redis.internal:6380/0")
    clean_env.setenv(
        "RELAY_WEBHOOK_DEFAULT_URL",
        "https://user:hookpass@hooks.example.com/in/abc?token=t0ken,https://b.example/x",
    )
    settings = RelaySettings()
    assert isinstance(settings.webhook_secrets[0], SecretStr)
    assert GOOD_SECRET not in repr(settings)
    full = repr(settings.redacted())
    for secret in (GOOD_SECRET, "do-not-print", "hunter2", "hookpass", "t0ken", "/in/abc"):
        assert secret not in full
    assert "rediss://***@redis.internal:6380/0" in full
    assert "https://hooks.example.com,https://b.example" in full
    compact = settings.compact()
    assert set(compact) == {
        "webhook_secrets",
        "mindvideo_api_key",
        "redis_url",
        "webhook_default_url",
    }, "only what was set explicitly"


@pytest.mark.parametrize("formatter", [JsonFormatter(), ReadableFormatter()], ids=["json", "text"])
def test_log_lines_never_show_url_userinfo(formatter: logging.Formatter) -> None:
    record = logging.LogRecord(
        "redis", logging.ERROR, __file__, 1, "failed on %s", ("redis://:hunter2@h:6379/0",), None
    )
    record.url = "https://user:pass@hooks.example.com/x"
    line = formatter.format(record)
    assert "hunter2" not in line
    assert "user:pass" not in line
    assert "redis://***@h:6379/0" in line


def test_a_blank_http_token_stops_the_process_before_it_serves_anything(tmp_path: Path) -> None:
    """As the attack-b operator did it: ``RELAY_HTTP_TOKEN=`` in a real ``relay run`` was taken as
    no token, the status page open. Now it exits 2 with one line, before any connection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(VALID, RELAY_HTTP_TOKEN="", RELAY_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    done = subprocess.run(
        [sys.executable, "-m", "relay", "run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "RELAY_HTTP_TOKEN is set but blank" in lines[0]
