"""The lifecycle's budget and deadline rows against fakes (no service): a request is reserved for,
held, rejected or expired where the table says, and every task is counted exactly once."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.exceptions import OperatorError, RetryableError
from relay.metrics import RelayMetrics
from relay.models import RequestRecord, format_ts, payload_fingerprint
from relay.pipeline.idempotency import KeyState
from relay.spend.guard import BudgetGuard, BudgetMode, Waiter
from relay.spend.prices import PriceBook
from relay.spend.rules import parse_rules
from tests.pipeline.fakes import MODEL, Harness, request, source
from tests.spend.fakes import FakeLedger

PRICE = 25200  # micro-USD of one 2K image
CAP = '[{"name": "cap", "scope": "global", "window": "month", "limit_usd": 0.06}]'


@dataclass
class Clock:
    now_s: float = 1_795_633_200.0

    def __call__(self) -> float:
        return self.now_s


def _harness(
    *, mode: BudgetMode = "hold", rules: str = CAP, waiter: Waiter | None = None
) -> tuple[Harness, FakeLedger, Clock]:
    clock = Clock()
    metrics = RelayMetrics()
    ledger = FakeLedger(clock=clock)

    async def no_wait(event: asyncio.Event, timeout_s: float) -> None:
        clock.now_s += timeout_s  # a hold "waits" by moving the clock on

    guard = BudgetGuard(
        ledger,
        rules=parse_rules(rules),
        prices=PriceBook({MODEL: {"2K": 0.0252}}),
        mode=mode,
        metrics=metrics,
        reservation_ttl_s=60,
        recheck_s=30,
        clock=clock,
        rng=random.Random(1),
        waiter=waiter or no_wait,
    )
    return Harness(metrics=metrics, budget=guard, wall_clock=clock), ledger, clock


def _types(h: Harness) -> list[tuple[str, str | None]]:
    return [(r.type, r.error.code if r.error else None) for r, _ in h.publisher.results]


def _iso(moment_s: float) -> str:
    return format_ts(datetime.fromtimestamp(moment_s, UTC))


async def test_a_submit_is_reserved_for_then_charged_then_settled() -> None:
    h, ledger, _ = _harness()
    await h.processor.process(source("k1", request("k1")))
    assert _types(h) == [("task.succeeded", None)]
    assert ledger.calls == ["reserve", "confirm", "settle"], "no refresh of a fresh reservation"
    assert (ledger.total_spent("cap"), ledger.total_reserved("cap")) == (PRICE, 0)
    assert h.metric("relay_cost_estimated_usd_total", model=MODEL) == pytest.approx(0.0252)


async def test_reject_mode_publishes_budget_exceeded_and_submits_nothing() -> None:
    h, ledger, _ = _harness(mode="reject")
    for i in range(3):
        await h.processor.process(source(f"k{i}", request(f"k{i}"), offset=i))
    assert _types(h)[2] == ("request.rejected", "budget_exceeded")
    assert h.client.submits == ["k0", "k1"]
    assert h.store.record("k2").state == KeyState.REJECTED
    assert ledger.total_spent("cap") == 2 * PRICE
    assert h.metric("relay_requests_rejected_total", code="budget_exceeded") == 1


async def test_hold_mode_waits_for_room_then_submits() -> None:
    rolled_over = asyncio.Event()
    waits: list[float] = []

    async def until_rollover(event: asyncio.Event, timeout_s: float) -> None:
        waits.append(timeout_s)
        await rolled_over.wait()

    h, ledger, _clock = _harness(waiter=until_rollover)
    for i in range(2):
        await h.processor.process(source(f"k{i}", request(f"k{i}"), offset=i))
    held = asyncio.create_task(h.processor.process(source("k2", request("k2"), offset=2)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not held.done(), "held: neither submitted nor rejected"
    assert h.client.submits == ["k0", "k1"]
    assert [r.type for r, _ in h.publisher.results] == ["task.succeeded"] * 2
    labels = {"budget": "cap", "window": "month"}
    assert h.metric("relay_budget_held_requests", **labels) == 1
    ledger.spent.clear()  # the month rolled over
    rolled_over.set()
    await asyncio.wait_for(held, 1.0)
    assert _types(h)[2] == ("task.succeeded", None)
    assert h.client.submits == ["k0", "k1", "k2"]
    assert h.metric("relay_budget_exhausted_total", **labels) == 1, "counted once per hold"
    assert h.metric("relay_budget_held_requests", **labels) == 0
    [wait] = waits  # one recheck-long wait (jittered), no busy loop
    assert 24 <= wait <= 36


async def test_expires_at_passing_while_held_rejects_it_unsubmitted() -> None:
    h, ledger, clock = _harness()
    for i in range(2):
        await h.processor.process(source(f"k{i}", request(f"k{i}"), offset=i))
    deadline = _iso(clock.now_s + 90)  # three rechecks of 30 s
    await h.processor.process(source("late", request("late", expires_at=deadline), offset=2))
    assert _types(h)[2] == ("request.rejected", "expired")
    assert "late" not in h.client.submits
    assert ledger.total_spent("cap") == 2 * PRICE
    assert h.store.record("late").state == KeyState.REJECTED


async def test_a_backlog_past_its_deadline_is_rejected_without_budgets() -> None:
    clock = Clock()
    h = Harness(wall_clock=clock)
    await h.processor.process(source("k", request("k", expires_at=_iso(clock.now_s - 1))))
    assert _types(h) == [("request.rejected", "expired")]
    assert h.client.submits == []
    assert h.metric("relay_requests_rejected_total", code="expired") == 1
    await h.processor.process(source("k2", request("k2", expires_at=_iso(clock.now_s + 60))))
    assert _types(h)[1] == ("task.succeeded", None), "not expired yet: submitted as usual"


async def test_an_outage_that_outlasts_the_deadline_expires_the_request() -> None:
    """MindVideo cannot be reached at all: nothing was sent, so the request can still cost
    nothing, and does."""
    h, ledger, clock = _harness()

    def later() -> None:
        clock.now_s += 10

    h.client.before = later
    h.client.errors["submit"] += [RetryableError("refused", reason="connect", maybe_sent=False)] * 9
    await h.processor.process(source("k", request("k", expires_at=_iso(clock.now_s + 35))))
    assert _types(h) == [("request.rejected", "expired")]
    assert len(h.client.submits) == 4
    assert (ledger.total_spent("cap"), ledger.total_reserved("cap")) == (0, 0), "room given back"


async def test_a_submit_that_may_have_reached_mindvideo_is_followed_past_the_deadline() -> None:
    h, ledger, clock = _harness()

    def later() -> None:
        clock.now_s += 10

    h.client.before = later
    h.client.errors["submit"] += [RetryableError("timed out", reason="network")] * 4
    await h.processor.process(source("k", request("k", expires_at=_iso(clock.now_s + 15))))
    assert _types(h) == [("task.succeeded", None)], "not claimed to cost nothing"
    assert ledger.total_spent("cap") == PRICE


async def test_the_deadline_ends_a_wait_at_the_closed_gate() -> None:
    h = Harness()  # real time: the gate is checked against the wall clock
    h.gate.close(OperatorError(401, "revoked"))
    expires = _iso(time.time() + 0.3)
    await asyncio.wait_for(h.processor.process(source("k", request("k", expires_at=expires))), 5)
    assert _types(h) == [("request.rejected", "expired")]
    assert h.client.submits == []


async def test_a_reservation_that_lapsed_at_the_gate_is_made_again() -> None:
    h, ledger, clock = _harness()
    h.client.errors["submit"].append(OperatorError(402, "no credit"))
    task = asyncio.create_task(h.processor.process(source("k", request("k"))))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not h.gate.is_open
    [rid] = ledger.reservations
    clock.now_s += 61  # waited longer than the TTL (60 s) behind the gate
    ledger.lapse(rid)
    h.gate.reopen()
    await asyncio.wait_for(task, 5)
    assert _types(h) == [("task.succeeded", None)]
    assert ledger.calls.count("reserve") == 2
    assert (ledger.total_spent("cap"), ledger.total_reserved("cap")) == (PRICE, 0)


async def test_a_task_recorded_by_another_owner_first_is_not_counted_again() -> None:
    """A rebalance during a slow submit: another relay recorded the same task first."""
    h, ledger, _ = _harness()

    def other_owner_records() -> None:
        h.store.hashes["k"].update(state=KeyState.SUBMITTED, task_id="task_1")

    h.client.before = other_owner_records
    await h.processor.process(source("k", request("k")))
    assert _types(h) == [("task.succeeded", None)]
    assert h.metric("relay_tasks_submitted_total", model=MODEL) == 0
    assert h.metric("relay_cost_estimated_usd_total", model=MODEL) == 0
    assert ledger.calls.count("release") == 1, "its reservation is given back"
    assert ledger.total_reserved("cap") == 0


async def test_a_replay_of_a_task_made_before_the_claim_is_not_counted() -> None:
    """The key's Redis record was lost: MindVideo replays the task it made back then."""
    h, ledger, _ = _harness()
    h.client.tasks["k"] = "task_old"
    await h.processor.process(source("k", request("k")))
    assert _types(h) == [("task.succeeded", None)]
    assert h.metric("relay_cost_estimated_usd_total", model=MODEL) == 0
    assert ledger.total_spent("cap") == 0


