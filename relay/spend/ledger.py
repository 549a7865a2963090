"""The budget ledger in Redis: reserve, refresh, confirm, settle and release, one script each
(``relay.spend.scripts``), shared by every relay process.

Reservations expire: a holder refreshes its reservation while it submits; one that stops (a crash
between the reservation and the submit) lapses ``reservation_ttl_s`` after its last refresh, and
its room goes back to the budget at the next reserve or monitor pass. A request resumed by the next
owner of its partition finds its own reservation (the id is a digest of the idempotency key) and
takes it over instead of reserving twice.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from relay.pipeline.batching import RedisBatcher
from relay.redis import RedisClient
from relay.spend import scripts
from relay.spend.prices import Quote
from relay.spend.rules import BudgetInstance, BudgetRule, window_at

SWEEP_LIMIT = 100
SETTLED_RETENTION_S = 3600  # a settled reservation is remembered this long (crash resumes)
MINUTE_RETENTION_S = 2 * 3600  # spend per minute, for the status page's last hour
FALLBACK_WINDOW_TTL_S = 32 * 24 * 3600  # a window key written back after it had expired
HISTORY_MINUTES = 60

ReserveOutcome = Literal["ok", "held", "charged", "full", "probing"]


def reservation_id(idempotency_key: str) -> str:
    """One reservation per idempotency key: a resumed request takes over its own."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Reservation:
    """Room reserved for one request in every budget that applies to it."""

    id: str
    quote: Quote
    budgets: tuple[BudgetInstance, ...]
    made_s: float = 0.0  # when it was made (unix seconds)

    @property
    def entries(self) -> str:
        return " ".join(b.entry for b in self.budgets)


@dataclass(frozen=True, slots=True)
class ReserveReply:
    outcome: ReserveOutcome
    full: BudgetInstance | None = None  # the budget without room ("full")
    probe_left_s: float = 0.0  # how long the price probe of another request may still run
    lapsed: int = 0  # expired reservations of others this call gave back


