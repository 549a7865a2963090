"""What the bench reads from relay processes around a run: CPU seconds from ``/proc`` and the
event-loop lag histogram from ``/metrics``, each as a difference between two snapshots."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.procstat import sample
from bench.stack import Relay, metric_sum
from relay.devtools.processes import LOCALHOST

LOOP_LAG_METRIC = "relay_event_loop_lag_seconds"
QUIET_POLL_S = 0.2
# ``metric_sum`` matches a sample by its name and labels as written on /metrics.
DELIVERED_SAMPLE = 'relay_webhook_deliveries_total{outcome="delivered"}'

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending, +Inf last


def cpu_seconds(relays: Sequence[Relay]) -> float:
    """User+system CPU seconds the relay processes used so far, summed (``/proc/<pid>/stat``)."""
    return sum(sample(r.pid).cpu_s for r in relays)


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{LOCALHOST}:{port}/metrics") as resp,
    ):
        resp.raise_for_status()
        return await resp.text()


def histogram_buckets(text: str, name: str) -> Buckets:
    """The cumulative buckets of an unlabelled histogram in Prometheus text; empty if absent."""
    for family in text_string_to_metric_families(text):
        if family.name == name and family.type == "histogram":
            return sorted(
                (float(s.labels["le"]), s.value)
                for s in family.samples
                if s.name == f"{name}_bucket"
            )
    return []


async def lag_buckets(relays: Sequence[Relay]) -> Buckets:
    """The event-loop lag histograms of the relays, added together bucket by bucket."""
    total: dict[float, float] = {}
    for relay in relays:
        for bound, count in histogram_buckets(await scrape(relay.port), LOOP_LAG_METRIC):
            total[bound] = total.get(bound, 0.0) + count
    return sorted(total.items())


def quantile(before: Buckets, after: Buckets, share: float) -> float | None:
    """The ``share`` quantile of what was observed between two snapshots of a histogram.

    Interpolated linearly inside the bucket it falls in, as PromQL's ``histogram_quantile`` does;
    a quantile in the +Inf bucket is the highest finite bound. ``None`` when nothing was observed
    (or the relay exports no such histogram).
    """
    if not after:
        return None
    earlier = dict(before)
    delta = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
    observed = delta[-1][1]
    if observed <= 0:
        return None
    rank = share * observed
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in delta:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            inside = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * inside
        lower_bound, lower_count = bound, count
    return lower_bound


async def delivered(relays: Sequence[Relay]) -> float:
    """Webhooks the relays counted as delivered so far (each is in Redis before it is counted)."""
    return sum([await metric_sum(r.port, DELIVERED_SAMPLE) for r in relays])


@dataclass(frozen=True, slots=True)
class Quiet:
    """Whether the relays finished everything before the deadline, and how long it took."""

    reached: bool
    waited_s: float


async def wait_until_quiet(
    relays: Sequence[Relay], delivered_at_least: float, timeout_s: float
) -> Quiet:
    """Wait until no request is in flight and ``delivered_at_least`` webhooks are delivered."""
    started = time.monotonic()
    while True:
        in_flight = sum([await metric_sum(r.port, "relay_tasks_in_flight") for r in relays])
        waited = time.monotonic() - started
        if in_flight == 0 and await delivered(relays) >= delivered_at_least:
            return Quiet(True, waited)
        if waited >= timeout_s:
            return Quiet(False, waited)
        await asyncio.sleep(QUIET_POLL_S)
