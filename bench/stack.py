"""The processes a benchmark drives, all on loopback and all stopped at the end.

The broker (noida-db, or Tansu with --broker tansu) and Redis live for the whole run; each phase
starts its own simulator, webhook receiver and relay processes (``relay run``, configured only
through ``RELAY_*`` variables, as an operator would) and stops them when it ends. Every child is a
``ManagedProcess`` in its own session, stopped by PID and process group, so nothing is left running
even on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from relay.devtools.embedded import redis_server_binary, start_noida, start_redis, start_tansu
from relay.devtools.processes import LOCALHOST, ManagedProcess, free_port, wait_for_port
from relay.topics import create_topics

API_KEY = "mv_test_bench"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bench-secret-0123456789abcdef").decode()
MODEL = "apimart-doubao-seedance-4-0"
PARTITIONS = 8
READY_TIMEOUT_S = 30.0
CHILD_POLL_S = 0.1
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Relay:
    proc: ManagedProcess
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Topics:
    requests: str
    results: str
    dead_letters: str
    webhook_dead_letters: str
    group: str


class Stack:
    """Starts and tracks every child process; ``close()`` stops them all, newest first."""

    def __init__(self, workdir: Path, broker: str = "noida") -> None:
        self.workdir = workdir
        self.broker = broker
        self.bootstrap = ""
        self.redis_url = ""
        self.redis_binary = str(redis_server_binary())
        self._children: list[ManagedProcess] = []
        self.relay_env: dict[str, str] = {}

    async def start_base(self) -> None:
        start_broker = start_tansu if self.broker == "tansu" else start_noida
        kafka, self.bootstrap = await start_broker(self.workdir / "kafka")
        if self.broker == "tansu":  # Tansu refuses aiokafka's idempotent producer
            self.relay_env.setdefault("RELAY_KAFKA_ENABLE_IDEMPOTENCE", "false")
        self._children.append(kafka)
        redis, self.redis_url = await start_redis(self.workdir / "redis")
        self._children.append(redis)

    async def topics(self, name: str) -> Topics:
        suffix = f"{name}-{uuid.uuid4().hex[:8]}"
        topics = Topics(
            requests=f"bench.requests.{suffix}",
            results=f"bench.results.{suffix}",
            dead_letters=f"bench.requests.dlq.{suffix}",
            webhook_dead_letters=f"bench.webhooks.dlq.{suffix}",
            group=f"bench-{suffix}",
        )
        await create_topics(self.bootstrap, [topics.requests, topics.results], PARTITIONS)
        await create_topics(self.bootstrap, [topics.dead_letters, topics.webhook_dead_letters], 1)
        return topics

    async def start_sim(self, name: str, flags: Sequence[str]) -> str:
        """A ``relay sim`` process with ``flags``; returns its base URL once it listens."""
        port = free_port()
        argv = [sys.executable, "-m", "relay", "sim", "--port", str(port), "--api-key", API_KEY]
        proc = self._spawn(f"sim-{name}", [*argv, "--seed", "6", *flags], None)
        await wait_for_port(LOCALHOST, port, READY_TIMEOUT_S, proc)
        return f"http://{LOCALHOST}:{port}"

    async def start_receiver(self, name: str) -> str:
        """The webhook receiver process; returns its base URL (deliveries go to ``/hook``)."""
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        argv = [sys.executable, "-m", "bench.receiver", "--port", str(port)]
        proc = self._spawn(f"receiver-{name}", [*argv, "--secret", WEBHOOK_SECRET], env)
        await wait_for_port(LOCALHOST, port, READY_TIMEOUT_S, proc)
        return f"http://{LOCALHOST}:{port}"

    async def start_relays(
        self,
        name: str,
        count: int,
        topics: Topics,
        sim_url: str,
        receiver_url: str,
        **overrides: str,
    ) -> list[Relay]:
        relays: list[Relay] = []
        for index in range(count):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
            env.update(
                RELAY_KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
                RELAY_KAFKA_GROUP_ID=topics.group,
                RELAY_KAFKA_SESSION_TIMEOUT_MS="6000",
                RELAY_REQUEST_TOPIC=topics.requests,
                RELAY_RESULT_TOPIC=topics.results,
                RELAY_DEAD_LETTER_TOPIC=topics.dead_letters,
                RELAY_WEBHOOK_DEAD_LETTER_TOPIC=topics.webhook_dead_letters,
                RELAY_REDIS_URL=self.redis_url,
                RELAY_REDIS_KEY_PREFIX=topics.group,
                RELAY_MINDVIDEO_BASE_URL=sim_url,
                RELAY_MINDVIDEO_API_KEY=API_KEY,
                RELAY_WEBHOOK_SECRETS=WEBHOOK_SECRET,
                RELAY_WEBHOOK_DEFAULT_URL=f"{receiver_url}/hook",
                RELAY_WEBHOOK_ALLOWED_HOSTS=LOCALHOST,
                RELAY_HTTP_HOST=LOCALHOST,
                RELAY_HTTP_PORT=str(port),
                RELAY_SHUTDOWN_GRACE_S="2",
                RELAY_LOG_FORMAT="json",
            )
            env.update(self.relay_env)
            env.update(overrides)
            argv = [sys.executable, "-m", "relay", "run"]
            proc = self._spawn(f"relay-{name}-{index}", argv, env)
            relays.append(Relay(proc, port))
        for relay in relays:
            await wait_for_port(LOCALHOST, relay.port, READY_TIMEOUT_S, relay.proc)
            await _joined(relay)
        return relays

    async def run_to_end(self, name: str, argv: list[str], timeout_s: float) -> dict[str, Any]:
        """Run ``python argv…`` (with the repository importable) until it exits; returns the
        JSON object it printed last. A failure or a timeout raises with its log's tail."""
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        proc = self._spawn(name, [sys.executable, *argv], env)
        for _ in range(int(timeout_s / CHILD_POLL_S)):
            if proc.returncode is not None:
                break
            await asyncio.sleep(CHILD_POLL_S)
        self.stop([proc])
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.log_tail()}")
        lines = proc.log_path.read_text().strip().splitlines()
        out = json.loads(lines[-1]) if lines else None
        if not isinstance(out, dict):
            raise RuntimeError(f"{name} printed no JSON object:\n{proc.log_tail()}")
        return out

    def stop(self, procs: Sequence[ManagedProcess | Relay]) -> None:
        for item in reversed(procs):
            proc = item.proc if isinstance(item, Relay) else item
            proc.stop()
            if proc in self._children:
                self._children.remove(proc)

    def stop_phase(self) -> None:
        """Stop everything but the broker and Redis (the first two children)."""
        self.stop(self._children[2:])

    def close(self) -> None:
        self.stop(list(self._children))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.workdir, env)
        self._children.append(proc)
        proc.start()
        return proc


async def get_json(url: str, timeout_s: float = 30.0) -> object:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.get(url) as resp,
    ):
        resp.raise_for_status()
        return await resp.json()


async def post_json(url: str, body: object) -> object:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        resp.raise_for_status()
        return await resp.json()


async def metric_sum(port: int, name: str) -> float:
    """Sum of every sample of one metric on a relay's ``/metrics``."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{LOCALHOST}:{port}/metrics") as resp,
    ):
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def monotonic_deadline(timeout_s: float) -> float:
    return time.monotonic() + timeout_s


async def _joined(relay: Relay) -> None:
    """Until ``/readyz`` no longer says "joining": a relay serves HTTP before its consumer has
    joined the group, and a measurement must not start with the join."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and relay.proc.is_running():
            try:
                async with session.get(f"http://{LOCALHOST}:{relay.port}/readyz") as resp:
                    checks = (await resp.json())["checks"]
            except (aiohttp.ClientError, ValueError, KeyError):
                checks = {"kafka": "joining"}
            if not str(checks.get("kafka", "")).startswith("joining"):
                return
            await asyncio.sleep(0.1)
