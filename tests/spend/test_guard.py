"""The budget guard against an in-memory ledger (no service): hold or reject at the cap, one probe
per unknown price, learning, and waits that end when they should (injectable clock and waiter)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from relay.exceptions import BudgetExceeded, BudgetHeld
from relay.metrics import RelayMetrics
from relay.models import RequestRecord, TaskSnapshot
from relay.spend.guard import BudgetGuard, BudgetMode
from relay.spend.prices import PriceBook
from relay.spend.rules import parse_rules
from tests.spend.fakes import FakeLedger

MODEL = "apimart-doubao-seedance-4-0"
T0 = 1_795_633_200.0  # 2026-11-25T19:00:00Z


@dataclass
class Clock:
    now_s: float = T0 + 10

    def __call__(self) -> float:
        return self.now_s


@dataclass
class Waits:
    """Records each wait instead of waiting; ``then`` runs after it (advance the clock...)."""

    timeouts: list[float] = field(default_factory=list)

    async def __call__(self, event: asyncio.Event, timeout_s: float) -> None:
        self.timeouts.append(timeout_s)


def _guard(
    rules_json: str,
    *,
    mode: BudgetMode = "hold",
    hints: dict[str, dict[str, float]] | None = None,
    recheck_s: float = 30.0,
) -> tuple[BudgetGuard, FakeLedger, Clock, Waits, RelayMetrics]:
    clock, waits, metrics = Clock(), Waits(), RelayMetrics()
    ledger = FakeLedger(clock=clock)
    guard = BudgetGuard(
        ledger,
        rules=parse_rules(rules_json),
        prices=PriceBook(hints if hints is not None else {MODEL: {"2K": 0.0252}}),
        mode=mode,
        metrics=metrics,
        reservation_ttl_s=60,
        recheck_s=recheck_s,
        clock=clock,
        rng=random.Random(3),
        waiter=waits,
    )
    return guard, ledger, clock, waits, metrics


def _request(**fields: object) -> RequestRecord:
    return RequestRecord.model_validate({"model": MODEL, "input": {"prompt": "p"}, **fields})


def _snapshot(estimate: float | None = 0.0252) -> TaskSnapshot:
    return TaskSnapshot(task_id="t", status="queued", cost_estimate=estimate)


GLOBAL_HOUR = '[{"name": "cap", "scope": "global", "window": "hour", "limit_usd": 0.06}]'


async def test_hold_at_the_cap_until_the_window_ends() -> None:
    guard, ledger, _clock, _, metrics = _guard(GLOBAL_HOUR)
    for key in ("a", "b"):
        res = await guard.reserve(key, _request())
        assert res is not None
        await guard.charge(res, _snapshot())
    with pytest.raises(BudgetHeld) as held:
        await guard.reserve("c", _request())
    assert (held.value.budget, held.value.window) == ("cap", "hour")
    assert held.value.until_s == T0 + 3600, "until the hour's window ends"
    assert "0.0252 USD" in str(held.value)
    assert ledger.total_spent("cap") == 2 * 25200
    assert metrics.registry.get_sample_value("relay_budget_exhausted_total") is None


async def test_reject_mode_refuses_with_budget_exceeded() -> None:
    guard, ledger, _, _, metrics = _guard(GLOBAL_HOUR, mode="reject")
    await guard.reserve("a", _request())
    await guard.reserve("b", _request())
    with pytest.raises(BudgetExceeded) as refused:
        await guard.reserve("c", _request())
    assert refused.value.code == "budget_exceeded"
    assert "'cap' (hour window, 0.06 USD)" in refused.value.message
    labels = {"budget": "cap", "window": "hour"}
    assert metrics.registry.get_sample_value("relay_budget_exhausted_total", labels) == 1
    assert ledger.total_reserved("cap") == 2 * 25200


async def test_an_unknown_price_is_learned_from_one_task_before_others_go() -> None:
    guard, ledger, clock, _, _ = _guard(GLOBAL_HOUR, hints={})
    probe = await guard.reserve("a", _request())
    assert probe is not None
    assert not probe.quote.known
    with pytest.raises(BudgetHeld) as waiting:
        await guard.reserve("b", _request())
    assert "being learned" in str(waiting.value)
    assert clock() < waiting.value.until_s <= clock() + 5.0
    await guard.charge(probe, _snapshot(0.0252))
    assert ledger.learned == {f"{MODEL}|2K": 0.0252}
    second = await guard.reserve("b", _request())
    assert second is not None
    assert second.quote.amount_micro == 25200, "the learned price is used at once"
    with pytest.raises(BudgetHeld):
        await guard.reserve("c", _request(input={"prompt": "p", "n": 2}))  # 0.0504 > room


async def test_a_task_that_failed_frees_its_room() -> None:
    guard, ledger, _, _, _ = _guard(GLOBAL_HOUR)
    res = await guard.reserve("a", _request())
    assert res is not None
    await guard.charge(res, _snapshot())
    await guard.settle("a", 0.0252, 0.0)
    assert ledger.total_spent("cap") == 0
    await guard.settle("a", 0.0252, 0.0252)  # a replayed end changes nothing
    assert ledger.total_spent("cap") == 0


async def test_a_request_of_a_created_task_reserves_nothing() -> None:
    guard, ledger, _, _, _ = _guard(GLOBAL_HOUR)
    res = await guard.reserve("a", _request())
    assert res is not None
    await guard.charge(res, _snapshot())
    assert await guard.reserve("a", _request()) is None
    assert ledger.total_spent("cap") == 25200


async def test_a_hold_waits_for_the_window_end_plus_jitter_when_it_is_near() -> None:
    guard, _, clock, waits, _ = _guard(GLOBAL_HOUR, recheck_s=30)
    clock.now_s = T0 + 3590  # 10 s before the hour ends
    held = BudgetHeld("full", budget="cap", window="hour", until_s=T0 + 3600)
    await guard.hold(held, deadline_s=None)
    [timeout] = waits.timeouts
    assert 10.0 <= timeout <= 11.0


async def test_a_hold_rechecks_for_room_freed_elsewhere_and_ends_at_the_deadline() -> None:
    guard, _, clock, waits, _ = _guard(GLOBAL_HOUR, recheck_s=30)
    held = BudgetHeld("full", budget="cap", window="hour", until_s=T0 + 3600)
    await guard.hold(held, deadline_s=None)
    await guard.hold(held, deadline_s=clock() + 7)
    assert 24.0 <= waits.timeouts[0] <= 36.0, "a jittered recheck, not the hour's end"
    assert waits.timeouts[1] == pytest.approx(7.0), "expires_at ends the wait"


async def test_held_requests_are_counted_while_they_wait_and_released_room_wakes_them() -> None:
    guard, _, clock, _, metrics = _guard(GLOBAL_HOUR)
    real = BudgetGuard(
        guard.ledger,
        rules=guard.rules,
        prices=guard.prices,
        mode="hold",
        metrics=metrics,
        reservation_ttl_s=60,
        recheck_s=30,
        clock=clock,
    )
    held = BudgetHeld("full", budget="cap", window="hour", until_s=T0 + 3600)
    labels = real.begin_hold(held, clock() - 42)
    waiting = asyncio.create_task(real.hold(held, deadline_s=None))
    await asyncio.sleep(0.01)
    values = {"budget": "cap", "window": "hour"}
    assert metrics.registry.get_sample_value("relay_budget_held_requests", values) == 1
    assert metrics.registry.get_sample_value("relay_budget_exhausted_total", values) == 1
    assert real.oldest_held_s() == {("cap", "hour"): pytest.approx(42.0)}
    res = await real.reserve("x", _request())
    assert res is not None
    await real.release(res)  # room given back in this process wakes the held request
    await asyncio.wait_for(waiting, 1.0)
    real.end_hold(labels, clock() - 42)
    assert metrics.registry.get_sample_value("relay_budget_held_requests", values) == 0
    assert real.oldest_held_s() == {("cap", "hour"): 0.0}
