"""The budget ledger's scripts on a real Redis: room is never given twice, every transition happens
once, a crashed holder's room comes back after the TTL, windows roll over with the clock."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from relay.spend.ledger import BudgetLedger, Reservation, reservation_id
from relay.spend.prices import Quote, to_micro
from relay.spend.rules import BudgetRule, applicable

MODEL = "apimart-doubao-seedance-4-0"
PRICE = to_micro(0.0252)
T0 = 1_795_633_200.0  # 2026-11-25T19:00:00Z


class Clock:
    def __init__(self, now_s: float = T0 + 10) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def _ledger(redis: aioredis.Redis, unique: str, clock: Clock, ttl_s: float = 60) -> BudgetLedger:
    return BudgetLedger(redis, prefix=unique, reservation_ttl_s=ttl_s, retain_s=3600, clock=clock)


def _rule(
    limit_usd: float, window: str = "hour", scope: str = "global", name: str = "cap"
) -> BudgetRule:
    return BudgetRule.model_validate(
        {"name": name, "scope": scope, "window": window, "limit_usd": limit_usd}
    )


def _res(
    key: str,
    rules: list[BudgetRule],
    clock: Clock,
    amount: int | None = PRICE,
    metadata: dict[str, object] | None = None,
) -> Reservation:
    budgets = applicable(rules, MODEL, metadata, clock())
    return Reservation(reservation_id(key), Quote(f"{MODEL}|2K", 1, amount), tuple(budgets))


async def _used(ledger: BudgetLedger, rules: list[BudgetRule]) -> list[tuple[int, int, int]]:
    return [(u.instances, u.spent_micro, u.reserved_micro) for u in await ledger.usage(rules)]


async def test_room_is_reserved_up_to_the_limit_and_never_beyond(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock)
    rules = [_rule(0.1)]  # room for 3 tasks of 0.0252 (0.0756), not 4 (0.1008)
    outcomes = [(await ledger.reserve(_res(f"k{i}", rules, clock))).outcome for i in range(5)]
    assert outcomes == ["ok", "ok", "ok", "full", "full"]
    assert await _used(ledger, rules) == [(1, 0, 3 * PRICE)]
    # The same key again takes over its own reservation (a resumed request): not a second one.
    assert (await ledger.reserve(_res("k0", rules, clock))).outcome == "held"
    assert await _used(ledger, rules) == [(1, 0, 3 * PRICE)]


async def test_concurrent_reservers_never_exceed_the_limit(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = Clock()
    rules = [_rule(1.0)]
    ledgers = [_ledger(redis_client, unique, clock) for _ in range(4)]  # four "processes"
    replies = await asyncio.gather(
        *(ledgers[i % 4].reserve(_res(f"k{i}", rules, clock)) for i in range(100))
    )
    admitted = sum(r.outcome == "ok" for r in replies)
    assert admitted == 39  # floor(1.0 / 0.0252)
    assert await _used(ledgers[0], rules) == [(1, 0, 39 * PRICE)]


async def test_a_charge_replaces_the_reservation_once_and_settles_once(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock)
    rules = [_rule(1.0)]
    res = _res("k1", rules, clock)
    await ledger.reserve(res)
    learn = (res.quote.price_field, 0.0252)
    assert await ledger.confirm(res.id, estimate_micro=PRICE, learn=learn, charge_if_missing=True)
    assert not await ledger.confirm(
        res.id, estimate_micro=PRICE, learn=None, charge_if_missing=True
    )
    assert await _used(ledger, rules) == [(1, PRICE, 0)]
    assert await ledger.learned_prices() == {f"{MODEL}|2K": 0.0252}
    assert (await ledger.reserve(res)).outcome == "charged", "a created task is not reserved again"
    assert not await ledger.release(res.id), "a charged reservation is not given back"

    assert await ledger.settle(res.id, 0)  # failed: its room is free again
    assert not await ledger.settle(res.id, 0)
    assert await _used(ledger, rules) == [(1, 0, 0)]


async def test_a_task_costing_more_than_its_estimate_is_charged_what_it_cost(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock)
    rules = [_rule(1.0)]
    res = _res("k1", rules, clock)
    await ledger.reserve(res)
    await ledger.confirm(res.id, estimate_micro=PRICE, learn=None, charge_if_missing=True)
    await ledger.settle(res.id, 2 * PRICE)
    assert await _used(ledger, rules) == [(1, 2 * PRICE, 0)]
    history = await ledger.spend_by_minute()
    assert len(history) == 60
    assert history[-1][1] == 2 * PRICE, "the last hour's chart shows the actual cost"


async def test_released_room_is_free_again(redis_client: aioredis.Redis, unique: str) -> None:
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock)
    rules = [_rule(0.03)]
    first, second = _res("k1", rules, clock), _res("k2", rules, clock)
    assert (await ledger.reserve(first)).outcome == "ok"
    assert (await ledger.reserve(second)).outcome == "full"
    assert await ledger.release(first.id)
    assert (await ledger.reserve(second)).outcome == "ok"


async def test_a_crashed_holders_room_comes_back_after_the_ttl(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock, ttl_s=30)
    rules = [_rule(0.03)]
    crashed = _res("crashed", rules, clock)
    assert (await ledger.reserve(crashed)).outcome == "ok"
    clock.now_s += 20
    assert await ledger.refresh(crashed.id), "refreshed while its submit runs"
    clock.now_s += 29
    assert await ledger.sweep() == 0, "not lapsed within the TTL of its last refresh"
    assert (await ledger.reserve(_res("other", rules, clock))).outcome == "full"
    clock.now_s += 2
    assert (await ledger.reserve(_res("other", rules, clock))).outcome == "ok", "lapsed"
    assert not await ledger.refresh(crashed.id)
    # Its request, resumed later, finds the room gone and must reserve again: it is full now.
    assert (await ledger.reserve(crashed)).outcome == "full"


async def test_the_monitor_sweep_lapses_without_any_reserve(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock, ttl_s=5)
    rules = [_rule(1.0)]
    for i in range(3):
        await ledger.reserve(_res(f"k{i}", rules, clock))
    clock.now_s += 6
    assert await ledger.sweep() == 3
    assert await _used(ledger, rules) == [(1, 0, 0)]


async def test_a_lapsed_reservation_whose_task_was_created_is_still_charged(
    redis_client: aioredis.Redis, unique: str
) -> None:
    """The submit outlived the reservation (Redis unreachable for the refresh): the task exists,
    so it is charged even though its room had gone back."""
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock, ttl_s=5)
    rules = [_rule(1.0)]
    res = _res("k1", rules, clock)
    await ledger.reserve(res)
    clock.now_s += 6
    await ledger.sweep()
    assert await ledger.confirm(res.id, estimate_micro=PRICE, learn=None, charge_if_missing=True)
    assert await _used(ledger, rules) == [(1, PRICE, 0)]


async def test_two_owners_of_one_key_charge_it_once(
    redis_client: aioredis.Redis, unique: str
) -> None:
    """A rebalance during a slow submit: both owners reserved (the same reservation), the one that
    recorded the task charges it, the other gives its reservation back, in either order."""
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock)
    rules = [_rule(1.0)]
    for order in ("release first", "charge first"):
        res = _res(order, rules, clock)
        assert (await ledger.reserve(res)).outcome == "ok"
        assert (await ledger.reserve(res)).outcome == "held"
        charge = ledger.confirm(
            res.id, estimate_micro=PRICE, learn=None, charge_if_missing=True, entries=res.entries
        )
        if order == "release first":
            await ledger.release(res.id)
            await charge
        else:
            await charge
            await ledger.release(res.id)
    assert await _used(ledger, rules) == [(1, 2 * PRICE, 0)]


async def test_a_resumed_request_charges_only_what_nobody_charged(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock)
    rules = [_rule(1.0)]
    res = _res("k1", rules, clock)
    await ledger.reserve(res)
    # The holder recorded the task and crashed before charging: the resumed request charges it.
    assert await ledger.confirm(res.id, estimate_micro=PRICE, learn=None, charge_if_missing=False)
    assert not await ledger.confirm(
        res.id, estimate_micro=PRICE, learn=None, charge_if_missing=False
    )
    # A request with no reservation at all (submitted before budgets existed) is left alone.
    nobody = reservation_id("never reserved")
    assert not await ledger.confirm(
        nobody, estimate_micro=PRICE, learn=None, charge_if_missing=False
    )
    assert await _used(ledger, rules) == [(1, PRICE, 0)]


async def test_windows_roll_over_with_the_clock(redis_client: aioredis.Redis, unique: str) -> None:
    clock = Clock(T0 + 30)  # 19:00:30
    ledger = _ledger(redis_client, unique, clock)
    rules = [_rule(0.03, window="minute")]
    assert (await ledger.reserve(_res("a", rules, clock))).outcome == "ok"
    assert (await ledger.reserve(_res("b", rules, clock))).outcome == "full"
    clock.now_s = T0 + 60  # 19:01:00: a new window
    assert (await ledger.reserve(_res("b", rules, clock))).outcome == "ok"
    [usage] = await ledger.usage(rules)
    assert usage.window_end_s == T0 + 120
    assert usage.reserved_micro == PRICE


async def test_a_tenant_budget_binds_each_tenant_apart(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock)
    rules = [_rule(0.06, scope="metadata.tenant", name="tenant")]

    async def reserve(key: str, tenant: str | None) -> str:
        metadata: dict[str, object] | None = None if tenant is None else {"tenant": tenant}
        return (await ledger.reserve(_res(key, rules, clock, metadata=metadata))).outcome

    assert [await reserve(f"a{i}", "acme") for i in range(3)] == ["ok", "ok", "full"]
    assert [await reserve(f"b{i}", "bolt") for i in range(2)] == ["ok", "ok"]
    assert [await reserve(f"n{i}", None) for i in range(5)] == ["ok"] * 5, "no tenant: no limit"
    [usage] = await ledger.usage(rules)
    assert (usage.instances, usage.reserved_micro) == (2, 2 * PRICE), "the fullest tenant"


async def test_an_unknown_price_admits_one_request_at_a_time(
    redis_client: aioredis.Redis, unique: str
) -> None:
    clock = Clock()
    ledger = _ledger(redis_client, unique, clock)
    rules = [_rule(1.0)]
    probe = _res("p1", rules, clock, amount=None)
    assert (await ledger.reserve(probe)).outcome == "ok"
    waiting = await ledger.reserve(_res("p2", rules, clock, amount=None))
    assert waiting.outcome == "probing"
    assert 0 < waiting.probe_left_s <= 60
    assert await ledger.confirm(
        probe.id,
        estimate_micro=PRICE,
        learn=(probe.quote.price_field, 0.0252),
        charge_if_missing=True,
    )
    assert (await ledger.reserve(_res("p2", rules, clock, amount=None))).outcome == "ok"
    # A probe released without a task (refused) lets the next one try.
    third = _res("p3", rules, clock, amount=None)
    assert (await ledger.reserve(third)).outcome == "probing"
    await ledger.release(reservation_id("p2"))
    assert (await ledger.reserve(third)).outcome == "ok"
