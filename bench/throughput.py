"""Throughput end to end (request record → result record → webhook 2xx) with the relays' CPU
per request and event-loop lag over each run, Redis bytes and commands per request, spend
accounting, and the minimal loop the overhead and CPU ratios divide by."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from bench import redisstats
from bench.load import produce_burst, receiver_stats, wait_for_webhooks
from bench.relaystats import cpu_seconds, lag_buckets, quantile, wait_until_quiet
from bench.stack import Relay, Stack, Topics, get_json, metric_sum, post_json

INSTANT_SIM_FLAGS = ("--queued-s", "0", "--processing-s", "0", "--failure-rate", "0.1")
WARMUP_ROUNDS = 5
CENT_USD = 0.01
MS_PER_S = 1000.0
# The CPU window ends when the last webhook is seen: poll the receiver often near the end.
WEBHOOK_POLL_S = 0.05


@dataclass(frozen=True)
class ThroughputConfig:
    requests: int
    runs: int
    warmup: int
    timeout_s: float


async def warm_up(
    stack: Stack, topics: Topics, relays: list[Relay], receiver: str, size: int, timeout_s: float
) -> int:
    """Produce small batches until every relay has consumed some (the group has settled);
    returns how many requests it produced."""
    for round_ in range(WARMUP_ROUNDS):
        before = (await receiver_stats(receiver))["count"]
        keys = [f"warm{round_}-{i}-{time.time_ns()}" for i in range(size)]
        await produce_burst(stack.bootstrap, topics.requests, keys)
        stats = await wait_for_webhooks(receiver, before + size, timeout_s)
        if stats["count"] < before + size:
            raise RuntimeError(f"warm-up: only {stats['count'] - before}/{size} webhooks came")
        consumed = [await metric_sum(r.port, "relay_records_consumed_total") for r in relays]
        if round_ >= 1 and all(c > 0 for c in consumed):
            return (round_ + 1) * size
    raise RuntimeError("warm-up: a relay of the group never got a partition")


async def spend(sim: str, relays: list[Relay]) -> dict[str, Any]:
    """The relays' cost counters against the simulator's ledger."""
    ledger = await get_json(f"{sim}/_sim/ledger", timeout_s=120)
    assert isinstance(ledger, dict)
    estimated = sum([await metric_sum(r.port, "relay_cost_estimated_usd_total") for r in relays])
    actual = sum([await metric_sum(r.port, "relay_cost_actual_usd_total") for r in relays])
    out = {
        "charges": ledger["count"],
        "relay_estimated_usd": round(estimated, 6),
        "ledger_estimated_usd": ledger["total_estimate_usd"],
        "relay_actual_usd": round(actual, 6),
        "ledger_actual_usd": ledger["total_actual_usd"],
    }
    out["agree"] = (
        abs(estimated - ledger["total_estimate_usd"]) < CENT_USD / 2
        and abs(actual - ledger["total_actual_usd"]) < CENT_USD / 2
    )
    return out


@dataclass
class _Runs:
    """Per-run figures of one throughput phase, before the medians are taken."""

    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    lag_p99_ms: list[float] = field(default_factory=list)
    bytes_retained: list[float] = field(default_factory=list)
    used_memory_delta: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    incomplete: list[str] = field(default_factory=list)
    not_quiet: list[str] = field(default_factory=list)


async def _one_run(
    stack: Stack,
    topics: Topics,
    relays: list[Relay],
    receiver: str,
    keys: list[str],
    cfg: ThroughputConfig,
    redis: Redis | None,
    runs: _Runs,
) -> None:
    """One burst of ``keys``: its rate, the relays' CPU and loop lag over it, and, with
    ``redis``, what it left in Redis once every result is published and every webhook recorded."""
    requests = len(keys)
    before = (await receiver_stats(receiver))["count"]
    # The previous run's last deliveries are written to Redis before this one starts.
    await wait_until_quiet(relays, before, cfg.timeout_s)
    state_before = await redisstats.snapshot(redis) if redis is not None else None
    lag_before = await lag_buckets(relays)
    cpu_before = cpu_seconds(relays)
    started = time.time()
    await produce_burst(stack.bootstrap, topics.requests, keys)
    stats = await wait_for_webhooks(receiver, before + requests, cfg.timeout_s, WEBHOOK_POLL_S)
    cpu_s = cpu_seconds(relays) - cpu_before
    lag_p99 = quantile(lag_before, await lag_buckets(relays), 0.99)
    got = stats["count"] - before
    if got < requests:
        # Recorded, not fatal: a stalled relay is a result too.
        runs.incomplete.append(f"{got}/{requests} webhooks in {cfg.timeout_s:g} s")
        runs.rates.append(got / cfg.timeout_s)
    else:
        runs.rates.append(requests / (stats["last_at"] - started))
    runs.cpu_ms.append(cpu_s * MS_PER_S / max(1, got))
    if lag_p99 is not None:
        runs.lag_p99_ms.append(lag_p99 * MS_PER_S)
    if redis is None or state_before is None:
        return
    quiet = await wait_until_quiet(relays, before + requests, cfg.timeout_s)
    if not quiet.reached:
        runs.not_quiet.append(f"still busy {quiet.waited_s:.0f} s after the last webhook")
    state_after = await redisstats.snapshot(redis)
    calls = redisstats.command_calls(state_before, state_after)
    runs.calls.update(calls)
    runs.commands.append(sum(calls.values()) / requests)
    runs.bytes_retained.append((state_after.stored_memory - state_before.stored_memory) / requests)
    runs.used_memory_delta.append((state_after.used_memory - state_before.used_memory) / requests)


async def relay_throughput(
    stack: Stack, count: int, cfg: ThroughputConfig, *, with_minimal: bool, with_state: bool
) -> dict[str, Any]:
    """Requests/s, CPU per request and loop lag for ``count`` relay processes in one group (the
    median of ``cfg.runs``); with ``with_state``, Redis bytes and commands per request too."""
    name = f"tp{count}"
    topics = await stack.topics(name)
    sim = await stack.start_sim(name, INSTANT_SIM_FLAGS)
    receiver = await stack.start_receiver(name)
    redis = Redis.from_url(stack.redis_url) if with_state else None
    try:
        relays = await stack.start_relays(name, count, topics, sim, receiver)
        produced = await warm_up(stack, topics, relays, receiver, cfg.warmup, cfg.timeout_s)
        runs = _Runs()
        for run in range(cfg.runs):
            keys = [f"{name}-run{run}-{i}" for i in range(cfg.requests)]
            await _one_run(stack, topics, relays, receiver, keys, cfg, redis, runs)
            produced += len(keys)
        out: dict[str, Any] = {
            "relays": count,
            "requests_per_run": cfg.requests,
            "runs_rps": [round(r, 1) for r in runs.rates],
            "rps": round(statistics.median(runs.rates), 1),
            "runs_cpu_ms_per_request": [round(c, 3) for c in runs.cpu_ms],
            "cpu_ms_per_request": round(statistics.median(runs.cpu_ms), 3),
            "incomplete": runs.incomplete,
            "bad_signatures": (await receiver_stats(receiver))["bad_signatures"],
            "spend": await spend(sim, relays),
        }
        if runs.lag_p99_ms:
            out["runs_loop_lag_p99_ms"] = [round(v, 1) for v in runs.lag_p99_ms]
            out["loop_lag_p99_ms"] = round(statistics.median(runs.lag_p99_ms), 1)
        if redis is not None:
            out["state"] = await _state(redis, topics.group, cfg, produced, runs)
        if with_minimal:
            stack.stop(relays)
            await post_json(f"{sim}/_sim/reset", {})
            out.update(await _minimal(stack, name, sim, receiver, cfg))
            out["overhead_ratio"] = round(out["rps"] / out["minimal_rps"], 3)
            out["cpu_ratio"] = round(
                out["cpu_ms_per_request"] / out["minimal_cpu_ms_per_request"], 3
            )
        return out
    finally:
        if redis is not None:
            await redis.aclose()
        stack.stop_phase()


async def _state(
    redis: Redis, prefix: str, cfg: ThroughputConfig, produced: int, runs: _Runs
) -> dict[str, Any]:
    """The Redis figures of the phase: medians of the runs; the top commands over all runs; the
    keys left by all of it (warm-up included), by kind."""
    state: dict[str, Any] = {
        "runs_bytes_retained_per_request": [round(b, 1) for b in runs.bytes_retained],
        "runs_used_memory_delta_per_request": [round(b, 1) for b in runs.used_memory_delta],
        "runs_commands_per_request": [round(c, 2) for c in runs.commands],
        "not_quiet": runs.not_quiet,
    }
    if runs.bytes_retained:
        state["bytes_retained_per_request"] = round(statistics.median(runs.bytes_retained), 1)
        measured = cfg.requests * len(runs.commands)
        state.update(redisstats.per_request(dict(runs.calls), measured))
        state["commands_per_request"] = round(statistics.median(runs.commands), 2)
    state["requests_in_redis"] = produced
    state["key_kinds"] = await redisstats.key_kinds(redis, prefix, produced)
    return state


async def _minimal(
    stack: Stack, name: str, sim: str, receiver: str, cfg: ThroughputConfig
) -> dict[str, Any]:
    """The minimal loop, ``cfg.runs`` times, each in a process of its own."""
    rates: list[float] = []
    cpu_ms: list[float] = []
    for run in range(cfg.runs):
        argv = ["-m", "bench.baselines", "--sim", sim, "--receiver", receiver]
        argv += ["--prefix", f"min{run}", "--count", str(cfg.requests)]
        got = await stack.run_to_end(f"minimal-{name}-{run}", argv, cfg.timeout_s)
        rates.append(float(got["rps"]))
        cpu_ms.append(float(got["cpu_s"]) * MS_PER_S / cfg.requests)
    return {
        "minimal_runs_rps": [round(r, 1) for r in rates],
        "minimal_rps": round(statistics.median(rates), 1),
        "minimal_runs_cpu_ms_per_request": [round(c, 3) for c in cpu_ms],
        "minimal_cpu_ms_per_request": round(statistics.median(cpu_ms), 3),
    }
