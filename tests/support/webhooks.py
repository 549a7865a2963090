"""Shared pieces of the webhook integration tests: relay settings, topic reading, metrics."""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from standardwebhooks import Webhook

from tests.support.pipeline import Pipeline, relay_metric
from tests.support.services import TopicFactory
from tests.support.webhook_receiver import Delivery

MODEL = "apimart-doubao-seedance-4-0"
OLD_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
NEW_SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


def webhook_env(dlq_topic: str, **overrides: str) -> dict[str, str]:
    """Relay settings for webhook tests: receivers are on loopback, so 127.0.0.1 is allowed."""
    env = {
        "RELAY_WEBHOOK_SECRETS": f"{OLD_SECRET},{NEW_SECRET}",
        "RELAY_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "RELAY_WEBHOOK_DEAD_LETTER_TOPIC": dlq_topic,
        "RELAY_WEBHOOK_POLL_INTERVAL_S": "0.2",
        "RELAY_WEBHOOK_CONNECT_TIMEOUT_S": "1",
        "RELAY_WEBHOOK_TIMEOUT_S": "2",
        "RELAY_WEBHOOK_LEASE_S": "4",
        "RELAY_WEBHOOK_BREAKER_COOLDOWN_S": "0.5",
        "RELAY_SHUTDOWN_GRACE_S": "3",
    }
    env.update(overrides)
    return env


async def webhook_dlq(pipeline: Pipeline, topics: TopicFactory) -> str:
    (name,) = await topics(pipeline.bootstrap, "webhooks-dlq", partitions=2)
    return name


def request(key: str, webhook_url: str | None = None) -> tuple[bytes, bytes]:
    body: dict[str, object] = {"idempotency_key": key, "model": MODEL, "input": {"prompt": key}}
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    return key.encode(), json.dumps(body).encode()


@dataclass
class Record:
    key: str
    value: bytes
    timestamp_ms: int
    headers: dict[str, bytes]


async def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float) -> list[Record]:
    """Read ``topic`` from the start until ``count`` records came or the timeout passed."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(
                    Record((r.key or b"").decode(), r.value, r.timestamp, dict(r.headers))
                    for r in records
                )
    finally:
        await consumer.stop()
    return out


metric = relay_metric  # the webhook tests' name for it


def verified(delivery: Delivery) -> dict[str, object]:
    """The delivery verified by the standardwebhooks package, with each active secret."""
    parsed: dict[str, object] = Webhook(OLD_SECRET).verify(delivery.body, delivery.headers)
    assert Webhook(NEW_SECRET).verify(delivery.body, delivery.headers) == parsed
    return parsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