@dataclass(frozen=True, slots=True)
class RuleUsage:
    """One rule in its current window: its fullest instance's spend and reservations."""

    rule: BudgetRule
    window_end_s: float
    instances: int
    spent_micro: int
    reserved_micro: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class BudgetLedger:
    """Budget state in Redis: keys ``<prefix>:budget:{<prefix>}:…``, one hash slot."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        prefix: str,
        reservation_ttl_s: float,
        retain_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``retain_s``: how long a window and a charged reservation outlive their end, so a
        task's actual cost lands in the window its estimate was charged to (the task timeout)."""
        self._redis = redis
        # Every key starts with the prefix (like the relay's other keys) and carries the hash tag
        # {<prefix>}: one slot for all budget keys.
        self.tag = f"{prefix}:budget:{{{prefix}}}"
        self._ttl_s = reservation_ttl_s
        self._retain_s = int(retain_s)
        self._clock = clock
        self._batcher = RedisBatcher(redis)
        self._reserve = redis.register_script(scripts.RESERVE)
        self._refresh = redis.register_script(scripts.REFRESH)
        self._confirm = redis.register_script(scripts.CONFIRM)
        self._settle = redis.register_script(scripts.SETTLE)
        self._release = redis.register_script(scripts.RELEASE)
        self._sweep = redis.register_script(scripts.SWEEP)
        self._usage = redis.register_script(scripts.USAGE)

    def _key(self, *parts: str) -> str:
        return ":".join((self.tag, *parts))

    def _base(self) -> list[str | int | float]:
        return [self.tag, FALLBACK_WINDOW_TTL_S]

    def _expiry_ms(self) -> int:
        return int((self._clock() + self._ttl_s) * 1000)

    async def _call(
        self, script: object, keys: Sequence[str], args: list[str | int | float]
    ) -> object:
        return await self._batcher.call(
            lambda pipe: script(keys=keys, args=args, client=pipe)  # type: ignore[operator]
        )

    async def reserve(self, reservation: Reservation) -> ReserveReply:
        now_s = self._clock()
        amount = reservation.quote.amount_micro
        digest = hashlib.sha256(reservation.quote.price_field.encode()).hexdigest()[:16]
        probe = self._key("probe", digest)
        keys = [self._key("exp"), self._key("r", reservation.id), probe]
        keys += [self._key("w", b.entry) for b in reservation.budgets]
        args = [
            *self._base(),
            reservation.id,
            int(now_s * 1000),
            self._expiry_ms(),
            -1 if amount is None else amount,
            self._retain_s,
            SWEEP_LIMIT,
            reservation.entries,
            int(self._ttl_s * 1000),
        ]
        for budget in reservation.budgets:
            limit = round(budget.rule.limit_usd * 1_000_000)
            args += [limit, max(1, int(budget.window.end_s - now_s) + self._retain_s)]
        reply = await self._call(self._reserve, keys, args)
        assert isinstance(reply, list)
        outcome, detail, lapsed = _text(reply[0]), int(reply[1]), int(reply[2])
        if outcome == "full":
            return ReserveReply("full", full=reservation.budgets[detail - 1], lapsed=lapsed)
        if outcome == "probing":
            return ReserveReply("probing", probe_left_s=max(0, detail) / 1000, lapsed=lapsed)
        assert outcome in ("ok", "held", "charged")
        return ReserveReply(outcome, lapsed=lapsed)  # type: ignore[arg-type]

    async def refresh(self, reservation_id_: str) -> bool:
        """Extend a held reservation; ``False`` when it lapsed (or was never made)."""
        keys = [self._key("exp"), self._key("r", reservation_id_)]
        args = [
            *self._base(),
            reservation_id_,
            self._expiry_ms(),
            self._retain_s,
            int(self._ttl_s * 1000),
        ]
        return bool(await self._call(self._refresh, keys, args))

    async def confirm(
        self,
        reservation_id_: str,
        *,
        estimate_micro: int | None,
        learn: tuple[str, float] | None,
        charge_if_missing: bool,
        entries: str = "",
    ) -> bool:
        """MindVideo created the task: its estimate replaces the reservation in ``spent``, once.

        ``charge_if_missing``: charge ``entries`` even when no reservation is found (it was
        released by a concurrent owner of the same key); a resumed request passes ``False``.
        """
        minute = window_at("minute", self._clock()).id
        keys = [
            self._key("exp"),
            self._key("r", reservation_id_),
            self._key("prices"),
            self._key("spm", minute),
        ]
        field, unit = learn if learn is not None else ("", "")
        args = [
            *self._base(),
            reservation_id_,
            -1 if estimate_micro is None else estimate_micro,
            1 if charge_if_missing else 0,
            self._retain_s,
            field,
            "" if unit == "" else repr(unit),
            MINUTE_RETENTION_S,
            minute,
            entries,
        ]
        return bool(await self._call(self._confirm, keys, args))

    async def settle(self, reservation_id_: str, actual_micro: int | None) -> bool:
        """The task ended: its actual cost replaces its estimate (once)."""
        keys = [self._key("r", reservation_id_)]
        args = [*self._base(), -1 if actual_micro is None else actual_micro, SETTLED_RETENTION_S]
        return bool(await self._call(self._settle, keys, args))

    async def release(self, reservation_id_: str) -> bool:
        """Give the room back: nothing was (or will be) submitted for this reservation."""
        keys = [self._key("exp"), self._key("r", reservation_id_)]
        return bool(await self._call(self._release, keys, [*self._base(), reservation_id_]))

    async def sweep(self) -> int:
        """Lapse reservations whose holder stopped refreshing them; how many."""
        args = [*self._base(), int(self._clock() * 1000), SWEEP_LIMIT]
        return int(await self._sweep(keys=[self._key("exp")], args=args))

    async def usage(self, rules: Sequence[BudgetRule]) -> list[RuleUsage]:
        """Each rule in its current window, by its fullest instance."""
        if not rules:
            return []
        now_s = self._clock()
        windows = [window_at(rule.window, now_s) for rule in rules]
        keys = [self._key("top", r.name, w.id) for r, w in zip(rules, windows, strict=True)]
        args: list[str | int | float] = self._base()
        args += [self._key("w", r.name, w.id, "") for r, w in zip(rules, windows, strict=True)]
        reply = await self._usage(keys=keys, args=args)
        assert isinstance(reply, list)
        counts = [int(value) for value in reply]
        return [
            RuleUsage(rule, window.end_s, *counts[3 * i : 3 * i + 3])
            for i, (rule, window) in enumerate(zip(rules, windows, strict=True))
        ]

    async def spend_by_minute(self, minutes: int = HISTORY_MINUTES) -> list[tuple[float, int]]:
        """Spend charged in each of the last ``minutes`` minutes (oldest first), all processes."""
        now_s = self._clock()
        windows = [window_at("minute", now_s - 60 * back) for back in range(minutes - 1, -1, -1)]
        values = await self._redis.mget([self._key("spm", w.id) for w in windows])
        return [(w.start_s, int(v or 0)) for w, v in zip(windows, values, strict=True)]

    async def learned_prices(self) -> dict[str, float]:
        raw = await self._redis.hgetall(self._key("prices"))
        return {_text(k): float(_text(v)) for k, v in raw.items()}
