"""What the request lifecycle asks of the budgets: room before a submit, the charge after it, the
settlement at the task's end, and the wait of a request held at a cap (DESIGN §9).

- ``reserve`` reserves the request's expected cost in every budget that applies to it, in one
  script. At a cap it raises ``BudgetHeld`` (``RELAY_BUDGET_MODE=hold``: the lifecycle holds the
  request) or ``BudgetExceeded`` (``reject``: a ``request.rejected`` with ``budget_exceeded``).
- ``keep_alive`` refreshes the reservation while the submit is in flight; a crashed holder stops
  refreshing and its room comes back ``RELAY_BUDGET_RESERVATION_TTL_S`` later.
- ``charge`` turns the reservation into the task's ``cost_estimate`` (and learns the price);
  ``settle`` turns that into its ``cost_actual``; ``release`` gives the room back.
- ``hold`` waits until the blocking window ends, room is released in this process, or a recheck
  interval passes (room freed by other processes), each jittered; never a busy loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Literal

from redis.exceptions import RedisError

from relay.exceptions import BudgetExceeded, BudgetHeld
from relay.metrics import RelayMetrics
from relay.models import RequestRecord, TaskSnapshot, format_ts
from relay.redis import RedisClient
from relay.settings import RelaySettings
from relay.spend.ledger import BudgetLedger, Reservation, reservation_id
from relay.spend.prices import PriceBook, Quote, to_micro, to_usd
from relay.spend.rules import BudgetInstance, BudgetRule, applicable

log = logging.getLogger(__name__)

BudgetMode = Literal["hold", "reject"]
ROLLOVER_JITTER_S = 1.0  # held requests wake within this much after their window ends
WAKE_JITTER_S = 0.1  # ... and within this much after room is released in this process
RECHECK_JITTER = 0.2  # ± share of the recheck interval
MIN_WAIT_S = 0.01
Waiter = Callable[[asyncio.Event, float], Awaitable[None]]


async def _wait_event(event: asyncio.Event, timeout_s: float) -> None:
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


class BudgetGuard:
    """Budgets as the lifecycle sees them; one per process, built only when rules are set."""

    def __init__(
        self,
        ledger: BudgetLedger,
        *,
        rules: list[BudgetRule],
        prices: PriceBook,
        mode: BudgetMode,
        metrics: RelayMetrics,
        reservation_ttl_s: float,
        recheck_s: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        waiter: Waiter = _wait_event,
    ) -> None:
        self.ledger = ledger
        self.rules = rules
        self.prices = prices
        self.mode = mode
        self._metrics = metrics
        self._ttl_s = reservation_ttl_s
        self._recheck_s = recheck_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._waiter = waiter
        self._room_freed = asyncio.Event()
        self.held: dict[tuple[str, str], list[float]] = {}  # (budget, window) → held since

    async def reserve(self, key: str, request: RequestRecord) -> Reservation | None:
        """Reserve the request's expected cost in every budget that applies, or raise.

        ``None`` when the task is already created and charged (another owner of the key got
        there first): the submit replays it and nothing is reserved."""
        now_s = self._clock()
        budgets = applicable(self.rules, request.model, request.metadata, now_s)
        quote = self.prices.quote(request.model, request.input)
        reservation = Reservation(reservation_id(key), quote, tuple(budgets), now_s)
        reply = await self.ledger.reserve(reservation)
        if reply.lapsed:
            self.lapsed(reply.lapsed)
        if reply.outcome == "full":
            assert reply.full is not None
            self._refused(reply.full, quote.amount_micro, now_s)
        if reply.outcome == "probing":
            first = budgets[0]
            raise BudgetHeld(
                f"the price of {quote.price_field} is being learned from another request",
                budget=first.rule.name,
                window=first.rule.window,
                until_s=now_s + min(max(reply.probe_left_s, MIN_WAIT_S), self._recheck_s),
                full=False,
            )
        return None if reply.outcome == "charged" else reservation

    def _refused(self, budget: BudgetInstance, amount_micro: int | None, now_s: float) -> None:
        rule, window = budget.rule, budget.window
        cost = (
            "one task at an unknown price"
            if amount_micro is None
            else (f"{to_usd(amount_micro)} USD")
        )
        message = (
            f"budget {rule.name!r} ({rule.window} window, {rule.limit_usd} USD) has no room for "
            f"{cost} until {format_ts(datetime.fromtimestamp(window.end_s, UTC))}"
        )
        if self.mode == "reject":
            self._metrics.budget_exhausted.labels(rule.name, rule.window).inc()
            raise BudgetExceeded(message, budget=rule.name, window=rule.window)
        raise BudgetHeld(message, budget=rule.name, window=rule.window, until_s=window.end_s)

    async def refresh(self, reservation: Reservation) -> bool:
        """Whether the reservation still holds its room (extended); ``False`` once it lapsed.
        One made less than a third of its TTL ago cannot have lapsed: no call to Redis (the
        usual case, a submit right after its reservation)."""
        if self._clock() - reservation.made_s < self._ttl_s / 3:
            return True
        return await self.ledger.refresh(reservation.id)

    @asynccontextmanager
    async def keep_alive(self, reservation: Reservation | None) -> AsyncIterator[None]:
        """Refresh ``reservation`` every third of its TTL while the block runs (a submit)."""
        if reservation is None:
            yield
            return
        task = asyncio.create_task(self._refresh_loop(reservation), name="budget-keep-alive")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _refresh_loop(self, reservation: Reservation) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                alive = await self.ledger.refresh(reservation.id)
            except RedisError as exc:
                log.warning("budget reservation not refreshed", extra={"reason": repr(exc)})
                continue
            if not alive:  # charged by another owner of the key, or lapsed (Redis was out)
                log.info("a budget reservation is no longer held while its submit runs")
                return

    async def charge(self, reservation: Reservation, snapshot: TaskSnapshot) -> None:
        """MindVideo created the task: charge its estimate (once) and learn its unit price."""
        estimate = snapshot.cost_estimate
        learn = None
        if estimate is not None:
            unit = estimate / reservation.quote.n
            learn = (reservation.quote.price_field, unit)
            self.prices.learn(reservation.quote.price_field, unit)
        await self.ledger.confirm(
            reservation.id,
            estimate_micro=None if estimate is None else to_micro(estimate),
            learn=learn,
            charge_if_missing=True,
            entries=reservation.entries,
        )
        if not reservation.quote.known:
            self._notify()  # the price probe is over: requests waiting for it may go

    async def charge_resumed(self, key: str, estimate: float | None) -> None:
        """A request resumed after its task was recorded: charge it if its holder could not."""
        await self.ledger.confirm(
            reservation_id(key),
            estimate_micro=None if estimate is None else to_micro(estimate),
            learn=None,
            charge_if_missing=False,
        )

    async def settle(self, key: str, estimate: float | None, actual: float | None) -> None:
        """The task ended: its actual cost replaces its estimate (failed/cancelled free it)."""
        settled = await self.ledger.settle(
            reservation_id(key), None if actual is None else to_micro(actual)
        )
        if settled and actual is not None and actual < (estimate or 0.0):
            self._notify()

    async def release(self, reservation: Reservation | str) -> None:
        """Nothing was submitted for this reservation: give its room back."""
        if isinstance(reservation, str):
            reservation = Reservation(reservation_id(reservation), Quote("", 1, 0), ())
        if await self.ledger.release(reservation.id):
            self._notify()

    def lapsed(self, count: int) -> None:
        """``count`` reservations whose holders stopped refreshing them gave their room back."""
        self._metrics.budget_lapsed.inc(count)
        log.warning("budget reservations lapsed", extra={"count": count})
        self._notify()

    def _notify(self) -> None:
        self._room_freed.set()
        self._room_freed = asyncio.Event()

    def begin_hold(self, held: BudgetHeld, since_s: float) -> tuple[str, str]:
        """A request starts waiting at a budget: counted in ``relay_budget_held_requests`` (and
        its age in the oldest-held gauge) until ``end_hold``; its labels."""
        labels = (held.budget, held.window)
        if held.full:
            self._metrics.budget_exhausted.labels(*labels).inc()
            log.info("request held by a spend budget", extra={"budget": held.budget})
        self.held.setdefault(labels, []).append(since_s)
        self._metrics.budget_held.labels(*labels).inc()
        return labels

    def end_hold(self, labels: tuple[str, str], since_s: float) -> None:
        """The request held since ``since_s`` stopped waiting (room, a rejection, a handover)."""
        self._metrics.budget_held.labels(*labels).dec()
        self.held[labels].remove(since_s)

    async def hold(self, held: BudgetHeld, *, deadline_s: float | None) -> None:
        """Wait until a held request may try again: its window ended (plus jitter), room was
        released here, a recheck interval passed (room freed elsewhere), or its deadline came."""
        now_s = self._clock()
        if held.until_s - now_s <= self._recheck_s:
            timeout_s = held.until_s - now_s + self._rng.uniform(0, ROLLOVER_JITTER_S)
        else:
            timeout_s = self._recheck_s * self._rng.uniform(1 - RECHECK_JITTER, 1 + RECHECK_JITTER)
        if deadline_s is not None:
            timeout_s = min(timeout_s, deadline_s - now_s)
        event = self._room_freed
        await self._waiter(event, max(MIN_WAIT_S, timeout_s))
        if event.is_set():
            await asyncio.sleep(self._rng.uniform(0, WAKE_JITTER_S))

    def oldest_held_s(self) -> dict[tuple[str, str], float]:
        """Per (budget, window): how long the longest-held request has waited (0 if none)."""
        now_s = self._clock()
        return {labels: (now_s - min(s)) if s else 0.0 for labels, s in self.held.items()}


# How long after its end a window (and a charged reservation) is kept beyond the task timeout: a
# task's actual cost lands in the window its estimate was charged to.
RETAIN_MARGIN_S = 3600.0


def build_guard(
    settings: RelaySettings, redis: RedisClient, metrics: RelayMetrics
) -> BudgetGuard | None:
    """The budgets ``RELAY_BUDGETS`` sets, or ``None`` when it sets none (nothing is reserved)."""
    if not settings.budgets:
        return None
    ledger = BudgetLedger(
        redis,
        prefix=settings.redis_key_prefix,
        reservation_ttl_s=settings.budget_reservation_ttl_s,
        retain_s=settings.task_timeout_s + RETAIN_MARGIN_S,
    )
    return BudgetGuard(
        ledger,
        rules=list(settings.budgets),
        prices=PriceBook(settings.price_hints),
        mode=settings.budget_mode,
        metrics=metrics,
        reservation_ttl_s=settings.budget_reservation_ttl_s,
        recheck_s=settings.budget_recheck_s,
    )