async def test_a_replay_after_a_crash_before_the_record_is_counted_once() -> None:
    """The previous owner's submit created the task, then it died before recording it: nobody
    counted it, so the resumed request does, although MindVideo says it is a replay."""
    h, ledger, _ = _harness()
    h.client.tasks["k"] = "task_made_before_the_crash"
    fp = payload_fingerprint(MODEL, request("k")["input"])
    h.store.hashes["k"] = {"fp": fp, "state": KeyState.CLAIMED}
    await h.processor.process(source("k", request("k")))
    assert h.metric("relay_tasks_submitted_total", model=MODEL) == 1
    assert h.metric("relay_cost_estimated_usd_total", model=MODEL) == pytest.approx(0.0252)
    assert ledger.total_spent("cap") == PRICE


async def test_a_task_whose_record_failed_is_recorded_again_not_submitted_again() -> None:
    """The submit created the task but its record failed (Redis): the retry writes the record
    from MindVideo's kept answer (no second submit), and the task is counted once."""
    h, ledger, _ = _harness()
    h.store.errors["mark_submitted"].append(RedisConnectionError("down"))
    await h.processor.process(source("k", request("k")))
    assert h.client.submits == ["k"]
    assert h.metric("relay_tasks_submitted_total", model=MODEL) == 1
    assert ledger.total_spent("cap") == PRICE


