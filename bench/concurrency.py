"""Thousands of tasks in flight at once: what the relay holds while it waits, and that every one
of them still gets its result once the simulator cancels them all."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.load import ResultReader, produce_burst
from bench.procstat import sample
from bench.stack import API_KEY, Stack, get_json, metric_sum

# Tasks that would run for 15 minutes: they are all in flight until the bench cancels them.
LONG_SIM_FLAGS = ("--queued-s", "0", "--processing-s", "900", "--failure-rate", "0")
SETTLE_S = 5.0
CANCEL_CONCURRENCY = 100
CANCEL_SWEEP_S = 10.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class ConcurrencyConfig:
    tasks: int
    windows: int
    window_s: float
    reach_timeout_s: float
    finish_timeout_s: float


async def _sim_stats(sim: str) -> dict[str, Any]:
    stats = await get_json(f"{sim}/_sim/stats")
    assert isinstance(stats, dict)
    return stats


async def _cancel_running(sim: str) -> int:
    """Cancel every task the simulator still runs; returns how many were cancelled."""
    ledger = await get_json(f"{sim}/_sim/ledger", timeout_s=120)
    assert isinstance(ledger, dict)
    running = [c["task_id"] for c in ledger["charges"] if c["status"] in ("queued", "processing")]
    slots = asyncio.Semaphore(CANCEL_CONCURRENCY)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession() as session:

        async def cancel(task_id: str) -> None:
            async with (
                slots,
                session.post(f"{sim}/api/v1/tasks/{task_id}/cancel", headers=headers) as resp,
            ):
                await resp.read()

        await asyncio.gather(*(cancel(t) for t in running))
    return len(running)


async def in_flight(stack: Stack, cfg: ConcurrencyConfig) -> dict[str, Any]:
    topics = await stack.topics("conc")
    sim = await stack.start_sim("conc", LONG_SIM_FLAGS)
    receiver = await stack.start_receiver("conc")
    try:
        (relay,) = await stack.start_relays(
            "conc",
            1,
            topics,
            sim,
            receiver,
            RELAY_MAX_IN_FLIGHT=str(cfg.tasks + 1000),
            RELAY_MAX_IN_FLIGHT_PER_PARTITION=str(cfg.tasks),
        )
        await asyncio.sleep(SETTLE_S)
        baseline = sample(relay.pid)
        await asyncio.sleep(cfg.window_s)
        no_tasks = sample(relay.pid)
        no_task_cpu = (no_tasks.cpu_s - baseline.cpu_s) / cfg.window_s
        keys = [f"conc-{i}" for i in range(cfg.tasks)]
        started = time.monotonic()
        await produce_burst(stack.bootstrap, topics.requests, keys)
        deadline = started + cfg.reach_timeout_s
        running = 0
        while time.monotonic() < deadline:
            stats = await _sim_stats(sim)
            running = stats["tasks"]["queued"] + stats["tasks"]["processing"]
            if running >= cfg.tasks:
                break
            await asyncio.sleep(1.0)
        reach_s = time.monotonic() - started
        await asyncio.sleep(SETTLE_S)
        windows: list[dict[str, float]] = []
        for _ in range(cfg.windows):
            first = sample(relay.pid)
            await asyncio.sleep(cfg.window_s)
            last = sample(relay.pid)
            windows.append(
                {
                    "rss_mib": last.rss_bytes / MIB,
                    "cpu_share": (last.cpu_s - first.cpu_s) / cfg.window_s,
                    "open_fds": float(last.open_fds),
                }
            )
        stats = await _sim_stats(sim)
        relay_in_flight = await metric_sum(relay.port, "relay_tasks_in_flight")
        reader = ResultReader(stack.bootstrap, topics.results)
        await reader.start()
        try:
            cancel_started = time.monotonic()
            finish_deadline = cancel_started + cfg.finish_timeout_s
            cancelled = 0
            while time.monotonic() < finish_deadline:
                cancelled += await _cancel_running(sim)
                sweep_s = min(CANCEL_SWEEP_S, finish_deadline - time.monotonic())
                if await reader.wait_for(keys, max(0.0, sweep_s)):
                    break
            drain_s = time.monotonic() - cancel_started
            missing = [k for k in keys if k not in reader.results]
        finally:
            await reader.stop()
        return {
            "tasks": cfg.tasks,
            "running_on_sim_at_once": running,
            "reach_s": round(reach_s, 1),
            "relay_in_flight": int(relay_in_flight),
            "streams_open_on_sim": stats["streams_open"],
            "baseline_rss_mib": round(baseline.rss_bytes / MIB, 1),
            "rss_mib": round(statistics.median(w["rss_mib"] for w in windows), 1),
            "cpu_share_idle": round(statistics.median(w["cpu_share"] for w in windows), 3),
            "cpu_share_no_tasks": round(no_task_cpu, 3),
            "open_fds": int(statistics.median(w["open_fds"] for w in windows)),
            "cancelled": cancelled,
            "results": len(reader.results),
            "lost": len(missing),
            "drain_s": round(drain_s, 1),
        }
    finally:
        stack.stop_phase()
