"""Real Redis topologies for the tests, started from Debian's ``redis-server`` and ``redis-cli``:
a three-node Redis Cluster, a Sentinel-monitored master with one replica, and a TLS-only server.

Every process is a :class:`ManagedProcess` on free loopback ports, stopped by PID.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.support.services import (
    LOCALHOST,
    ManagedProcess,
    ServiceStartError,
    free_port,
    require_tool,
    wait_for_port,
)
from tests.support.tls import TlsFiles

READY_TIMEOUT_S = 30.0
SENTINEL_MASTER = "relaymaster"


def _server(name: str, port: int, workdir: Path, *extra: str) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [require_tool("redis-server", "redis-server"), "--bind", LOCALHOST, "--port", str(port)]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir), *extra]
    return ManagedProcess(name, argv, workdir)


async def _until(
    what: str, check: Callable[[], Awaitable[object]], timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Poll the coroutine function ``check`` until it returns something true."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await check()
        except (RedisError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return
        await asyncio.sleep(0.1)
    raise ServiceStartError(f"gave up after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


async def _command(port: int, *args: str) -> Any:
    """One command to the server (or sentinel) on ``port``, on a connection of its own."""
    client = aioredis.Redis(host=LOCALHOST, port=port, decode_responses=True)
    try:
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


@dataclass
class RedisCluster:
    nodes: list[ManagedProcess]
    ports: list[int]

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.ports[0]}/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def start_redis_cluster(workdir: Path, size: int = 3) -> RedisCluster:
    """``size`` primaries, no replicas, joined with ``redis-cli --cluster create``."""
    cli = require_tool("redis-cli", "redis-tools")
    ports = [free_port() for _ in range(size)]
    nodes = [
        _server(
            f"redis-cluster-{port}",
            port,
            workdir / str(port),
            *("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
            # The bus port defaults to port + 10000, which may be taken or out of range.
            *("--cluster-port", str(free_port())),
            *("--cluster-config-file", str(workdir / str(port) / "nodes.conf")),
        )
        for port in ports
    ]
    cluster = RedisCluster(nodes, ports)
    try:
        for node, port in zip(nodes, ports, strict=True):
            node.start()
            await wait_for_port(LOCALHOST, port, READY_TIMEOUT_S, node)
        create = await asyncio.create_subprocess_exec(
            cli,
            "--cluster",
            "create",
            *(f"{LOCALHOST}:{port}" for port in ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await create.communicate()
        if create.returncode != 0:
            raise ServiceStartError(f"redis-cli --cluster create failed:\n{output.decode()}")
        for port in ports:
            await _until(f"cluster_state:ok on {port}", functools.partial(_cluster_ok, port))
    except BaseException:
        cluster.stop()
        raise
    return cluster


async def _cluster_ok(port: int) -> bool:
    return "cluster_state:ok" in str(await _command(port, "CLUSTER", "INFO"))


@dataclass
class SentinelGroup:
    """A master, its replica and one sentinel watching them (quorum 1)."""

    master: ManagedProcess
    replica: ManagedProcess
    sentinel: ManagedProcess
    ports: dict[str, int]

    @property
    def sentinels(self) -> str:
        return f"{LOCALHOST}:{self.ports['sentinel']}"

    async def master_port(self) -> int:
        sentinel = self.ports["sentinel"]
        _, port = await _command(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER)
        return int(port)

    async def failover(self) -> int:
        """``SENTINEL FAILOVER``; returns the new master's port once the sentinel names it."""
        before = await self.master_port()
        await _command(self.ports["sentinel"], "SENTINEL", "FAILOVER", SENTINEL_MASTER)

        async def moved() -> bool:
            return await self.master_port() != before

        await _until("the sentinel to name a new master", moved)
        return await self.master_port()

    async def kill_master(self) -> int:
        """SIGKILL the current master (a crash); returns the port of the one promoted instead."""
        before = await self.master_port()
        (self.master if before == self.ports["master"] else self.replica).kill()

        async def moved() -> bool:
            return await self.master_port() != before

        await _until("the sentinel to promote the replica", moved)
        return await self.master_port()

    def stop(self) -> None:
        for proc in (self.sentinel, self.replica, self.master):
            proc.stop()


async def start_sentinel_group(workdir: Path) -> SentinelGroup:
    ports = {name: free_port() for name in ("master", "replica", "sentinel")}
    master = _server("redis-master", ports["master"], workdir / "master")
    replica = _server(
        "redis-replica",
        ports["replica"],
        workdir / "replica",
        *("--replicaof", LOCALHOST, str(ports["master"])),
    )
    conf = workdir / "sentinel" / "sentinel.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"port {ports['sentinel']}\nbind {LOCALHOST}\ndir {conf.parent}\n"
        f"sentinel monitor {SENTINEL_MASTER} {LOCALHOST} {ports['master']} 1\n"
        f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n"
        f"sentinel failover-timeout {SENTINEL_MASTER} 10000\n"
    )
    sentinel = ManagedProcess(
        "redis-sentinel",
        [require_tool("redis-server", "redis-server"), str(conf), "--sentinel"],
        conf.parent,
    )
    group = SentinelGroup(master, replica, sentinel, ports)
    try:
        for name, proc in (("master", master), ("replica", replica), ("sentinel", sentinel)):
            proc.start()
            await wait_for_port(LOCALHOST, ports[name], READY_TIMEOUT_S, proc)

        async def replicating() -> bool:
            info = await _command(ports["replica"], "INFO", "replication")  # parsed to a dict
            return bool(info.get("master_link_status") == "up")

        async def replica_known() -> bool:
            replicas = await _command(ports["sentinel"], "SENTINEL", "REPLICAS", SENTINEL_MASTER)
            return any("disconnected" not in str(r) and "s_down" not in str(r) for r in replicas)

        await _until("the replica to sync", replicating)
        await _until("the sentinel to find the replica", replica_known)
    except BaseException:
        group.stop()
        raise
    return group


async def start_redis_tls(workdir: Path, tls: TlsFiles) -> tuple[ManagedProcess, str]:
    """A server that speaks only TLS (``--port 0``); returns it and its ``rediss://`` URL."""
    port = free_port()
    proc = _server(
        "redis-tls",
        0,
        workdir,
        *("--tls-port", str(port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key)),
        *("--tls-ca-cert-file", str(tls.ca)),
    )
    proc.start()
    try:
        await wait_for_port(LOCALHOST, port, READY_TIMEOUT_S, proc)
    except BaseException:
        proc.stop()
        raise
    return proc, f"rediss://{LOCALHOST}:{port}/0"
