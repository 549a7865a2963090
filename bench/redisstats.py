"""What the relay leaves in Redis and asks of it: bytes retained and commands, per request.

Two snapshots around a run (``INFO memory`` ``used_memory`` and ``INFO commandstats``) give the
bytes retained and the commands executed per request; ``MEMORY USAGE`` over a sample of the
relay's keys, sorted into kinds by the shape of their names, says where the bytes go.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

# The bench's own commands, not the relay's: they are left out of the counts.
BENCH_COMMANDS = frozenset({"info", "scan", "memory", "dbsize", "ping", "hello", "client"})
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
TOP_COMMANDS = 8
SCAN_COUNT = 1000
KEYS_SAMPLED_PER_KIND = 500

# Kinds of keys, by the shape of their names (README "Redis keys", docs/webhooks.md). A key
# matching none is counted under its own shape, so a new kind of key still shows up.
KEY_KINDS = (
    ("idempotency record", re.compile(r":idem:")),
    ("webhook done marker", re.compile(r":done:")),
    ("webhook delivery", re.compile(r":d:")),
    ("webhook due set", re.compile(r":due$")),
)
_VARIABLE = re.compile(r"\{[^}]*\}|[0-9a-f]{16,}|\d+")


# Memory that comes and goes with connections and traffic, not with what is stored: clients'
# query and output buffers, replication and AOF buffers (INFO memory, Redis 7).
TRANSIENT_MEMORY_FIELDS = (
    "mem_clients_normal",
    "mem_clients_slaves",
    "mem_aof_buffer",
    "mem_replication_backlog",
)


@dataclass(frozen=True, slots=True)
class RedisSnapshot:
    used_memory: int
    transient_memory: int
    calls: dict[str, int]

    @property
    def stored_memory(self) -> int:
        """``used_memory`` without the connection and traffic buffers: what the keys hold."""
        return self.used_memory - self.transient_memory


async def snapshot(redis: Redis) -> RedisSnapshot:
    memory: dict[str, Any] = await redis.info("memory")
    stats: dict[str, Any] = await redis.info("commandstats")
    calls = {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name.startswith("cmdstat_")
    }
    transient = sum(int(memory.get(name, 0)) for name in TRANSIENT_MEMORY_FIELDS)
    return RedisSnapshot(int(memory["used_memory"]), transient, calls)


def command_calls(before: RedisSnapshot, after: RedisSnapshot) -> dict[str, int]:
    """Commands executed between two snapshots, by name, the bench's own left out.

    Redis counts a command a script runs as well as the script call itself, so this is what
    Redis executed (its CPU), not the number of round trips.
    """
    out: dict[str, int] = {}
    for name, calls in after.calls.items():
        delta = calls - before.calls.get(name, 0)
        if delta > 0 and name.split("|")[0] not in BENCH_COMMANDS:
            out[name] = delta
    return out


def per_request(calls: dict[str, int], requests: int) -> dict[str, Any]:
    """Commands per request: the total, the script calls among them, and the top commands."""
    total = sum(calls.values())
    scripts = sum(v for k, v in calls.items() if k in SCRIPT_COMMANDS)
    top = sorted(calls.items(), key=lambda item: (-item[1], item[0]))[:TOP_COMMANDS]
    return {
        "commands_per_request": round(total / requests, 2),
        "script_calls_per_request": round(scripts / requests, 2),
        "top_per_request": {name: round(count / requests, 2) for name, count in top},
    }


def key_kind(key: str, prefix: str) -> str:
    """The kind of one of the relay's keys, from its name."""
    for kind, pattern in KEY_KINDS:
        if pattern.search(key):
            return kind
    return "other: " + _VARIABLE.sub("*", key.removeprefix(prefix))


async def key_kinds(redis: Redis, prefix: str, requests: int) -> dict[str, dict[str, Any]]:
    """Every key under ``prefix`` counted by kind; ``MEMORY USAGE`` of up to
    ``KEYS_SAMPLED_PER_KIND`` of each kind, scaled to the count, per request."""
    counts: Counter[str] = Counter()
    sampled: dict[str, list[str]] = {}
    async for raw in redis.scan_iter(match=f"{prefix}*", count=SCAN_COUNT):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        kind = key_kind(key, prefix)
        counts[kind] += 1
        keys = sampled.setdefault(kind, [])
        if len(keys) < KEYS_SAMPLED_PER_KIND:
            keys.append(key)
    out: dict[str, dict[str, Any]] = {}
    for kind, keys in sampled.items():
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)  # 0: every element of a hash or set
            usages = [int(u) for u in await pipe.execute() if u is not None]
        mean = sum(usages) / len(usages) if usages else 0.0
        out[kind] = {
            "keys": counts[kind],
            "sampled": len(usages),
            "bytes_per_key": round(mean, 1),
            "keys_per_request": round(counts[kind] / requests, 3),
            "bytes_per_request": round(mean * counts[kind] / requests, 1),
        }
    return dict(sorted(out.items(), key=lambda item: -float(item[1]["bytes_per_request"])))
