"""What users write by hand, measured against the same simulator and receiver as the relay.

``minimal_loop``: the relay's HTTP work and nothing else (no Kafka, Redis or metrics): submit,
follow the event stream to the terminal event, deliver one signed webhook. Its throughput is the
denominator of the overhead ratio, its CPU seconds per request that of the CPU ratio. It runs in a
process of its own (``python -m bench.baselines``, on the standard asyncio loop, as a hand-written
loop would), which reads its CPU time from ``/proc`` the way the bench reads the relay's.

``naive_poller``: submit, then ``GET /tasks/{id}`` every second until terminal, then deliver the
webhook: the peer baseline for added latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.load import PROMPT, parse_ts
from bench.procstat import sample
from bench.stack import API_KEY, MODEL, WEBHOOK_SECRET
from relay.models import TERMINAL_STATUSES, event_id_for
from relay.webhooks.signing import WebhookSigner

CONNECTIONS = 200
NAIVE_POLL_INTERVAL_S = 1.0
NAIVE_MAX_POLLS = 600
STEADY_TICK_S = 0.01
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _submit_body() -> bytes:
    body = {"model": MODEL, "input": {"prompt": PROMPT, "size": "1:1", "resolution": "2K", "n": 1}}
    return json.dumps(body).encode()


class _Hand:
    """The shared parts: one session, a signer, submit and deliver."""

    def __init__(self, sim_url: str, receiver_url: str) -> None:
        self.sim = f"{sim_url}/api/v1/tasks"
        self.hook = f"{receiver_url}/hook"
        self.signer = WebhookSigner([WEBHOOK_SECRET])
        self.body = _submit_body()
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS))

    async def close(self) -> None:
        await self.session.close()

    async def submit(self, key: str) -> str:
        headers = {**AUTH, "Idempotency-Key": key, "Content-Type": "application/json"}
        async with self.session.post(self.sim, data=self.body, headers=headers) as resp:
            resp.raise_for_status()
            task_id: str = (await resp.json())["task_id"]
            return task_id

    async def deliver(self, key: str, snapshot: dict[str, Any]) -> None:
        event_id = event_id_for(key, f"task.{snapshot['status']}")
        body = json.dumps({"event_id": event_id, "idempotency_key": key, **snapshot}).encode()
        headers = self.signer.headers(event_id, body)
        async with self.session.post(self.hook, data=body, headers=headers) as resp:
            resp.raise_for_status()


async def _follow_stream(hand: _Hand, task_id: str) -> dict[str, Any]:
    url = f"{hand.sim}/{task_id}/events"
    async with hand.session.get(url, headers={**AUTH, "Accept": "text/event-stream"}) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                data: dict[str, Any] = json.loads(line[5:])
                if data.get("status") in TERMINAL_STATUSES:
                    return data
    raise RuntimeError(f"stream of {task_id} ended without a terminal event")


@dataclass(frozen=True, slots=True)
class MinimalRun:
    rps: float
    cpu_s: float


async def minimal_loop(
    sim_url: str, receiver_url: str, prefix: str, count: int, concurrency: int
) -> MinimalRun:
    """Run ``count`` tasks, ``concurrency`` at a time: tasks per second and this process's CPU
    seconds (user+system, from ``/proc``) over the same window."""
    hand = _Hand(sim_url, receiver_url)
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        key = f"{prefix}-{index}"
        async with slots:
            task_id = await hand.submit(key)
            await hand.deliver(key, await _follow_stream(hand, task_id))

    try:
        cpu_before = sample(os.getpid()).cpu_s
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - started
        return MinimalRun(count / elapsed, sample(os.getpid()).cpu_s - cpu_before)
    finally:
        await hand.close()


@dataclass(frozen=True, slots=True)
class PollerOutcome:
    event_id: str
    terminal_at: float
    seen_at: float


async def naive_poller(
    sim_url: str, receiver_url: str, prefix: str, rate_per_s: float, duration_s: float
) -> list[PollerOutcome]:
    """Start ``rate_per_s`` tasks a second for ``duration_s``, each polled every second."""
    hand = _Hand(sim_url, receiver_url)
    outcomes: list[PollerOutcome] = []

    async def one(key: str) -> None:
        task_id = await hand.submit(key)
        for _ in range(NAIVE_MAX_POLLS):
            await asyncio.sleep(NAIVE_POLL_INTERVAL_S)
            async with hand.session.get(f"{hand.sim}/{task_id}", headers=AUTH) as resp:
                snapshot: dict[str, Any] = await resp.json()
            if snapshot.get("status") in TERMINAL_STATUSES:
                seen = time.time()
                await hand.deliver(key, snapshot)
                event_id = event_id_for(key, f"task.{snapshot['status']}")
                outcomes.append(PollerOutcome(event_id, parse_ts(snapshot["updated_at"]), seen))
                return

    try:
        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < duration_s:
            while len(tasks) < int(elapsed * rate_per_s) + 1:
                tasks.append(asyncio.create_task(one(f"{prefix}-{len(tasks)}")))
            await asyncio.sleep(STEADY_TICK_S)
        await asyncio.gather(*tasks)
    finally:
        await hand.close()
    return outcomes


def main() -> None:
    """``python -m bench.baselines --sim URL --receiver URL --prefix P --count N``: one minimal
    loop run; prints ``{"rps": …, "cpu_s": …}`` as the last line."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--sim", required=True)
    p.add_argument("--receiver", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=CONNECTIONS)
    a = p.parse_args()
    run = asyncio.run(minimal_loop(a.sim, a.receiver, a.prefix, a.count, a.concurrency))
    print(json.dumps({"rps": run.rps, "cpu_s": run.cpu_s}), flush=True)


if __name__ == "__main__":
    main()