async def test_a_charge_that_fails_is_finished_without_a_second_submit() -> None:
    h, ledger, _ = _harness()
    ledger.errors.append(RedisConnectionError("down"))  # the reserve fails first
    ledger_confirm = ledger.confirm
    failed = False

    async def confirm_once_failing(*args: object, **kwargs: object) -> bool:
        nonlocal failed
        if not failed:
            failed = True
            raise RedisConnectionError("down")
        return await ledger_confirm(*args, **kwargs)  # type: ignore[arg-type]

    ledger.confirm = confirm_once_failing  # type: ignore[method-assign]
    await h.processor.process(source("k", request("k")))
    assert h.client.submits == ["k"]
    assert h.metric("relay_tasks_submitted_total", model=MODEL) == 1
    assert ledger.total_spent("cap") == PRICE


async def test_a_resumed_task_is_charged_if_its_holder_could_not() -> None:
    h, ledger, _ = _harness()
    guard = h.budget
    assert guard is not None
    rec = RequestRecord(model=MODEL, input=request("k")["input"])
    assert await guard.reserve("k", rec) is not None  # then the holder died after recording
    fp = payload_fingerprint(MODEL, request("k")["input"])
    h.store.hashes["k"] = {
        "fp": fp,
        "state": KeyState.SUBMITTED,
        "task_id": "task_1",
        "cost_estimate": "0.0252",
        "submitted_at": _iso(1_795_633_200.0),
    }
    await h.processor.process(source("k", request("k")))
    assert _types(h) == [("task.succeeded", None)]
    assert (ledger.total_spent("cap"), ledger.total_reserved("cap")) == (PRICE, 0)
