"""The idempotency store in Redis: one hash per idempotency key (DESIGN §4).

States (``KeyState``) move forward only: ``claimed`` → ``submitted`` → ``terminal`` →
``published``, or ``rejected`` when MindVideo refused the request. Each record keeps the payload
fingerprint, task and request ids, the last event id seen, timestamps and the result once known;
once the result is published it shrinks to a small tombstone (docs/contracts.md §4) that the
webhook side also marks its first-attempt deliveries in (field ``w``). The result is published
once per key: the publish is a compare-and-set with a lease (``take_publish``). The scripts are in
``relay.pipeline.idempotency_scripts``.
The claim is one Lua script, so two owners cannot both see a key as new; every other write is one
script too, touching one hash and resetting its retention atomically. Key names carry the
idempotency key in a hash tag, so a Redis Cluster keeps each record on one slot.

Thousands of requests in flight each make a handful of these calls; they are sent in batches
(``relay.pipeline.batching``). The last event id of a stream is written behind, with the next
batch: it only shortens a replay after a restart, and is never waited for.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from redis.exceptions import RedisError

from relay.models import RESULT_TYPE_CODES, ResultRecord, event_id_for, format_ts
from relay.pipeline import idempotency_scripts as scripts
from relay.pipeline.batching import RedisBatcher
from relay.redis import RedisClient

ClaimOutcome = Literal["new", "conflict", "existing"]
RefusalStatus = Literal["new", "seen", "in_use"]


class KeyState(StrEnum):
    """Where an idempotency key stands, as stored in its Redis hash (field ``state``)."""

    CLAIMED = "claimed"  # a valid request took the key; nothing submitted yet
    SUBMITTED = "submitted"  # MindVideo created the task; it is being followed
    TERMINAL = "terminal"  # the result is known and stored, not yet published
    PUBLISHED = "published"  # the result is on the results topic
    REJECTED = "rejected"  # MindVideo refused the request; the rejection is published


# Tombstones (a published or rejected record) keep short field names and values so Redis keeps
# them in its compact listpack encoding (docs/contracts.md §4): ``s`` state and result type codes,
# ``fp`` the first FP_TOMBSTONE_CHARS hex digits of the fingerprint (64 bits: a different payload
# under the same key matches by chance with odds of 2^-64), ``t`` task id, ``p`` published (unix
# seconds), ``w`` the webhook deliveries done (relay.webhooks.history.CompactDone), plus any
# ``seen:`` once-markers.
FP_TOMBSTONE_CHARS = 16
TOMBSTONE_STATES = {KeyState.PUBLISHED: "p", KeyState.REJECTED: "r"}
_TOMBSTONE_STATE_OF = {v: k for k, v in TOMBSTONE_STATES.items()}
_RESULT_TYPE_OF = {v: k for k, v in RESULT_TYPE_CODES.items()}

# States in which a key belongs to a request: no record-level rejection is published for it.
IN_USE_STATES = frozenset(
    {KeyState.CLAIMED, KeyState.SUBMITTED, KeyState.TERMINAL, KeyState.PUBLISHED}
)


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What the store knows about one key."""

    state: KeyState
    task_id: str | None = None
    request_id: str | None = None
    last_event_id: str | None = None
    cost_estimate: float | None = None
    submitted_at: str | None = None
    result: ResultRecord | None = None
    model: str | None = None
    owner_metadata: str | None = None  # the first claim's ``metadata`` as JSON (until published)
    owner_webhook_url: str | None = None  # the first claim's ``webhook_url``, "" for none
    result_type: str | None = None  # of a tombstone: the published result's ``type``
    published_at: str | None = None  # of a tombstone: when the result was published
    short_fp: str | None = None  # of a tombstone: the payload's short fingerprint

    def event_id(self, idempotency_key: str) -> str | None:
        """The published result's ``event_id`` (derived: stable per key and type, and for a
        rejection per payload: ``relay.models.rejection``)."""
        if self.result is not None:
            return self.result.event_id
        if self.result_type is None:
            return None
        if self.result_type == "request.rejected":
            return event_id_for(idempotency_key, self.result_type, self.short_fp or "")
        return event_id_for(idempotency_key, self.result_type)


