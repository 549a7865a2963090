"""Added latency under a steady load: from the simulator's terminal event to the result record
read from Kafka, and to the webhook's arrival, with the relay's event-loop lag meanwhile; the same
for a naive one-second poller, and how many times faster the relay is at p99."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass
from typing import Any

from bench.baselines import naive_poller
from bench.load import (
    ResultReader,
    percentile,
    produce_steady,
    receiver_arrivals,
    wait_for_webhooks,
)
from bench.relaystats import lag_buckets, quantile
from bench.stack import Stack
from bench.throughput import warm_up

# Tasks take long enough that the relay is already following when they end.
LATENCY_SIM_FLAGS = ("--queued-s", "0", "--processing-s", "0.5-1.0", "--failure-rate", "0")
MS_PER_S = 1000.0


@dataclass(frozen=True)
class LatencyConfig:
    rate_per_s: float
    duration_s: float
    runs: int
    warmup: int
    timeout_s: float


def _p(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 0.50) * MS_PER_S, 1),
        "p99_ms": round(percentile(values, 0.99) * MS_PER_S, 1),
        "max_ms": round(max(values, default=0.0) * MS_PER_S, 1),
    }


def _median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}


def _speedup(naive: dict[str, float], relay: dict[str, float]) -> float | None:
    """Naive poller's p99 ÷ the relay's p99; ``None`` when the relay's is zero (no samples)."""
    return round(naive["p99_ms"] / relay["p99_ms"], 2) if relay["p99_ms"] > 0 else None


async def added_latency(stack: Stack, cfg: LatencyConfig) -> dict[str, Any]:
    topics = await stack.topics("lat")
    sim = await stack.start_sim("lat", LATENCY_SIM_FLAGS)
    receiver = await stack.start_receiver("lat")
    try:
        relays = await stack.start_relays("lat", 1, topics, sim, receiver)
        await warm_up(stack, topics, relays, receiver, cfg.warmup, cfg.timeout_s)
        reader = ResultReader(stack.bootstrap, topics.results)
        await reader.start()
        to_kafka: list[dict[str, float]] = []
        to_send: list[dict[str, float]] = []
        to_webhook: list[dict[str, float]] = []
        lag_p99_ms: list[float] = []
        samples = 0
        try:
            for run in range(cfg.runs):
                lag_before = await lag_buckets(relays)
                keys = await produce_steady(
                    stack.bootstrap, topics.requests, f"lat{run}", cfg.rate_per_s, cfg.duration_s
                )
                if not await reader.wait_for(keys, cfg.timeout_s):
                    raise RuntimeError(f"latency run {run}: results missing")
                results = [reader.results[k] for k in keys]
                lag = quantile(lag_before, await lag_buckets(relays), 0.99)
                if lag is not None:
                    lag_p99_ms.append(lag * MS_PER_S)
                await wait_for_webhooks(receiver, len(reader.results), cfg.timeout_s)
                arrivals = await receiver_arrivals(receiver)
                to_kafka.append(_p([r.seen_at - r.completed_at for r in results]))
                to_send.append(_p([r.produced_at - r.completed_at for r in results]))
                to_webhook.append(
                    _p(
                        [
                            arrivals[r.event_id] - r.completed_at
                            for r in results
                            if r.event_id in arrivals
                        ]
                    )
                )
                samples += len(results)
        finally:
            await reader.stop()
        stack.stop(relays)
        poller_result: list[dict[str, float]] = []
        poller_webhook: list[dict[str, float]] = []
        for run in range(cfg.runs):
            outcomes = await naive_poller(
                sim, receiver, f"naive{run}", cfg.rate_per_s, cfg.duration_s
            )
            await asyncio.sleep(0.2)
            arrivals = await receiver_arrivals(receiver)
            poller_result.append(_p([o.seen_at - o.terminal_at for o in outcomes]))
            poller_webhook.append(
                _p(
                    [
                        arrivals[o.event_id] - o.terminal_at
                        for o in outcomes
                        if o.event_id in arrivals
                    ]
                )
            )
        out: dict[str, Any] = {
            "rate_per_s": round(cfg.rate_per_s, 1),
            "duration_s": cfg.duration_s,
            "samples": samples,
            "relay_to_kafka": _median_of(to_kafka),
            "relay_to_send": _median_of(to_send),
            "relay_to_webhook": _median_of(to_webhook),
            "naive_to_result": _median_of(poller_result),
            "naive_to_webhook": _median_of(poller_webhook),
        }
        # How many times faster than the naive poller the relay is at p99 (issue 15: ≥ 5).
        out["kafka_speedup_p99"] = _speedup(out["naive_to_result"], out["relay_to_kafka"])
        out["webhook_speedup_p99"] = _speedup(out["naive_to_webhook"], out["relay_to_webhook"])
        if lag_p99_ms:
            out["runs_loop_lag_p99_ms"] = [round(v, 1) for v in lag_p99_ms]
            out["loop_lag_p99_ms"] = round(statistics.median(lag_p99_ms), 1)
        return out
    finally:
        stack.stop_phase()
