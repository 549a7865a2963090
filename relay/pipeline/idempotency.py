"""The idempotency store in Redis: one hash per idempotency key (DESIGN §4).

States move forward only: ``claimed`` → ``submitted`` → ``terminal`` → ``published``, or
``rejected`` when the relay refused the request. Each record keeps the payload fingerprint, task and
request ids, the last event id seen, timestamps and the result once known. The claim is one Lua
script, so two owners cannot both see a key as new; every other write is one script too, touching
one hash and resetting its retention atomically. Key names carry the idempotency key in a hash
tag, so a Redis Cluster keeps each record on one slot.

Thousands of requests in flight each make a handful of these calls. They are not sent one by one:
the calls made while a batch is on its way are sent together as the next pipeline (at most
``MAX_BATCHES_IN_FLIGHT`` at once), so the store holds two connections and pays one round trip per
batch, however many requests run. The last event id of a stream is written behind, with the next
batch: it only shortens a replay after a restart, and is never waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from relay.models import ResultRecord
from relay.redis import RedisClient, pipeline

log = logging.getLogger(__name__)

ClaimOutcome = Literal["new", "conflict", "existing"]
MAX_BATCHES_IN_FLIGHT = 2
MAX_BATCH_CALLS = 1000

_WRITE_LUA = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""

_CLAIM_LUA = """
local fp = redis.call('HGET', KEYS[1], 'fp')
if (not fp) or (fp ~= ARGV[1] and redis.call('HGET', KEYS[1], 'state') == 'rejected') then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'claimed', 'claimed_at', ARGV[2],
             'model', ARGV[4])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {'new'}
end
if fp ~= ARGV[1] then
  return {'conflict'}
end
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, 'existing')
return out
"""


# Set a marker field once; a hash created by it gets the retention like every other record.
_MARK_ONCE_LUA = """
local added = redis.call('HSETNX', KEYS[1], ARGV[1], '1')
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return added
"""


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What the store knows about one key."""

    state: str
    task_id: str | None = None
    request_id: str | None = None
    last_event_id: str | None = None
    cost_estimate: float | None = None
    submitted_at: str | None = None
    result: ResultRecord | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: ClaimOutcome
    record: IdempotencyRecord | None = None


AddToPipeline = Callable[[Pipeline], Any]


class _Batcher:
    """Sends the calls queued while earlier batches are in flight as one pipeline each."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._queue: list[tuple[AddToPipeline, asyncio.Future[Any] | None]] = []
        self._in_flight = 0

    async def call(self, add: AddToPipeline) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(add, future)
        return await future

    def call_behind(self, add: AddToPipeline) -> None:
        """Queue a call nobody waits for (a failure is logged)."""
        self._enqueue(add, None)

    def _enqueue(self, add: AddToPipeline, future: asyncio.Future[Any] | None) -> None:
        self._queue.append((add, future))
        if self._in_flight < MAX_BATCHES_IN_FLIGHT:
            self._in_flight += 1
            asyncio.get_running_loop().call_soon(self._start_batch)

    def _start_batch(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH_CALLS], self._queue[MAX_BATCH_CALLS:]
        if not batch:
            self._in_flight -= 1
            return
        task = asyncio.create_task(self._send(batch), name="idempotency-store-batch")
        task.add_done_callback(self._batch_done)

    def _batch_done(self, _: asyncio.Task[None]) -> None:
        if self._queue:
            self._start_batch()
        else:
            self._in_flight -= 1

    async def _send(self, batch: list[tuple[AddToPipeline, asyncio.Future[Any] | None]]) -> None:
        try:
            async with pipeline(self._redis) as pipe:
                for add, _ in batch:
                    queued = add(pipe)  # a script call is a coroutine; a command is queued at once
                    if inspect.isawaitable(queued):
                        await queued
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            replies = [exc] * len(batch)
        except BaseException as exc:
            # Cancelled or worse: fail the waiters (never leave them hanging), then go on raising.
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(RedisError(f"batch not sent: {exc!r}"))
            raise
        for (_, future), reply in zip(batch, replies, strict=True):
            if future is None:
                if isinstance(reply, Exception):
                    log.warning("a write-behind Redis call failed", extra={"reason": repr(reply)})
            elif future.done():
                continue  # the caller was cancelled; the call was made all the same
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class IdempotencyStore:
    """Reads and writes idempotency records; the retention restarts with every write."""

    def __init__(self, redis: RedisClient, *, prefix: str, retention_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._retention_s = retention_s
        self._claim = redis.register_script(_CLAIM_LUA)
        self._write_script = redis.register_script(_WRITE_LUA)
        self._mark_once = redis.register_script(_MARK_ONCE_LUA)
        self._batcher = _Batcher(redis)
        self._event_ids: dict[str, str] = {}

    def key(self, idempotency_key: str) -> str:
        return f"{self._prefix}:idem:{{{idempotency_key}}}"

    async def claim(self, idempotency_key: str, fingerprint: str, model: str, now: str) -> Claim:
        """Claim the key for this payload, or report a conflict or what is already known."""
        keys = [self.key(idempotency_key)]
        args: list[str | int] = [fingerprint, now, self._retention_s, model]
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
    ) -> None:
        fields = {"state": "submitted", "task_id": task_id, "submitted_at": submitted_at}
        if request_id is not None:
            fields["request_id"] = request_id
        if cost_estimate is not None:
            fields["cost_estimate"] = repr(cost_estimate)
        await self._write(idempotency_key, fields)

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

    async def mark_terminal(self, idempotency_key: str, result_json: bytes) -> None:
        """The result is known: kept (as its published JSON) until it is published."""
        await self._write(idempotency_key, {"state": "terminal", "result": result_json.decode()})

    async def mark_published(self, idempotency_key: str) -> None:
        await self._write(idempotency_key, {"state": "published"})

    async def mark_rejected(self, idempotency_key: str, result: ResultRecord) -> None:
        await self._write(
            idempotency_key, {"state": "rejected", "result": result.model_dump_json()}
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

    async def get(self, idempotency_key: str) -> IdempotencyRecord | None:
        key = self.key(idempotency_key)
        raw = await self._batcher.call(lambda pipe: pipe.hgetall(key))
        if not raw:
            return None
        return _record({_text(k): _text(v) for k, v in raw.items()})

    async def _write(self, idempotency_key: str, fields: dict[str, str]) -> None:
        keys = [self.key(idempotency_key)]
        args: list[str | int] = [self._retention_s, *(v for pair in fields.items() for v in pair)]
        await self._batcher.call(lambda pipe: self._write_script(keys=keys, args=args, client=pipe))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(fields: dict[str, str]) -> IdempotencyRecord:
    result = fields.get("result")
    estimate = fields.get("cost_estimate")
    return IdempotencyRecord(
        state=fields.get("state", "claimed"),
        task_id=fields.get("task_id"),
        request_id=fields.get("request_id"),
        last_event_id=fields.get("last_event_id"),
        cost_estimate=float(estimate) if estimate else None,
        submitted_at=fields.get("submitted_at"),
        result=ResultRecord.model_validate_json(result) if result else None,
    )
