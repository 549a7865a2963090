"""Spend budgets end to end (issue 13): real broker, real Redis, relay processes, and the
simulator's ledger as the truth of what was charged."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from relay.models import format_ts
from tests.support.pipeline import Pipeline, Result
from tests.support.services import TopicFactory

MODEL = "apimart-doubao-seedance-4-0"
PRICE = 0.0252
HINTS = json.dumps({MODEL: {"1K": 0.0126, "2K": 0.0252, "4K": 0.0504}})


def _budgets(*rules: tuple[str, str, str, float]) -> str:
    return json.dumps(
        [{"name": n, "scope": s, "window": w, "limit_usd": limit} for n, s, w, limit in rules]
    )


def _records(keys: list[str], **fields: Any) -> list[tuple[bytes | None, bytes]]:
    return [
        (k.encode(), json.dumps({"model": MODEL, "input": {"prompt": k}, **fields}).encode())
        for k in keys
    ]


def _iso(moment_s: float) -> str:
    return format_ts(datetime.fromtimestamp(moment_s, UTC))


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def _charges(pipe: Pipeline, prefix: str = "") -> list[dict[str, Any]]:
    ledger = await pipe.sim_get("/_sim/ledger")
    return [c for c in ledger["charges"] if (c["idempotency_key"] or "").startswith(prefix)]


async def _sum(pipe: Pipeline, ports: list[int], name: str, **labels: str) -> float:
    return sum([await pipe.metric(port, name, **labels) for port in ports])


async def _max(pipe: Pipeline, ports: list[int], name: str, **labels: str) -> float:
    return max([await pipe.metric(port, name, **labels) for port in ports])


def _by_key(results: list[Result]) -> dict[str, Result]:
    return {r.key: r for r in results}


async def test_two_relays_share_a_global_cap_exactly(pipeline: Pipeline, unique: str) -> None:
    cap = 2.0  # 79 tasks at 0.0252 (1.9908 USD); an 80th would cross it
    env = {
        "RELAY_BUDGETS": _budgets(("cap", "global", "month", cap)),
        "RELAY_PRICE_HINTS": HINTS,
        "RELAY_BUDGET_RECHECK_S": "1",
    }
    ports = [(await pipeline.start_relay(**env))[1] for _ in range(2)]
    keys = [f"cap-{unique[:8]}-{i:03d}" for i in range(120)]
    await pipeline.produce(_records(keys))

    async def settled() -> bool:
        held = await _sum(pipeline, ports, "relay_budget_held_requests")
        return len(await _charges(pipeline)) + held >= len(keys)

    await _eventually(settled, 90, "every request charged or held")
    results = await pipeline.results(set(), 30, min_count=79)
    await asyncio.sleep(3)  # anything more would have been charged by now
    charges = await _charges(pipeline)
    total = round(sum(c["amount_usd"] for c in charges), 6)
    assert total <= cap, f"the ledger crossed the cap: {total}"
    assert total >= cap - PRICE, f"the cap was not reached to within one task: {total}"
    assert len(charges) == 79
    assert len({c["idempotency_key"] for c in charges}) == 79, "no key charged twice"
    assert {r.value["type"] for r in results} == {"task.succeeded"}, "held, never rejected"
    assert await _sum(pipeline, ports, "relay_budget_held_requests") == len(keys) - 79
    await _eventually(
        lambda: _spent_is(pipeline, ports, total), 15, "relay_budget_spent_usd equals the ledger"
    )
    assert await _max(pipeline, ports, "relay_budget_reserved_usd") == 0
    assert await _max(pipeline, ports, "relay_budget_limit_usd", budget="cap") == cap
    print(
        f"\ncap held exactly: cap {cap} USD, {len(keys)} requests on 2 relays, "
        f"{len(charges)} tasks charged, ledger sum {total} USD, "
        f"{len(keys) - len(charges)} held"
    )


async def _spent_is(pipe: Pipeline, ports: list[int], usd: float) -> bool:
    spent = await _max(pipe, ports, "relay_budget_spent_usd", budget="cap")
    return abs(spent - usd) < 1e-6


async def test_a_tenant_budget_binds_one_tenant_while_others_keep_flowing(
    pipeline: Pipeline, unique: str
) -> None:
    """No price hints: the price is learned from the first task, one task at a time till then."""
    env = {
        "RELAY_BUDGETS": _budgets(("tenant", "metadata.tenant", "month", 0.06)),
        "RELAY_BUDGET_RECHECK_S": "1",
    }
    _, port = await pipeline.start_relay(**env)
    u = unique[:8]
    acme = [f"acme-{u}-{i}" for i in range(5)]
    bolt = [f"bolt-{u}-{i}" for i in range(2)]  # within its own budget
    untenanted = [f"none-{u}-{i}" for i in range(3)]
    await pipeline.produce(
        _records(acme, metadata={"tenant": "acme"})
        + _records(bolt, metadata={"tenant": "bolt"})
        + _records(untenanted, metadata={"order": 1})
    )
    flowing = set(bolt) | set(untenanted)
    results = _by_key(await pipeline.results(flowing, 60, min_count=7))
    await asyncio.sleep(3)
    charged = Counter(c["idempotency_key"].split("-")[0] for c in await _charges(pipeline))
    assert charged == {"acme": 2, "bolt": 2, "none": 3}, "acme is capped at 2, others flow"
    assert {results[k].value["status"] for k in flowing} == {"succeeded"}
    assert sum(k in results for k in acme) == 2
    assert await pipeline.metric(port, "relay_budget_held_requests", budget="tenant") == 3

    async def two_tenants() -> bool:
        return await pipeline.metric(port, "relay_budget_instances", budget="tenant") == 2

    await _eventually(two_tenants, 15, "two tenants counted")
    # The fullest tenant (acme, 2 tasks) is what the rule's gauges show; no tenant is named.
    assert await pipeline.metric(port, "relay_budget_spent_usd") == pytest.approx(2 * PRICE)
    _, text = await pipeline.relay_get(port, "/metrics")
    assert "acme" not in text


async def test_hold_releases_held_requests_when_the_minute_rolls_over(
    pipeline: Pipeline, unique: str
) -> None:
    env = {
        "RELAY_BUDGETS": _budgets(("per-minute", "global", "minute", 0.06)),  # 2 tasks a minute
        "RELAY_PRICE_HINTS": HINTS,
    }
    _, port = await pipeline.start_relay(**env)
    second = datetime.now(UTC).second
    if second > 40:  # the first two must be admitted and the next two held within one minute
        await asyncio.sleep(61 - second)
    keys = [f"minute-{unique[:8]}-{i}" for i in range(4)]
    await pipeline.produce(_records(keys))
    produced_s = time.time()
    window_end_s = (produced_s // 60 + 1) * 60

    async def two_held() -> bool:
        return await pipeline.metric(port, "relay_budget_held_requests") == 2

    await _eventually(two_held, 15, "two requests held")
    assert len(await _charges(pipeline)) == 2
    await asyncio.sleep(max(0.0, window_end_s - time.time() - 2))
    assert len(await _charges(pipeline)) == 2, "held until the window rolls over"
    results = _by_key(await pipeline.results(set(keys), 30))
    assert {r.value["type"] for r in results.values()} == {"task.succeeded"}
    created = sorted(
        datetime.fromisoformat(c["created_at"]).timestamp() for c in await _charges(pipeline)
    )
    assert created[1] < window_end_s <= created[2], "two in each minute"
    assert created[3] - window_end_s < 5, "released as soon as the window rolled over"
    assert await pipeline.metric(port, "relay_budget_held_requests") == 0


async def test_expires_at_passing_while_held_is_expired_unsubmitted(
    pipeline: Pipeline, unique: str
) -> None:
    env = {
        "RELAY_BUDGETS": _budgets(("cap", "global", "month", 0.03)),  # one task
        "RELAY_PRICE_HINTS": HINTS,
        "RELAY_BUDGET_RECHECK_S": "1",
    }
    _, port = await pipeline.start_relay(**env)
    u = unique[:8]
    first, late, stale = f"first-{u}", f"late-{u}", f"stale-{u}"
    await pipeline.produce(_records([first]))
    await pipeline.results({first}, 30)
    await pipeline.produce(
        _records([late], expires_at=_iso(time.time() + 4))
        + _records([stale], expires_at=_iso(time.time() - 60))  # a backlog past its deadline
    )

    async def held() -> bool:
        return await pipeline.metric(port, "relay_budget_held_requests") == 1

    await _eventually(held, 10, "the late request held")
    results = _by_key(await pipeline.results({first, late, stale}, 30))
    for key in (late, stale):
        value = results[key].value
        assert (value["type"], value["error"]["code"]) == ("request.rejected", "expired")
        assert value["cost_actual"] == 0.0
    assert [c["idempotency_key"] for c in await _charges(pipeline)] == [first]
    assert await pipeline.metric(port, "relay_requests_rejected_total", code="expired") == 2
    assert await pipeline.metric(port, "relay_budget_held_requests") == 0


async def test_reject_mode_publishes_budget_exceeded_and_charges_nothing(
    pipeline: Pipeline, unique: str
) -> None:
    env = {
        "RELAY_BUDGETS": _budgets(("cap", "global", "month", 0.06)),
        "RELAY_PRICE_HINTS": HINTS,
        "RELAY_BUDGET_MODE": "reject",
    }
    _, port = await pipeline.start_relay(**env)
    keys = [f"reject-{unique[:8]}-{i}" for i in range(5)]
    await pipeline.produce(_records(keys), partition=0)  # in order: the first two fit
    results = _by_key(await pipeline.results(set(keys), 30))
    types = [
        (results[k].value["type"], (results[k].value["error"] or {}).get("code")) for k in keys
    ]
    assert types == [("task.succeeded", None)] * 2 + [("request.rejected", "budget_exceeded")] * 3
    assert "'cap' (month window, 0.06 USD)" in results[keys[2]].value["error"]["message"]
    assert sorted(c["idempotency_key"] for c in await _charges(pipeline)) == keys[:2]
    assert await pipeline.metric(port, "relay_requests_rejected_total", code="budget_exceeded") == 3
    assert await pipeline.metric(port, "relay_budget_exhausted_total", budget="cap") == 3


async def _blackhole() -> tuple[asyncio.Server, str]:
    """A MindVideo that accepts connections and never answers: submits hang."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client goes away
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def test_a_sigkill_between_reservation_and_submit_leaks_no_room_after_the_ttl(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    ttl_s = 5.0
    budget = {
        "RELAY_BUDGETS": _budgets(("cap", "global", "month", 0.06)),  # two tasks
        "RELAY_PRICE_HINTS": HINTS,
        "RELAY_BUDGET_RESERVATION_TTL_S": str(ttl_s),
        "RELAY_BUDGET_RECHECK_S": "1",
    }
    server, blackhole = await _blackhole()
    try:
        # Relay A reserves room for two requests, then its submits hang: it dies right there.
        crashed, crashed_port = await pipeline.start_relay(
            RELAY_MINDVIDEO_BASE_URL=blackhole, RELAY_MINDVIDEO_REQUEST_TIMEOUT_S="300", **budget
        )
        await pipeline.produce(_records([f"doomed-{unique[:8]}-{i}" for i in range(2)]))

        async def reserved() -> bool:
            return await pipeline.metric(crashed_port, "relay_budget_reserved_usd") == 2 * PRICE

        await _eventually(reserved, 20, "relay A holds two reservations")
        # Relay B shares the budget (same Redis) but reads another topic in another group.
        (other_topic,) = await topics(pipeline.bootstrap, "requests-b", partitions=1)
        pipeline.group_id += "-b"
        _, port = await pipeline.start_relay(RELAY_REQUEST_TOPIC=other_topic, **budget)
        pipeline.requests_topic = other_topic
        keys = [f"after-{unique[:8]}-{i}" for i in range(2)]
        await pipeline.produce(_records(keys))

        async def held() -> bool:
            return await pipeline.metric(port, "relay_budget_held_requests") == 2

        await _eventually(held, 15, "relay B held: the room is reserved by relay A")
        crashed.kill()
        killed_s = time.monotonic()
        results = _by_key(await pipeline.results(set(keys), 30))
        freed_after_s = time.monotonic() - killed_s
        assert {r.value["type"] for r in results.values()} == {"task.succeeded"}
        assert sorted(c["idempotency_key"] for c in await _charges(pipeline)) == keys
        # The room came back once the reservations lapsed (TTL after their last refresh, which
        # was at most a third of the TTL before the kill), not before and not much later.
        assert freed_after_s >= ttl_s * 2 / 3 - 1.0, freed_after_s
        assert freed_after_s <= ttl_s + 5.0 + 5.0, freed_after_s
        assert await pipeline.metric(port, "relay_budget_reservations_lapsed_total") == 2
        await _eventually(
            lambda: _spent_is(pipeline, [port], 2 * PRICE), 15, "B's tasks charged, nothing else"
        )
        assert await pipeline.metric(port, "relay_budget_reserved_usd") == 0
        print(
            f"\nroom of a SIGKILLed holder back {freed_after_s:.1f} s after the kill (TTL {ttl_s})"
        )
    finally:
        server.close()


async def test_counters_and_budget_equal_the_ledger_across_a_crash_between_create_and_record(
    tansu_pipeline: Pipeline, unique: str
) -> None:
    """The relay dies while its submits hang at MindVideo, which creates the tasks after it died:
    nothing recorded them. The restarted relay submits the keys again, MindVideo answers with
    replays (``Idempotent-Replayed: true``), and each task is counted once, in the counters and
    in the budget (it reserved the same room the dead relay had reserved, not a second)."""
    pipe = tansu_pipeline
    env = {
        "RELAY_BUDGETS": _budgets(("cap", "global", "month", 100.0)),
        "RELAY_PRICE_HINTS": HINTS,
    }
    # MindVideo creates each task at once but answers 6 s later: the relay dies before that.
    await pipe.sim_put("/_sim/faults", {"reply_delay_ms": 6_000})
    relay, port = await pipe.start_relay(**env)
    keys = [f"crash-{unique[:8]}-{i}" for i in range(12)]
    await pipe.produce(_records(keys))

    async def all_submitting() -> bool:
        reserved = await pipe.metric(port, "relay_budget_reserved_usd")
        return abs(reserved - 12 * PRICE) < 1e-9

    await _eventually(all_submitting, 20, "every key reserved and being submitted")

    async def all_created() -> bool:
        stats: dict[str, object] = await pipe.sim_get("/_sim/stats")
        return stats["charges"] == len(keys)

    await _eventually(all_created, 10, "MindVideo created every task")
    assert await pipe.metric(port, "relay_tasks_submitted_total") == 0, "none answered yet"
    relay.kill()
    await pipe.sim_put("/_sim/faults", {"reply_delay_ms": 0})
    await pipe.restart_relay(relay, port)
    results = _by_key(await pipe.results(set(keys), 90))
    assert {r.value["type"] for r in results.values()} == {"task.succeeded"}
    ledger = await pipe.sim_get("/_sim/ledger")
    assert sorted(c["idempotency_key"] for c in ledger["charges"]) == sorted(keys)
    stats = await pipe.sim_get("/_sim/stats")
    posts = stats["requests"]["POST /api/v1/tasks"]["200"]
    assert posts == 2 * len(keys), "each key created by the dead relay, replayed to the new one"
    assert await pipe.metric(port, "relay_tasks_submitted_total") == len(keys)
    estimated = await pipe.metric(port, "relay_cost_estimated_usd_total")
    assert estimated == pytest.approx(ledger["total_estimate_usd"])
    await _eventually(
        lambda: _spent_is(pipe, [port], ledger["total_actual_usd"]), 15, "budget = ledger"
    )
    assert await pipe.metric(port, "relay_budget_reserved_usd") == 0
    code, output = await reconcile(pipe, "10m", f"--metrics-url={metrics_url(port)}")
    assert code == 0, output
    assert "counters of 1 relay(s): agree" in output


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


async def reconcile(pipe: Pipeline, since: str, *extra: str) -> tuple[int, str]:
    """``relay reconcile`` run as an operator would, with the relays' settings: exit, output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "reconcile",
        "--since",
        since,
        *extra,
        env=pipe.relay_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()
