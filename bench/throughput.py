"""Throughput end to end (request record → result record → webhook 2xx), spend accounting, and
the minimal loop the overhead ratio divides by."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench.baselines import CONNECTIONS, minimal_loop
from bench.load import produce_burst, receiver_stats, wait_for_webhooks
from bench.stack import Relay, Stack, Topics, get_json, metric_sum, post_json

INSTANT_SIM_FLAGS = ("--queued-s", "0", "--processing-s", "0", "--failure-rate", "0.1")
WARMUP_ROUNDS = 5
CENT_USD = 0.01


@dataclass(frozen=True)
class ThroughputConfig:
    requests: int
    runs: int
    warmup: int
    timeout_s: float


async def warm_up(
    stack: Stack, topics: Topics, relays: list[Relay], receiver: str, size: int, timeout_s: float
) -> None:
    """Produce small batches until every relay has consumed some (the group has settled)."""
    for round_ in range(WARMUP_ROUNDS):
        before = (await receiver_stats(receiver))["count"]
        keys = [f"warm{round_}-{i}-{time.time_ns()}" for i in range(size)]
        await produce_burst(stack.bootstrap, topics.requests, keys)
        stats = await wait_for_webhooks(receiver, before + size, timeout_s)
        if stats["count"] < before + size:
            raise RuntimeError(f"warm-up: only {stats['count'] - before}/{size} webhooks came")
        consumed = [await metric_sum(r.port, "relay_records_consumed_total") for r in relays]
        if round_ >= 1 and all(c > 0 for c in consumed):
            return
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


async def relay_throughput(
    stack: Stack, count: int, cfg: ThroughputConfig, *, with_minimal: bool
) -> dict[str, Any]:
    """Requests/s for ``count`` relay processes in one group: the median of ``cfg.runs``."""
    name = f"tp{count}"
    topics = await stack.topics(name)
    sim = await stack.start_sim(name, INSTANT_SIM_FLAGS)
    receiver = await stack.start_receiver(name)
    try:
        relays = await stack.start_relays(name, count, topics, sim, receiver)
        await warm_up(stack, topics, relays, receiver, cfg.warmup, cfg.timeout_s)
        rates: list[float] = []
        incomplete: list[str] = []
        for run in range(cfg.runs):
            before = (await receiver_stats(receiver))["count"]
            keys = [f"{name}-run{run}-{i}" for i in range(cfg.requests)]
            started = time.time()
            await produce_burst(stack.bootstrap, topics.requests, keys)
            stats = await wait_for_webhooks(receiver, before + cfg.requests, cfg.timeout_s)
            got = stats["count"] - before
            if got < cfg.requests:
                # Recorded, not fatal: a stalled relay is a result too.
                incomplete.append(
                    f"run {run}: {got}/{cfg.requests} webhooks in {cfg.timeout_s:g} s"
                )
                rates.append(got / cfg.timeout_s)
                continue
            rates.append(cfg.requests / (stats["last_at"] - started))
        out: dict[str, Any] = {
            "relays": count,
            "requests_per_run": cfg.requests,
            "runs_rps": [round(r, 1) for r in rates],
            "rps": round(statistics.median(rates), 1),
            "incomplete": incomplete,
            "bad_signatures": (await receiver_stats(receiver))["bad_signatures"],
            "spend": await spend(sim, relays),
        }
        if with_minimal:
            stack.stop(relays)
            await post_json(f"{sim}/_sim/reset", {})
            minimal = [
                await minimal_loop(sim, receiver, f"min{run}", cfg.requests, CONNECTIONS)
                for run in range(cfg.runs)
            ]
            out["minimal_runs_rps"] = [round(r, 1) for r in minimal]
            out["minimal_rps"] = round(statistics.median(minimal), 1)
            out["overhead_ratio"] = round(out["rps"] / out["minimal_rps"], 3)
        return out
    finally:
        stack.stop_phase()
