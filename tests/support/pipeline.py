"""A whole pipeline on real processes: broker and Redis (session), simulator and relays (per test).

The fixtures that build it (``simulator``, ``pipeline``, ``tansu_pipeline``) are in
``tests/conftest.py``.

The simulator and the relay run as subprocesses started from their console commands, configured
only through flags and ``RELAY_*`` variables, exactly as an operator would run them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.support.services import ManagedProcess, TopicFactory, free_port, wait_for_port

SIM_API_KEY = "mv_test_e2e"
HEALTH_TIMEOUT_S = 30.0


@dataclass
class Result:
    """A result record as a consumer of the results topic sees it."""

    key: str
    value: dict[str, Any]
    headers: dict[str, bytes]
    timestamp_ms: int = 0


@dataclass
class Pipeline:
    """Names and addresses of one test's pipeline, and helpers to drive it from outside."""

    bootstrap: str
    redis_url: str
    requests_topic: str
    results_topic: str
    dlq_topic: str
    group_id: str
    redis_prefix: str
    sim_url: str
    workdir: Path
    enable_idempotence: bool = True
    relays: list[ManagedProcess] = field(default_factory=list)

    def relay_env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(
            RELAY_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            RELAY_KAFKA_GROUP_ID=self.group_id,
            RELAY_KAFKA_ENABLE_IDEMPOTENCE=str(self.enable_idempotence).lower(),
            RELAY_KAFKA_SESSION_TIMEOUT_MS="6000",
            RELAY_KAFKA_MAX_POLL_INTERVAL_MS="15000",
            RELAY_REQUEST_TOPIC=self.requests_topic,
            RELAY_RESULT_TOPIC=self.results_topic,
            RELAY_DEAD_LETTER_TOPIC=self.dlq_topic,
            RELAY_REDIS_URL=self.redis_url,
            RELAY_REDIS_KEY_PREFIX=self.redis_prefix,
            RELAY_MINDVIDEO_BASE_URL=self.sim_url,
            RELAY_MINDVIDEO_API_KEY=SIM_API_KEY,
            RELAY_MINDVIDEO_POLL_INTERVAL_S="0.2",
            RELAY_MINDVIDEO_BACKOFF_BASE_S="0.05",
            RELAY_MINDVIDEO_BACKOFF_MAX_S="0.5",
            RELAY_COMMIT_INTERVAL_S="0.2",
            RELAY_HTTP_HOST="127.0.0.1",
            # Tests that check signatures set RELAY_WEBHOOK_SECRETS; the others deliver unsigned,
            # which the relay allows only when asked by name.
            RELAY_WEBHOOK_ALLOW_UNSIGNED="true",
            RELAY_LOG_FORMAT="json",
            RELAY_LOG_LEVEL=os.environ.get("RELAY_TEST_LOG_LEVEL", "INFO"),
        )
        env.update(overrides)
        return env

    async def start_relay(self, **env: str) -> tuple[ManagedProcess, int]:
        """Start ``relay run`` and wait until its ``/healthz`` answers and it has joined its
        consumer group; returns it and its port."""
        proc, port = await self.start_relay_unjoined(**env)
        await self.wait_joined(proc, port)
        return proc, port

    async def start_relay_unjoined(self, **env: str) -> tuple[ManagedProcess, int]:
        """Start ``relay run`` and wait only until its ``/healthz`` answers."""
        port = free_port()
        name = f"relay-{len(self.relays)}"
        proc = ManagedProcess(
            name,
            [sys.executable, "-m", "relay", "run"],
            self.workdir,
            self.relay_env(RELAY_HTTP_PORT=str(port), **env),
        )
        proc.start()
        self.relays.append(proc)
        await wait_for_port("127.0.0.1", port, HEALTH_TIMEOUT_S, proc)
        return proc, port

    async def restart_relay(self, proc: ManagedProcess, port: int) -> None:
        """Start a stopped or killed relay again, same settings and port, and wait until it has
        joined its consumer group."""
        proc.start()
        await wait_for_port("127.0.0.1", port, HEALTH_TIMEOUT_S, proc)
        await self.wait_joined(proc, port)

    async def wait_joined(self, proc: ManagedProcess, port: int) -> None:
        """Until ``/readyz`` no longer says "joining": the relay serves HTTP before its request
        consumer has joined the group (so a slow join is observable), and tests that produce
        right after a start mean a relay that consumes. Gives up quietly after the health
        timeout or when the relay exits: a test may start a relay that never becomes ready on
        purpose."""
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline and proc.is_running():
            try:
                _, body = await self.relay_get(port, "/readyz")
                kafka = str(json.loads(body)["checks"].get("kafka", ""))
            except (aiohttp.ClientError, ValueError, KeyError):
                kafka = "joining"
            if not kafka.startswith("joining"):
                return
            await asyncio.sleep(0.1)

    async def relay_get(self, port: int, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{port}{path}"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return resp.status, await resp.text()

    async def metric(self, port: int, name: str, **labels: str) -> float:
        """Sum of a metric's samples on a relay's ``/metrics`` (filtered by label values)."""
        return await relay_metric(port, name, **labels)

    async def sim_post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._sim("POST", path, body)

    async def produce(
        self, records: Sequence[tuple[bytes | None, bytes]], *, partition: int | None = None
    ) -> float:
        """Produce the records (all to ``partition`` when given, else by key); returns the time
        the first was sent (``time.monotonic``)."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=self.enable_idempotence
        )
        await producer.start()
        started = time.monotonic()
        try:
            sends = [
                await producer.send(self.requests_topic, value=v, key=k, partition=partition)
                for k, v in records
            ]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()
        return started

    async def committed(self, partition: int) -> int | None:
        """The relay group's committed offset of a requests partition (read without joining)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            offset: int | None = await consumer.committed(
                TopicPartition(self.requests_topic, partition)
            )
            return offset
        finally:
            await consumer.stop()

    async def results(
        self,
        expected_keys: set[str],
        timeout_s: float,
        *,
        topic: str | None = None,
        min_count: int = 0,
    ) -> list[Result]:
        """Read a topic (the results topic by default) from the start until every expected key
        has a record and at least ``min_count`` records came, or the timeout passes."""
        consumer = AIOKafkaConsumer(
            topic or self.results_topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        out: list[Result] = []
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline and (
                not expected_keys <= {r.key for r in out} or len(out) < min_count
            ):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(
                        Result(
                            key=(r.key or b"").decode(),
                            value=json.loads(r.value) if topic is None else {"raw": r.value},
                            headers={k: v for k, v in r.headers},
                            timestamp_ms=r.timestamp,
                        )
                        for r in records
                    )
        finally:
            await consumer.stop()
        return out

    async def sim_get(self, path: str) -> Any:
        return await self._sim("GET", path)

    async def sim_put(self, path: str, body: dict[str, Any]) -> Any:
        return await self._sim("PUT", path, body)

    async def _sim(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A call to the simulator (its ``/_sim/`` endpoints need no key); the JSON answer."""
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.sim_url + path, json=body) as resp,
        ):
            resp.raise_for_status()
            return await resp.json()


async def charges_per_key(pipeline: Pipeline) -> Counter[str]:
    """How many times the simulator's ledger charged each idempotency key."""
    ledger = await pipeline.sim_get("/_sim/ledger")
    return Counter(charge["idempotency_key"] for charge in ledger["charges"])


async def relay_metric(port: int, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` on a relay's ``/metrics`` whose labels include ``labels``."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


@asynccontextmanager
async def open_pipeline(
    bootstrap: str,
    redis_url: str,
    topics: TopicFactory,
    unique: str,
    simulator: tuple[ManagedProcess, str],
    tmp_path: Path,
    *,
    enable_idempotence: bool,
) -> AsyncIterator[Pipeline]:
    """Topics and a waiting simulator; every relay started through it is stopped after."""
    requests, results, dlq = await topics(bootstrap, "requests", "results", "dlq", partitions=4)
    sim_proc, sim_url = simulator
    port = int(sim_url.rsplit(":", 1)[1])
    await wait_for_port("127.0.0.1", port, HEALTH_TIMEOUT_S, sim_proc)
    pipe = Pipeline(
        bootstrap=bootstrap,
        redis_url=redis_url,
        requests_topic=requests,
        results_topic=results,
        dlq_topic=dlq,
        group_id=f"relay-{unique}",
        redis_prefix=f"{unique}",
        sim_url=sim_url,
        workdir=tmp_path,
        enable_idempotence=enable_idempotence,
    )
    try:
        yield pipe
    finally:
        for proc in pipe.relays:
            proc.stop()
