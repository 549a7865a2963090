"""Start-up failures said in one line, and the start-up check that Redis keeps what we write.

Every command that talks to Kafka or Redis (``relay run``, ``relay dev``, ``relay submit``,
``relay webhooks replay``) turns a failure to start into a ``StartupError`` whose message names
the dependency, the address it tried (from the settings, credentials masked) and the ``RELAY_*``
variable to change; its ``exit_code`` is 2 for configuration and 1 for an unreachable dependency.
The classification is by the client library's exception class, so it holds whichever code built
the client.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiokafka.errors import KafkaConnectionError, KafkaError
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.exceptions import ConfigurationError, DependencyUnavailable, StartupError
from relay.logs import redact_url
from relay.settings import RelaySettings

log = logging.getLogger(__name__)

NOEVICTION = "noeviction"
KAFKA_SETTING = "RELAY_KAFKA_BOOTSTRAP_SERVERS"
REDIS_SETTING = "RELAY_REDIS_URL"


def quiet_kafka_client() -> None:
    """For the short-lived commands (``relay submit``, ``relay webhooks replay``): aiokafka logs
    each refused connection itself, but its failure reaches the command as an exception that
    becomes the one line naming the fix, so its own lines would only say it twice."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def redis_address(settings: RelaySettings) -> str:
    """``host:port`` of ``RELAY_REDIS_URL`` (never its password)."""
    parts = urlsplit(settings.redis_url)
    try:
        port = parts.port or 6379
    except ValueError:
        return redact_url(settings.redis_url)
    return f"{parts.hostname or '127.0.0.1'}:{port}" if parts.scheme else settings.redis_url


def redis_described(settings: RelaySettings) -> str:
    """Which Redis the settings lead to, for an operator reading a command's output: the URL with
    its userinfo masked, or the sentinels and master name in sentinel mode."""
    if settings.redis_mode == "sentinel":
        sentinels = ",".join(settings.redis_sentinels)
        return f"sentinel master {settings.redis_sentinel_master} via {sentinels}"
    return redact_url(settings.redis_url)


def describe_start_failure(exc: BaseException, settings: RelaySettings) -> StartupError:
    """The one-line ``StartupError`` for an exception that stopped a command from starting."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, RedisError):
        return _redis_failure(exc, settings)
    if isinstance(exc, KafkaError):
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, KafkaConnectionError) and "Unable to bootstrap" in reason:
            reason = "no bootstrap server answered"
        return DependencyUnavailable(
            "Kafka", settings.kafka_bootstrap_servers, KAFKA_SETTING, reason
        )
    return StartupError(f"{type(exc).__name__}: {exc}")


def _redis_failure(exc: RedisError, settings: RelaySettings) -> StartupError:
    address = redis_address(settings)
    reason = redact_url(str(exc)) or type(exc).__name__
    if isinstance(exc, AuthenticationError) or "NOAUTH" in reason or "WRONGPASS" in reason:
        return DependencyUnavailable(
            "Redis", address, f"the credentials in {REDIS_SETTING}", "authentication refused"
        )
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        cause = exc.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            return DependencyUnavailable(
                "Redis",
                address,
                "RELAY_REDIS_SSL_CAFILE (the CA that signed the server's certificate)",
                f"certificate verify failed: {cause.verify_message}",
            )
        if isinstance(cause, ssl.SSLError):
            return DependencyUnavailable(
                "Redis", address, REDIS_SETTING, f"TLS handshake failed: {cause.reason or cause}"
            )
        reason = _socket_reason(cause) or reason
    return DependencyUnavailable("Redis", address, REDIS_SETTING, reason)


def _socket_reason(cause: BaseException | None) -> str | None:
    """ "connection refused" rather than redis-py's "Error 111 connecting to h:p. Connect call
    failed ('h', p).": the address is already in the message."""
    if isinstance(cause, socket.gaierror):
        return str(cause.strerror).lower()
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
        return os.strerror(cause.errno).lower()
    return None


class _ConfigReader(Protocol):
    """What the check needs of a Redis client (standalone, cluster or sentinel-managed)."""

    def config_get(self, pattern: str = ..., *args: str) -> Awaitable[Any]: ...

    def info(self, section: str | None = ..., *args: str) -> Awaitable[Any]: ...


async def read_eviction_policy(redis: _ConfigReader) -> str | None:
    """Redis's ``maxmemory-policy``: from ``CONFIG GET``, else from ``INFO memory``.

    Managed services (ElastiCache, MemoryDB, some Azure tiers) disable or rename ``CONFIG``
    but still report ``maxmemory_policy`` in ``INFO``. ``None`` when neither answers.
    """
    try:
        reply = await redis.config_get("maxmemory-policy")
    except ResponseError:
        reply = {}
    policy = _text(_lookup(reply, "maxmemory-policy"))
    if policy:
        return policy
    try:
        info = await redis.info("memory")
    except ResponseError:
        return None
    return _text(_lookup(info, "maxmemory_policy")) or None


async def check_eviction_policy(
    redis: _ConfigReader,
    settings: RelaySettings,
    on_allowed: Callable[[], object] | None = None,
) -> str | None:
    """Refuse a Redis that may evict the relay's state unless the operator accepted it.

    An evicted idempotency record lets a replayed request be submitted (and charged) again; an
    evicted delivery is a webhook never sent. So anything but ``noeviction`` (or a policy that
    cannot be read at all) is a ``ConfigurationError`` unless ``RELAY_REDIS_ALLOW_EVICTION=true``,
    in which case it is a warning and ``on_allowed()`` is called (to set a metric).
    """
    policy = await read_eviction_policy(redis)
    if policy == NOEVICTION:
        return policy
    address = redis_address(settings)
    what = (
        f"maxmemory-policy {policy}"
        if policy
        else "a maxmemory-policy the relay cannot read (CONFIG GET and INFO were refused)"
    )
    if not settings.redis_allow_eviction:
        raise ConfigurationError(
            [
                f"Redis at {address} has {what}: evicted keys are lost idempotency records and "
                "webhook deliveries (a request charged twice, a webhook never sent); set "
                "maxmemory-policy noeviction on that Redis, or RELAY_REDIS_ALLOW_EVICTION=true "
                "to run anyway"
            ]
        )
    log.warning(
        "Redis may evict the relay's state (RELAY_REDIS_ALLOW_EVICTION=true)",
        extra={"redis": address, "maxmemory_policy": policy or "unknown"},
    )
    if on_allowed is not None:
        on_allowed()
    return policy


def _lookup(reply: Any, name: str) -> Any:
    if not isinstance(reply, dict):
        return None
    return reply.get(name, reply.get(name.encode()))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
