"""Webhooks under degradation, on real relay processes and real receivers over HTTP (issue 12):
a struggling endpoint keeps receiving, a dead one costs one probe per cool-down, an endpoint
coming back gets its backlog within one cool-down, and one hanging host does not slow others.

Cool-downs are shortened by settings to keep the suite fast; the rules asserted are the ones
docs/webhooks.md states for the defaults (the unanswered ratio, minimum volume and no-success
period keep their default values)."""

from __future__ import annotations

import asyncio
import json
import time

from tests.support.pipeline import Pipeline
from tests.support.services import TopicFactory
from tests.support.webhook_receiver import DeadReceiver, Receiver
from tests.support.webhooks import (
    Record,
    metric,
    percentile,
    read_topic,
    request,
    webhook_dlq,
    webhook_env,
)

TIMEOUT_S = 40.0
SLACK_S = 2.0  # intake, polling and a busy machine, on top of the rule


def _published(results: list[Record]) -> dict[str, float]:
    """Event id -> when its result was published (record timestamp, unix seconds)."""
    return {json.loads(r.value)["event_id"]: r.timestamp_ms / 1000 for r in results}


def _fail_twice(arrival: int) -> int:
    return 500 if arrival <= 2 else 200


async def test_a_degraded_receiver_gets_every_webhook_within_its_schedule(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    """Every webhook fails its first two attempts (HTTP 500) and succeeds on the third."""
    receiver = Receiver(behaviour=_fail_twice)
    await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    cooldown_s, schedule = 5.0, [0.0, 1.0, 2.0, 4.0]
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_DEFAULT_URL=receiver.url,
        RELAY_WEBHOOK_RETRY_SCHEDULE=",".join(str(s) for s in schedule),
        RELAY_WEBHOOK_BREAKER_COOLDOWN_S=str(cooldown_s),
        RELAY_WEBHOOK_BREAKER_MAX_COOLDOWN_S="20",
    )
    try:
        _, port = await pipeline.start_relay(**env)
        keys = [f"degraded-{unique[:8]}-{i}" for i in range(40)]
        await pipeline.produce([request(k) for k in keys])
        results = await read_topic(pipeline.bootstrap, pipeline.results_topic, 40, TIMEOUT_S)
        published = _published(results)
        assert len(published) == 40
        assert await receiver.wait_for(lambda: len(receiver.answered()) == 40, TIMEOUT_S)

        # Attempts 0, 1 and 2 with the schedule's +20 % jitter, plus at most one cool-down.
        bound_s = sum(schedule[:3]) * 1.2 + cooldown_s + SLACK_S
        answered = receiver.answered()
        times = [answered[eid].received_at - at for eid, at in published.items()]
        print(
            f"\ndegraded receiver (500, 500, 200): delivered p50={percentile(times, 0.5):.2f}s "
            f"p95={percentile(times, 0.95):.2f}s max={max(times):.2f}s "
            f"(schedule alone {sum(schedule[:3]):.1f}s, bound {bound_s:.1f}s)"
        )
        assert max(times) <= bound_s
        assert all(len(receiver.by_id()[eid]) >= 3 for eid in published)
        # Stronger than the bound: 2-in-3 errors from a live endpoint never open its breaker.
        assert await metric(port, "relay_webhook_circuit_transitions_total", state="open") == 0
        assert await metric(port, "relay_webhook_attempts_total", outcome="circuit_open") == 0
        assert await read_topic(pipeline.bootstrap, dlq, 1, 0.5) == [], "nothing dead-lettered"
    finally:
        await receiver.stop()


async def test_an_outage_ends_within_one_cooldown_of_recovery(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    """The receiver is down (connection refused) for 20 s, then up."""
    receiver = Receiver()  # not listening yet
    dlq = await webhook_dlq(pipeline, topics)
    (events_topic,) = await topics(pipeline.bootstrap, "webhook-events")
    max_cooldown_s = 8.0
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_DEFAULT_URL=receiver.url,
        RELAY_WEBHOOK_RETRY_SCHEDULE="0,1,2,4,8,8,8,8",
        RELAY_WEBHOOK_BREAKER_COOLDOWN_S="2",
        RELAY_WEBHOOK_BREAKER_MAX_COOLDOWN_S=str(max_cooldown_s),
        RELAY_WEBHOOK_EVENTS_TOPIC=events_topic,
    )
    try:
        _, port = await pipeline.start_relay(**env)
        keys = [f"outage-{unique[:8]}-{i}" for i in range(30)]
        down_at = time.time()
        await pipeline.produce([request(k) for k in keys])
        results = await read_topic(pipeline.bootstrap, pipeline.results_topic, 30, TIMEOUT_S)
        published = _published(results)
        assert len(published) == 30
        await asyncio.sleep(max(0.0, down_at + 20 - time.time()))
        assert await metric(port, "relay_webhook_circuit_transitions_total", state="open") >= 1
        await receiver.start()
        up_at = time.time()
        assert await receiver.wait_for(lambda: len(receiver.answered()) == 30, TIMEOUT_S)

        answered = receiver.answered()
        after = [answered[eid].received_at - up_at for eid in published]
        print(
            f"\noutage of 20 s: all 30 delivered {max(after):.2f}s after recovery "
            f"(p50 {percentile(after, 0.5):.2f}s; cool-down cap {max_cooldown_s:.0f}s)"
        )
        assert max(after) <= max_cooldown_s + SLACK_S
        assert await read_topic(pipeline.bootstrap, dlq, 1, 0.5) == [], "nothing dead-lettered"

        events = await read_topic(pipeline.bootstrap, events_topic, 2, TIMEOUT_S)
        kinds = [json.loads(e.value)["type"] for e in events]
        assert kinds[0] == "webhook.endpoint.opened"
        assert kinds[-1] == "webhook.endpoint.closed"
        assert {e.key for e in events} == {f"http://127.0.0.1:{receiver.port}"}
    finally:
        await receiver.stop()


