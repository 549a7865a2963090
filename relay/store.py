"""The idempotency store in Redis: one hash per idempotency key (DESIGN §4).

States move forward only: ``claimed`` → ``submitted`` → ``terminal`` → ``published``, or
``rejected`` when the relay refused the request. Each record keeps the payload fingerprint, task and
request ids, the last event id seen, timestamps and the result once known. The claim is one Lua
script, so two owners cannot both see a key as new; every other write touches one hash and resets
its retention in one MULTI. Key names carry the idempotency key in a hash tag, so a Redis Cluster
keeps each record on one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from relay.models import ResultRecord

ClaimOutcome = Literal["new", "conflict", "existing"]

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


class IdempotencyStore:
    """Reads and writes idempotency records; the retention restarts with every write."""

    def __init__(self, redis: Redis, *, prefix: str, retention_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._retention_s = retention_s
        self._claim = redis.register_script(_CLAIM_LUA)

    def key(self, idempotency_key: str) -> str:
        return f"{self._prefix}:idem:{{{idempotency_key}}}"

    async def claim(self, idempotency_key: str, fingerprint: str, model: str, now: str) -> Claim:
        """Claim the key for this payload, or report a conflict or what is already known."""
        reply = await self._claim(
            keys=[self.key(idempotency_key)],
            args=[fingerprint, now, self._retention_s, model],
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
        await self._redis.hset(self.key(idempotency_key), "last_event_id", last_event_id)

    async def mark_terminal(self, idempotency_key: str, result: ResultRecord) -> None:
        await self._write(
            idempotency_key, {"state": "terminal", "result": result.model_dump_json()}
        )

    async def mark_published(self, idempotency_key: str) -> None:
        await self._write(idempotency_key, {"state": "published"})

    async def mark_rejected(self, idempotency_key: str, result: ResultRecord) -> None:
        await self._write(
            idempotency_key, {"state": "rejected", "result": result.model_dump_json()}
        )

    async def get(self, idempotency_key: str) -> IdempotencyRecord | None:
        raw = await self._redis.hgetall(self.key(idempotency_key))
        if not raw:
            return None
        return _record({_text(k): _text(v) for k, v in raw.items()})

    async def _write(self, idempotency_key: str, fields: dict[str, str]) -> None:
        key = self.key(idempotency_key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, self._retention_s)
            await pipe.execute()


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
