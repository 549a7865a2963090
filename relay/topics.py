"""Create the relay's topics: for ``relay dev``, for the tests, and when an operator asks for it
(``RELAY_KAFKA_CREATE_TOPICS``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from relay.backoff import Backoff
from relay.exceptions import ConnectivityError
from relay.kafka import start_kafka_client

log = logging.getLogger(__name__)

TOPIC_READY_TIMEOUT_S = 30.0
_DESCRIBE_BACKOFF = Backoff(0.05, 1.0)

_ADMIN_REQUEST_TIMEOUT_MS = 5_000
_KAFKA_NO_ERROR = 0
_KAFKA_TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """The broker refused a topic, or it did not get leaders in time; the message says why."""


async def create_topics(
    kafka: str | Mapping[str, Any],
    names: Sequence[str],
    partitions: int = 1,
    *,
    exact: bool = True,
) -> None:
    """Create topics (an existing topic is fine) and wait until metadata shows them led.

    ``kafka`` is a plain-text bootstrap address or the options of
    :func:`relay.kafka.kafka_client_options` (TLS, SASL). Raises :class:`TopicError` if the
    broker refuses a topic, or, with ``exact``, if one already exists with a different
    partition count (a test relying on ``partitions`` would silently lie). The relay passes
    ``exact=False``: an operator's existing topics are theirs.
    """
    options = {"bootstrap_servers": kafka} if isinstance(kafka, str) else dict(kafka)
    bootstrap = str(options["bootstrap_servers"])
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=_ADMIN_REQUEST_TIMEOUT_MS)
    try:
        await start_kafka_client(admin, options)
        response = await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
        # Entries are (topic, error_code[, error_message]) depending on the protocol version.
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code not in (_KAFKA_NO_ERROR, _KAFKA_TOPIC_ALREADY_EXISTS):
                raise TopicError(f"{bootstrap} refused to create topic {name!r}: {entry!r}")
        await _wait_for_topics(admin, bootstrap, names, partitions if exact else None)
    finally:
        await admin.close()


async def _wait_for_topics(
    admin: AIOKafkaAdminClient, bootstrap: str, names: Sequence[str], partitions: int | None
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TOPIC_READY_TIMEOUT_S
    attempt = 0
    while True:
        described = await admin.describe_topics(list(names))
        pending = []
        for topic in described:
            found = topic["partitions"]
            if partitions is None:
                led = bool(found) and all(p["leader"] >= 0 for p in found)
            elif topic["error_code"] == _KAFKA_NO_ERROR and len(found) not in (0, partitions):
                raise TopicError(
                    f"topic {topic['topic']!r} on {bootstrap} has {len(found)} partitions, "
                    f"not {partitions}"
                )
            else:
                led = len(found) == partitions and all(p["leader"] >= 0 for p in found)
            if topic["error_code"] != _KAFKA_NO_ERROR or not led:
                pending.append(topic["topic"])
        if not pending:
            return
        if loop.time() >= deadline:
            raise TopicError(
                f"gave up after {TOPIC_READY_TIMEOUT_S:.0f}s waiting for topics {pending} "
                f"on {bootstrap} to have leaders"
            )
        await asyncio.sleep(_DESCRIBE_BACKOFF.delay_s(attempt + 1))
        attempt += 1


async def max_message_bytes(kafka: Mapping[str, Any], names: Sequence[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` as the broker reports it (DescribeConfigs), for the
    topics whose value it reports; ``{}`` when it cannot say (an old broker, no permission).

    The producer must never send a record the broker will refuse as too large: with idempotence
    on, a refused batch leaves a gap in the partition's sequence numbers and every later send
    to that partition fails for good (``OutOfOrderSequenceNumber``).
    """
    options = dict(kafka)
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=_ADMIN_REQUEST_TIMEOUT_MS)
    limits: dict[str, int] = {}
    try:
        await start_kafka_client(admin, options)
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        for response in await admin.describe_configs(resources):
            # resources: (error_code, error_message, resource_type, name, [(name, value, ...)])
            for resource in response.resources:
                for entry in resource[4]:
                    if entry[0] == "max.message.bytes" and str(entry[1]).isdigit():
                        limits[resource[3]] = int(entry[1])
    except (KafkaError, OSError, ConnectivityError, IndexError, TypeError) as exc:
        log.info("could not read the topics' max.message.bytes", extra={"reason": repr(exc)})
    finally:
        await admin.close()
    return limits
