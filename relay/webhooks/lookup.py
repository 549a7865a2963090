"""Delivery lookup by idempotency key: ``relay webhooks status --key K`` and
``GET /webhooks/deliveries?key=K``.

Shows every attempt of every delivery of the key — when, to which origin, the status or error,
the latency, and the next due time — from the retry state in Redis (pending deliveries and the
tombstones of finished ones, kept for ``RELAY_WEBHOOK_DONE_RETENTION_S``) and from the webhook
dead-letter topic. Only the key's partition of the topic is read (dead letters are keyed by the
idempotency key), from ``since_s`` ago, for at most ``DEAD_LETTER_SCAN_S``. Endpoints are shown
as origins: a path or query may carry a receiver's token.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from pydantic import ValidationError

from relay.kafka import kafka_client_options
from relay.models import WebhookDeadLetter
from relay.origins import origin_of
from relay.redis import pipeline, redis_client
from relay.settings import RelaySettings
from relay.startup import redis_described
from relay.webhooks.deliveries import DeliveryStore, store_from_settings, text_of
from relay.webhooks.history import (
    AttemptRecord,
    decode_compact,
    decode_history,
    decode_tombstones,
    id_prefix,
)

DEAD_LETTER_SCAN_S = 10.0
FETCH_TIMEOUT_MS = 500
_PENDING_FIELDS = (
    *("endpoint", "event_id", "type", "attempts", "last_status", "last_error"),
    *("lease", "hist"),
)


def iso(unix_s: float | None) -> str | None:
    if unix_s is None:
        return None
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds")


def _attempts(records: list[AttemptRecord], origin: str) -> list[dict[str, Any]]:
    return [
        {
            "at": iso(r.at_ms / 1000),
            "origin": origin,
            "status": r.status,
            "outcome": r.outcome,
            "latency_ms": r.latency_ms,
        }
        for r in records
    ]


async def key_deliveries(store: DeliveryStore, key: str, now: float) -> list[dict[str, Any]]:
    """The key's deliveries in Redis: pending ones first, then finished ones, oldest first."""
    shard = store.shard_of(key)
    done_keys = store.done_keys(shard, now)
    async with pipeline(store.redis) as pipe:
        pipe.hget(store.index_keys(shard)[0], key)
        pipe.hget(store.record_key(key), "w")
        for name in reversed(done_keys):  # oldest bucket first
            pipe.hget(name, key)
        raw_ids, compact, *tombs = await pipe.execute()
    ids = text_of(raw_ids).split() if raw_ids else []
    async with pipeline(store.redis) as pipe:
        for delivery_id in ids:
            pipe.hmget(store.hash_key(shard, delivery_id), _PENDING_FIELDS)
            pipe.zscore(store.due_key(shard), delivery_id)
        rows = await pipe.execute()
    out: list[dict[str, Any]] = []
    for delivery_id, values, due in zip(ids, rows[::2], rows[1::2], strict=True):
        texts = [text_of(v) if v is not None else "" for v in values]
        f = dict(zip(_PENDING_FIELDS, texts, strict=True))
        if not f["endpoint"]:
            continue  # finished between the two reads
        origin = origin_of(f["endpoint"])
        attempts = _attempts(decode_history(f["hist"]), origin)
        if attempts and f["last_error"]:
            attempts[-1]["error"] = f["last_error"]
        out.append(
            {
                "delivery_id": id_prefix(delivery_id),
                "event_id": f["event_id"],
                "type": f["type"],
                "origin": origin,
                "state": "in_flight" if f["lease"] else "pending",
                "next_due_at": None if f["lease"] or due is None else iso(float(due)),
                "attempts_made": int(f["attempts"] or 0),
                "attempts": attempts,
            }
        )
    out += await _compact_deliveries(store, done_keys, text_of(compact) if compact else "")
    for value in tombs:
        for t in decode_tombstones(text_of(value)) if value else []:
            out.append(
                {
                    "delivery_id": t.id_prefix,
                    "type": t.type,
                    "origin": t.origin,
                    "state": t.finished,
                    "next_due_at": None,
                    "attempts_made": len(t.attempts),
                    "attempts": _attempts(t.attempts, t.origin),
                }
            )
    return out


async def _compact_deliveries(
    store: DeliveryStore, done_keys: list[str], value: str
) -> list[dict[str, Any]]:
    """The deliveries that got 200 at their first attempt, from the key's idempotency record;
    their origins from the names the shard's tombstone buckets keep."""
    found = decode_compact(value)
    if not found:
        return []
    async with pipeline(store.redis) as pipe:
        for c in found:
            for name in done_keys:
                pipe.hget(name, f"o:{c.origin_ref}")
        names = await pipe.execute()
    out = []
    for i, c in enumerate(found):
        candidates = names[i * len(done_keys) : (i + 1) * len(done_keys)]
        origin = next((text_of(n) for n in candidates if n is not None), None)
        out.append(
            {
                "delivery_id": c.id_prefix,
                "type": c.type,
                "origin": origin,
                "state": "delivered",
                "next_due_at": None,
                "attempts_made": 1,
                "attempts": _attempts([c.attempt], origin or "?"),
            }
        )
    return out


@dataclass
class DeadLetterSearch:
    """What the dead-letter topic holds for one key (its partition, since a time)."""

    partition: int | None = None
    since: str | None = None
    records_read: int = 0
    complete: bool = True
    letters: list[dict[str, Any]] = field(default_factory=list)