async def test_a_dead_receiver_gets_one_probe_per_cooldown_per_process(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    """Two relays, a receiver that drops every connection. Once both breakers are open, each
    relay sends one probe per cool-down (1, 2, 4, then 4 s: the cap), not one per delivery;
    when the receiver comes back, everything arrives within one cool-down."""
    dead = DeadReceiver()
    await dead.start()
    dlq = await webhook_dlq(pipeline, topics)
    cap_s = 4.0
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_DEFAULT_URL=dead.url(),
        RELAY_WEBHOOK_RETRY_SCHEDULE="0,1,2,4,8,8,8,8,8,8",
        RELAY_WEBHOOK_BREAKER_COOLDOWN_S="1",
        RELAY_WEBHOOK_BREAKER_MAX_COOLDOWN_S=str(cap_s),
    )
    receiver = Receiver(port=dead.port)
    try:
        ports = [(await pipeline.start_relay(**env))[1] for _ in range(2)]
        keys = [f"dead-{unique[:8]}-{i}" for i in range(40)]
        await pipeline.produce([request(k) for k in keys])
        results = await read_topic(pipeline.bootstrap, pipeline.results_topic, 40, TIMEOUT_S)
        published = _published(results)
        for port in ports:
            for _ in range(200):
                if await metric(port, "relay_webhook_circuit_transitions_total", state="open"):
                    break
                await asyncio.sleep(0.1)
        tripped_at = time.time()
        await asyncio.sleep(3 * cap_s)  # cool-downs 1, 2, 4 s: now at the cap
        window_start = time.time()
        window_s = 12.0  # three cool-downs at the cap: 2 to 8 probes from the two relays
        await asyncio.sleep(window_s)
        probes = [t for t in dead.connections if window_start <= t < window_start + window_s]
        per_process_max = window_s / cap_s + 1
        print(
            f"\ndead receiver, 2 relays: {len(dead.connections)} connections in "
            f"{time.time() - tripped_at + 3:.0f}s, {len(probes)} in a {window_s:.0f}s window "
            f"at a {cap_s:.0f}s cool-down (at most {2 * per_process_max:.0f})"
        )
        assert 2 <= len(probes) <= 2 * per_process_max
        for port in ports:
            assert await metric(port, "relay_webhook_attempts_total", outcome="circuit_open") > 0

        await dead.stop()
        await receiver.start()
        up_at = time.time()
        assert await receiver.wait_for(lambda: len(receiver.answered()) == 40, TIMEOUT_S)
        answered = receiver.answered()
        after = max(answered[eid].received_at - up_at for eid in published)
        print(f"back up: all 40 delivered {after:.2f}s after recovery")
        assert after <= cap_s + SLACK_S
    finally:
        await dead.stop()
        await receiver.stop()


async def test_url_variants_of_a_hanging_host_do_not_delay_a_healthy_host(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    """20 URLs on one hanging host share one origin's 5 slots (and at most 5 waiting), so with
    20 delivery slots in the process a healthy host is still served at once."""
    healthy, hanging = Receiver(), Receiver(behaviour=lambda _: -30.0)
    await healthy.start()
    await hanging.start()
    dlq = await webhook_dlq(pipeline, topics)
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_TIMEOUT_S="5",
        RELAY_WEBHOOK_LEASE_S="8",
        RELAY_WEBHOOK_MAX_IN_FLIGHT="20",
        RELAY_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT="5",
    )
    base = f"http://127.0.0.1:{hanging.port}"
    try:
        await pipeline.start_relay(**env)
        slow = [f"slow-{unique[:8]}-{i}" for i in range(20)]
        await pipeline.produce(
            [request(k, f"{base}/tenant/{i}/hook?sig={i}") for i, k in enumerate(slow)]
        )
        assert await hanging.wait_for(lambda: len(hanging.deliveries) >= 5, TIMEOUT_S)
        fast = [f"fast-{unique[:8]}-{i}" for i in range(20)]
        await pipeline.produce([request(k, healthy.url) for k in fast])
        assert await healthy.wait_for(lambda: len(healthy.answered()) == 20, TIMEOUT_S)

        results = await read_topic(pipeline.bootstrap, pipeline.results_topic, 40, TIMEOUT_S)
        published = {json.loads(r.value)["event_id"]: r.timestamp_ms / 1000 for r in results}
        answered = healthy.answered()
        latency = [d.received_at - published[eid] for eid, d in answered.items()]
        print(
            f"\nhealthy host beside 20 URL variants of a hanging one: "
            f"p50={percentile(latency, 0.5) * 1000:.0f}ms max={max(latency) * 1000:.0f}ms"
        )
        assert max(latency) < 2.5
        starts = sorted(d.received_at for d in hanging.deliveries)
        at_once = max(sum(1 for t in starts if s <= t < s + 4.5) for s in starts)
        assert at_once <= 5, "one origin's slots, whatever its URLs"
        assert len({d.headers.get("webhook-id") for d in hanging.deliveries}) >= 5
    finally:
        await healthy.stop()
        await hanging.stop()
