"""Production connectivity settings (DESIGN §8) without any service: what each Kafka client is
given, which combinations are refused at start (naming the variable), which Redis client each
mode builds, and how RELAY_ROLE and the older RELAY_WEBHOOKS_ENABLED agree."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.exceptions import RedisError

from relay.kafka import kafka_client_options
from relay.redis import ScriptingRedisCluster, SentinelMaster, redis_client
from relay.settings import RelaySettings
from tests.support.services import free_port
from tests.support.tls import TlsFiles, write_tls_files

PASSWORD = "pa55-w0rd-never-logged"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> RelaySettings:
    for name, value in env.items():
        monkeypatch.setenv(f"RELAY_{name}", value)
    return RelaySettings()


def _refused(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    with pytest.raises(ValidationError) as refused:
        _settings(monkeypatch, **env)
    return str(refused.value)


def test_plaintext_is_the_default_and_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    options = kafka_client_options(_settings(monkeypatch, KAFKA_BOOTSTRAP_SERVERS="k:9092"))
    assert options == {"bootstrap_servers": "k:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_scram(monkeypatch: pytest.MonkeyPatch, tls: TlsFiles) -> None:
    settings = _settings(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="sasl_ssl",  # case does not matter
        KAFKA_SASL_MECHANISM="scram-sha-512",
        KAFKA_SASL_USERNAME="relay",
        KAFKA_SASL_PASSWORD=PASSWORD,
        KAFKA_SSL_CAFILE=str(tls.ca),
    )
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "relay"
    assert options["sasl_plain_password"] == PASSWORD
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.redacted())


def test_mutual_tls_without_hostname_check(monkeypatch: pytest.MonkeyPatch, tls: TlsFiles) -> None:
    settings = _settings(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SSL",
        KAFKA_SSL_CAFILE=str(tls.ca),
        KAFKA_SSL_CERTFILE=str(tls.client_cert),
        KAFKA_SSL_KEYFILE=str(tls.client_key),
        KAFKA_SSL_CHECK_HOSTNAME="false",
    )
    options = kafka_client_options(settings)
    assert "sasl_mechanism" not in options
    assert not options["ssl_context"].check_hostname
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED, "the chain is still checked"


def test_sasl_plaintext_has_no_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    options = kafka_client_options(
        _settings(
            monkeypatch,
            KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            KAFKA_SASL_MECHANISM="PLAIN",
            KAFKA_SASL_USERNAME="u",
            KAFKA_SASL_PASSWORD="p",
        )
    )
    assert "ssl_context" not in options
    assert options["sasl_mechanism"] == "PLAIN"


def test_impossible_kafka_combinations_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles, tmp_path: Path
) -> None:
    message = _refused(monkeypatch, KAFKA_SECURITY_PROTOCOL="SASL_SSL")
    for name in ("MECHANISM", "USERNAME", "PASSWORD"):
        assert f"SASL_SSL needs RELAY_KAFKA_SASL_{name}" in message
    monkeypatch.delenv("RELAY_KAFKA_SECURITY_PROTOCOL")
    message = _refused(monkeypatch, KAFKA_SASL_USERNAME="u", KAFKA_SASL_PASSWORD=PASSWORD)
    assert "RELAY_KAFKA_SASL_USERNAME is set but RELAY_KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in message
    assert PASSWORD not in message, "a refused setting is not echoed"
    for name in ("USERNAME", "PASSWORD"):
        monkeypatch.delenv(f"RELAY_KAFKA_SASL_{name}")
    message = _refused(monkeypatch, KAFKA_SSL_CAFILE=str(tls.ca), KAFKA_SSL_CHECK_HOSTNAME="false")
    for name in ("CAFILE", "CHECK_HOSTNAME"):
        assert (
            f"RELAY_KAFKA_SSL_{name} is set but RELAY_KAFKA_SECURITY_PROTOCOL=PLAINTEXT" in message
        )
    monkeypatch.delenv("RELAY_KAFKA_SSL_CHECK_HOSTNAME")
    message = _refused(
        monkeypatch, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CERTFILE=str(tls.client_cert)
    )
    assert "RELAY_KAFKA_SSL_CERTFILE is set without RELAY_KAFKA_SSL_KEYFILE" in message
    message = _refused(monkeypatch, KAFKA_SSL_CAFILE=str(tmp_path / "missing.pem"))
    assert f"RELAY_KAFKA_SSL_CAFILE={tmp_path / 'missing.pem'}: No such file" in message
    monkeypatch.delenv("RELAY_KAFKA_SSL_CERTFILE")
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    message = _refused(monkeypatch, KAFKA_SSL_CAFILE=str(not_pem))
    assert "RELAY_KAFKA_SSL_CAFILE" in message
    assert "not a PEM CA bundle" in message
    message = _refused(
        monkeypatch,
        KAFKA_SSL_CAFILE=str(tls.ca),
        KAFKA_SSL_CERTFILE=str(tls.client_cert),
        KAFKA_SSL_KEYFILE=str(tls.server_key),  # another certificate's key
    )
    assert "RELAY_KAFKA_SSL_CERTFILE and RELAY_KAFKA_SSL_KEYFILE" in message


def test_unknown_protocol_or_mechanism_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "kafka_security_protocol" in _refused(monkeypatch, KAFKA_SECURITY_PROTOCOL="TLS")
    monkeypatch.delenv("RELAY_KAFKA_SECURITY_PROTOCOL")
    assert "kafka_sasl_mechanism" in _refused(monkeypatch, KAFKA_SASL_MECHANISM="GSSAPI")


def test_redis_modes_build_their_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    standalone = redis_client(_settings(monkeypatch, REDIS_URL="redis://r:6379/2"))
    assert standalone.connection_pool.connection_kwargs["db"] == 2  # type: ignore[union-attr]
    cluster = redis_client(
        _settings(monkeypatch, REDIS_URL="redis://node-1:7000", REDIS_MODE="cluster")
    )
    assert isinstance(cluster, ScriptingRedisCluster)
    sentinel = redis_client(
        _settings(
            monkeypatch,
            REDIS_URL="redis://:master-secret@ignored:1/3",
            REDIS_MODE="sentinel",
            REDIS_SENTINELS="s1:26379, s2:26380",
            REDIS_SENTINEL_MASTER="mymaster",
        )
    )
    assert isinstance(sentinel, SentinelMaster)
    assert sentinel.sentinel_manager is not None
    addresses = [
        c.connection_pool.connection_kwargs["port"] for c in sentinel.sentinel_manager.sentinels
    ]
    assert addresses == [26379, 26380]
    kwargs = sentinel.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"]) == (3, "master-secret")


def test_redis_tls_takes_the_ca_file(monkeypatch: pytest.MonkeyPatch, tls: TlsFiles) -> None:
    client = redis_client(
        _settings(monkeypatch, REDIS_URL="rediss://r:6380/0", REDIS_SSL_CAFILE=str(tls.ca))
    )
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(tls.ca)  # type: ignore[union-attr]


def test_impossible_redis_combinations_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tls: TlsFiles
) -> None:
    message = _refused(monkeypatch, REDIS_MODE="sentinel")
    assert "RELAY_REDIS_MODE=sentinel needs RELAY_REDIS_SENTINELS" in message
    assert "RELAY_REDIS_MODE=sentinel needs RELAY_REDIS_SENTINEL_MASTER" in message
    message = _refused(monkeypatch, REDIS_SENTINELS="s1", REDIS_SENTINEL_MASTER="m")
    assert "RELAY_REDIS_SENTINELS: 's1' is not host:port" in message
    monkeypatch.delenv("RELAY_REDIS_MODE")
    assert "is set but RELAY_REDIS_MODE=standalone" in _refused(monkeypatch)
    for name in ("SENTINELS", "SENTINEL_MASTER"):
        monkeypatch.delenv(f"RELAY_REDIS_{name}")
    message = _refused(monkeypatch, REDIS_SSL_CAFILE=str(tls.ca))
    assert "RELAY_REDIS_SSL_CAFILE is set but RELAY_REDIS_URL is not rediss://" in message
    message = _refused(monkeypatch, REDIS_URL="redis://r:1/4", REDIS_MODE="cluster")
    assert "Redis Cluster has only database 0" in message
    assert "must start with redis://" in _refused(monkeypatch, REDIS_URL="http://r:1/0")


def test_passwords_in_redis_settings_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(
        monkeypatch,
        REDIS_URL=f"redis://default:{PASSWORD}@r:6379/0",
        REDIS_MODE="sentinel",
        REDIS_SENTINELS="s:26379",
        REDIS_SENTINEL_MASTER="m",
        REDIS_SENTINEL_PASSWORD=PASSWORD,
    )
    redacted = settings.redacted()
    assert redacted["redis_url"] == "redis://***@r:6379/0"  # the whole userinfo hidden
    assert PASSWORD not in str(redacted)


@pytest.mark.parametrize(
    ("env", "role", "webhooks"),
    [
        ({}, "all", True),
        ({"ROLE": "requests"}, "requests", False),
        ({"ROLE": "webhooks"}, "webhooks", True),
        ({"WEBHOOKS_ENABLED": "false"}, "requests", False),  # the older spelling
        ({"ROLE": "all", "WEBHOOKS_ENABLED": "true"}, "all", True),
        ({"ROLE": "webhooks", "WEBHOOKS_ENABLED": "true"}, "webhooks", True),
    ],
)
def test_role(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], role: str, webhooks: bool
) -> None:
    settings = _settings(monkeypatch, **env)
    assert (settings.role, settings.webhooks_enabled) == (role, webhooks)


@pytest.mark.parametrize(
    "env",
    [
        {"ROLE": "requests", "WEBHOOKS_ENABLED": "true"},
        {"ROLE": "webhooks", "WEBHOOKS_ENABLED": "false"},
    ],
)
def test_role_and_webhooks_enabled_must_agree(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    message = _refused(monkeypatch, **env)
    assert f"RELAY_ROLE={env['ROLE']} and RELAY_WEBHOOKS_ENABLED=" in message
    assert "disagree" in message


def test_unknown_role_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "role" in _refused(monkeypatch, ROLE="both")


async def test_cluster_trouble_is_a_redis_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stores retry RedisError; redis-py raises an unreachable cluster outside that tree."""
    client = redis_client(
        _settings(monkeypatch, REDIS_URL=f"redis://127.0.0.1:{free_port()}", REDIS_MODE="cluster")
    )
    try:
        with pytest.raises(RedisError, match="RedisClusterException"):
            await client.ping()
    finally:
        await client.aclose()