async def dead_letters_for_key(
    consumer: AIOKafkaConsumer, topic: str, key: str, since_s: float
) -> DeadLetterSearch:
    """Read the key's partition of ``topic`` from ``since_s`` ago to its end (bounded in time)."""
    search = DeadLetterSearch()
    await consumer.topics()
    partitions = sorted(consumer.partitions_for_topic(topic) or ())
    if not partitions:
        return search
    tp = TopicPartition(topic, DefaultPartitioner()(key.encode(), partitions, partitions))
    search.partition = tp.partition
    since_ms = int((time.time() - since_s) * 1000)
    search.since = iso(since_ms / 1000)
    consumer.assign([tp])
    found = (await consumer.offsets_for_times({tp: since_ms})).get(tp)
    end = (await consumer.end_offsets([tp]))[tp]
    if found is None:
        return search  # nothing that recent
    consumer.seek(tp, found.offset)
    deadline = time.monotonic() + DEAD_LETTER_SCAN_S
    while await consumer.position(tp) < end:
        if time.monotonic() > deadline:
            search.complete = False
            break
        batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS)
        for record in batch.get(tp, []):
            if record.offset >= end:
                break
            search.records_read += 1
            if (record.key or b"").decode("utf-8", "replace") != key:
                continue
            try:
                letter = WebhookDeadLetter.from_record(record.key, list(record.headers or ()))
            except (KeyError, ValueError, ValidationError):
                continue
            search.letters.append(
                {
                    "dead_lettered_at": iso(record.timestamp / 1000),
                    "event_id": letter.event_id,
                    "type": letter.type,
                    "origin": origin_of(letter.endpoint),
                    "reason": letter.reason,
                    "attempts": letter.attempts,
                    "last_status": letter.last_status,
                    "last_error": letter.last_error,
                }
            )
    return search


def dead_letter_consumer(settings: RelaySettings, purpose: str) -> AIOKafkaConsumer:
    """A consumer without a group for reading the webhook dead-letter topic."""
    return AIOKafkaConsumer(
        **kafka_client_options(settings),
        client_id=f"{settings.kafka_client_id}-{purpose}",
        group_id=None,
        enable_auto_commit=False,
    )


async def lookup_key(
    settings: RelaySettings, store: DeliveryStore, key: str, *, dead_letters: bool = True
) -> dict[str, Any]:
    """The lookup document of ``key``: its deliveries in Redis and, unless ``dead_letters`` is
    false, its records on the dead-letter topic since the done-retention."""
    doc: dict[str, Any] = {
        "key": key,
        "shard": store.shard_of(key),
        "deliveries": await key_deliveries(store, key, time.time()),
    }
    if not dead_letters:
        return doc
    consumer = dead_letter_consumer(settings, "lookup")
    try:
        await consumer.start()
        search = await dead_letters_for_key(
            consumer, settings.webhook_dead_letter_topic, key, settings.webhook_done_retention_s
        )
        doc["dead_letters"] = asdict(search)
    except KafkaError as exc:
        doc["dead_letters_error"] = repr(exc)
    finally:
        await consumer.stop()
    return doc


async def lookup_cli(
    settings: RelaySettings, key: str, *, dead_letters: bool = True
) -> dict[str, Any]:
    """``relay webhooks status --key``: the lookup with clients of its own."""
    redis = redis_client(settings)
    try:
        store = store_from_settings(redis, settings)
        doc = await lookup_key(settings, store, key, dead_letters=dead_letters)
    finally:
        await redis.aclose()
    # Which Redis was read: an empty answer from the wrong one must not look like "nothing sent".
    doc["redis"] = {"address": redis_described(settings), "prefix": settings.redis_key_prefix}
    return doc


def format_text(doc: dict[str, Any]) -> str:
    """The lookup document as the CLI prints it: one line per attempt."""
    where = doc.get("redis")
    at = f" at {where['address']} (prefix {where['prefix']})" if where else ""
    lines = [f"key {doc['key']}: {len(doc['deliveries'])} deliveries in Redis{at}"]
    for d in doc["deliveries"]:
        due = f", next attempt {d['next_due_at']}" if d.get("next_due_at") else ""
        target = f" -> {d['origin']}" if d.get("origin") else ""
        lines.append(
            f"  {d['delivery_id']} {d['type']}{target}: {d['state']}, "
            f"{d['attempts_made']} attempts{due}"
        )
        for a in d["attempts"]:
            what = a["status"] if a["status"] is not None else a["outcome"]
            error = f" ({a['error']})" if a.get("error") else ""
            lines.append(f"    {a['at']}  {what}{error}  {a['latency_ms']} ms")
    if doc.get("dead_letters_error"):
        lines.append(f"dead letters: not read ({doc['dead_letters_error']})")
    dlq = doc.get("dead_letters")
    if dlq is not None:
        scope = f"partition {dlq['partition']} since {dlq['since']}, {dlq['records_read']} read"
        if not dlq["complete"]:
            scope += ", search cut short"
        lines.append(f"dead letters ({scope}): {len(dlq['letters'])}")
        for letter in dlq["letters"]:
            lines.append(
                f"  {letter['dead_lettered_at']} {letter['type']} -> {letter['origin']}: "
                f"{letter['reason']} after {letter['attempts']} attempts, last "
                f"{letter['last_status'] or ''} {letter['last_error'] or ''}".rstrip()
            )
    return "\n".join(lines)