@dataclass(frozen=True, slots=True)
class PublishTurn:
    outcome: Literal["won", "busy", "done"]
    body: bytes | None = None  # with ``won``: the stored result, to publish byte for byte


class PublishInProgress(RedisError):
    """Another process holds the key's publish lease: retried (an outage-like wait), until it
    published (then a dedupe) or its lease ran out (then this one publishes)."""


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    record: IdempotencyRecord | None = None


class IdempotencyStore:
    """Reads and writes idempotency records; the retention restarts with every write."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str,
        retention_s: int,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._retention_s = retention_s
        self._claim = redis.register_script(scripts.CLAIM_LUA)
        self._submitted = redis.register_script(scripts.SUBMITTED_LUA)
        self._mark_once = redis.register_script(scripts.MARK_ONCE_LUA)
        self._tombstone_script = redis.register_script(scripts.TOMBSTONE_LUA)
        self._take_publish = redis.register_script(scripts.TAKE_PUBLISH_LUA)
        self._take_once = redis.register_script(scripts.TAKE_ONCE_LUA)
        self._wall_clock = wall_clock
        self._batcher = RedisBatcher(redis)
        self._event_ids: dict[str, str] = {}

    def key(self, idempotency_key: str) -> str:
        return record_key(self._prefix, idempotency_key)

    async def claim(
        self,
        idempotency_key: str,
        fingerprint: str,
        model: str,
        now: str,
        *,
        metadata_json: str = "null",
        webhook_url: str | None = None,
    ) -> Claim:
        """Claim the key for this payload, or report a conflict or what is already known.

        A new claim stores the owner's ``metadata`` (JSON) and ``webhook_url`` until the result
        is published: the result is built from them, whoever follows the task to its end (a
        record with the same key and payload from another producer does not redirect it)."""
        keys = [self.key(idempotency_key)]
        args: list[str | int] = [
            fingerprint,
            now,
            self._retention_s,
            model,
            metadata_json,
            webhook_url or "",
        ]
        reply = await self._batcher.call(
            lambda pipe: self._claim(keys=keys, args=args, client=pipe)
        )
        outcome = _text(reply[0])
        if outcome == "new":
            return Claim("new")
        if outcome == "conflict":
            return Claim("conflict")
        fields = {_text(k): _text(v) for k, v in zip(reply[1::2], reply[2::2], strict=True)}
        return Claim("existing", _record(fields))

    async def mark_submitted(
        self,
        idempotency_key: str,
        *,
        task_id: str,
        request_id: str | None,
        cost_estimate: float | None,
        submitted_at: str,
    ) -> bool:
        """Record the task; whether this call did (``False``: another owner recorded it first)."""
        fields = {"state": KeyState.SUBMITTED, "task_id": task_id, "submitted_at": submitted_at}
        if request_id is not None:
            fields["request_id"] = request_id
        if cost_estimate is not None:
            fields["cost_estimate"] = repr(cost_estimate)
        keys = [self.key(idempotency_key)]
        args: list[str | int] = [self._retention_s, *(v for pair in fields.items() for v in pair)]
        first = await self._batcher.call(
            lambda pipe: self._submitted(keys=keys, args=args, client=pipe)
        )
        return bool(first)

    async def mark_event(self, idempotency_key: str, last_event_id: str) -> None:
        """Remember where the task's event stream got to; written behind, not waited for.

        Events that come in a burst cost one write: the latest id of a key not yet sent wins.
        """
        key = self.key(idempotency_key)
        waiting = key in self._event_ids
        self._event_ids[key] = last_event_id
        if not waiting:
            self._batcher.call_behind(
                lambda pipe: pipe.hset(key, "last_event_id", self._event_ids.pop(key))
            )

    async def take_publish(
        self, idempotency_key: str, result_json: bytes, token: str, lease_s: int
    ) -> PublishTurn:
        """Whether this process publishes the key's result: ``won`` (with the stored result, to
        be published as is), ``busy`` (another holds the publish lease: try again later; when
        the holder dies the lease passes) or ``done`` (published already)."""
        keys = [self.key(idempotency_key)]
        args: list[str | int] = [self._retention_s, result_json.decode(), token, lease_s]
        reply = await self._batcher.call(
            lambda pipe: self._take_publish(keys=keys, args=args, client=pipe)
        )
        outcome = _text(reply[0])
        if outcome == "won":
            return PublishTurn("won", _text(reply[1]).encode() if len(reply) > 1 else result_json)
        return PublishTurn("busy" if outcome == "busy" else "done")

    async def mark_published(
        self, idempotency_key: str, result: ResultRecord, fingerprint: str | None = None
    ) -> None:
        """The result is on the results topic: the record shrinks to its tombstone.

        ``fingerprint``: the request's payload fingerprint, written into the tombstone even when
        the record is gone (Redis restarted empty between the publish and this mark)."""
        await self._tombstone(idempotency_key, KeyState.PUBLISHED, result, fingerprint)

    async def mark_rejected(
        self, idempotency_key: str, result: ResultRecord, fingerprint: str | None = None
    ) -> None:
        """MindVideo refused the request and the rejection is published: a tombstone too (a
        corrected payload may claim the key again)."""
        await self._tombstone(idempotency_key, KeyState.REJECTED, result, fingerprint)

    async def _tombstone(
        self,
        idempotency_key: str,
        state: KeyState,
        result: ResultRecord,
        fingerprint: str | None,
    ) -> None:
        fields: dict[str, str | int] = {
            "s": TOMBSTONE_STATES[state] + RESULT_TYPE_CODES.get(result.type, "?"),
            "p": int(self._wall_clock()),
        }
        if result.task_id is not None:
            fields["t"] = result.task_id
        keys = [self.key(idempotency_key)]
        args: list[str | int] = [self._retention_s, FP_TOMBSTONE_CHARS, fingerprint or ""]
        args += [v for pair in fields.items() for v in pair]
        await self._batcher.call(
            lambda pipe: self._tombstone_script(keys=keys, args=args, client=pipe)
        )

    async def first_time(self, idempotency_key: str, marker: str) -> bool:
        """Whether ``marker`` is new for this key (and remember it): for outcomes decided without
        a claim, such as a rejection, so that a replay does not publish them again."""
        keys = [self.key(idempotency_key)]
        args: list[str | int] = [f"seen:{marker}", self._retention_s]
        added = await self._batcher.call(
            lambda pipe: self._mark_once(keys=keys, args=args, client=pipe)
        )
        return bool(added)

    async def take_once(
        self, idempotency_key: str, marker: str, token: str, lease_s: int
    ) -> Literal["won", "busy", "done"]:
        """Whether this process publishes the key's once-per-key result ``marker`` (its
        idempotency_conflict), atomically across processes: ``won`` (a lease of ``lease_s``
        taken: publish, then ``first_time`` remembers it), ``busy`` (another holds the lease)
        or ``done`` (published already). A holder that dies before publishing loses the lease
        when it runs out, so the result is not lost: the next such record publishes it."""
        keys = [self.key(idempotency_key)]
        args: list[str | int] = [self._retention_s, f"seen:{marker}", token, lease_s]
        reply = _text(
            await self._batcher.call(
                lambda pipe: self._take_once(keys=keys, args=args, client=pipe)
            )
        )
        if reply == "won":
            return "won"
        return "busy" if reply == "busy" else "done"

    async def refusal_status(self, idempotency_key: str, marker: str) -> RefusalStatus:
        """Whether a rejection decided without a claim (from the record alone) may be published:
        ``in_use`` when a request owns the key (``IN_USE_STATES``: the record is dead-lettered
        instead), ``seen`` when it was published before (``first_time`` remembered it), else
        ``new``."""
        key = self.key(idempotency_key)
        state, short, seen = await self._batcher.call(
            lambda pipe: pipe.hmget(key, ["state", "s", f"seen:{marker}"])
        )
        if state is None and short is not None:
            state = _TOMBSTONE_STATE_OF.get(_text(short)[:1])
        if state is not None and _text(state) in IN_USE_STATES:
            return "in_use"
        return "seen" if seen is not None else "new"

    async def seen(self, idempotency_key: str, marker: str) -> bool:
        """Whether ``first_time`` remembered ``marker`` for this key."""
        key = self.key(idempotency_key)
        return bool(await self._batcher.call(lambda pipe: pipe.hexists(key, f"seen:{marker}")))

    async def get(self, idempotency_key: str) -> IdempotencyRecord | None:
        key = self.key(idempotency_key)
        raw = await self._batcher.call(lambda pipe: pipe.hgetall(key))
        if not raw:
            return None
        return _record({_text(k): _text(v) for k, v in raw.items()})

    async def in_flight(self, batch: int = 500) -> AsyncIterator[tuple[str, IdempotencyRecord]]:
        """Every key whose task is submitted but whose result is not published yet (``submitted``
        or ``terminal``), for ``relay reconcile``: a SCAN (never blocking Redis) over the store's
        keys, read in pipelines of ``batch``."""
        head = f"{self._prefix}:idem:{{"
        pattern = _glob_escape(head) + "*"
        keys: list[str] = []
        async for raw in self._redis.scan_iter(match=pattern, count=1000):
            keys.append(_text(raw))
            if len(keys) >= batch:
                async for found in self._read_in_flight(keys, head):
                    yield found
                keys = []
        async for found in self._read_in_flight(keys, head):
            yield found

    async def _read_in_flight(
        self, keys: list[str], head: str
    ) -> AsyncIterator[tuple[str, IdempotencyRecord]]:
        if not keys:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            replies = await pipe.execute()
        for key, raw in zip(keys, replies, strict=True):
            fields = {_text(k): _text(v) for k, v in raw.items()}
            if fields.get("state") in (KeyState.SUBMITTED, KeyState.TERMINAL):
                yield key.removeprefix(head).removesuffix("}"), _record(fields)


def record_key(prefix: str, idempotency_key: str) -> str:
    """The Redis key of a key's record (its own hash tag: one Cluster slot per record)."""
    return f"{prefix}:idem:{{{idempotency_key}}}"


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(fields: dict[str, str]) -> IdempotencyRecord:
    if "s" in fields:
        return _tombstone_record(fields)
    result = fields.get("result")
    estimate = fields.get("cost_estimate")
    return IdempotencyRecord(
        state=KeyState(fields.get("state", KeyState.CLAIMED)),
        task_id=fields.get("task_id"),
        request_id=fields.get("request_id"),
        last_event_id=fields.get("last_event_id"),
        cost_estimate=float(estimate) if estimate else None,
        submitted_at=fields.get("submitted_at"),
        result=ResultRecord.model_validate_json(result) if result else None,
        model=fields.get("model"),
        owner_metadata=fields.get("meta"),
        owner_webhook_url=fields.get("hook"),
    )


def _tombstone_record(fields: dict[str, str]) -> IdempotencyRecord:
    """A tombstone read back: what a duplicate is told, and where the task and result were."""
    code = fields["s"]
    published = fields.get("p")
    return IdempotencyRecord(
        state=KeyState(_TOMBSTONE_STATE_OF.get(code[:1], KeyState.PUBLISHED)),
        task_id=fields.get("t"),
        result_type=_RESULT_TYPE_OF.get(code[1:]),
        published_at=format_ts(datetime.fromtimestamp(int(published), UTC)) if published else None,
        short_fp=fields.get("fp"),
    )
