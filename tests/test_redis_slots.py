"""Every Lua script keeps its keys in one Redis Cluster hash slot (DESIGN §8).

Three proofs, weakest first: each script in the package names every key it touches through
``KEYS`` (a key built inside Lua would escape routing); each script the stores register is run
and the keys it is given share one slot by redis-py's own key-slot function; and the same calls
succeed on a real Redis Cluster, which refuses a script whose keys span slots (CROSSSLOT). The
whole pipeline on that cluster is in ``tests/test_redis_topologies.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.crc import key_slot

import relay
from relay.models import WebhookDelivery, rejection
from relay.pipeline.idempotency import IdempotencyStore
from relay.redis import RedisClient, ScriptingRedisCluster
from relay.spend.ledger import BudgetLedger, Reservation, reservation_id
from relay.spend.prices import Quote, to_micro
from relay.spend.rules import BudgetRule, applicable
from relay.webhooks.deliveries import DeliveryStore
from relay.webhooks.history import AttemptRecord
from relay.webhooks.ratelimit import RateLimiter, RateLimits
from tests.support.redis_topologies import RedisCluster

_CALL = re.compile(r"redis\.call\(\s*'(\w+)'\s*(?:,\s*([^,)]+))?")
KEYLESS_COMMANDS = frozenset({"TIME"})


def _scripts_in_package() -> dict[str, str]:
    """Every Lua script constant in the ``relay`` package, by ``module.NAME``."""
    found: dict[str, str] = {}
    for info in pkgutil.walk_packages(relay.__path__, "relay."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            # Constants holding a script: `*_LUA`, or an upper-case name whose text calls Redis.
            if not isinstance(value, str) or not name.isupper():
                continue
            if name.endswith("_LUA") or "redis.call(" in value:
                found[f"{info.name}.{name}"] = value
    return found


# The budget ledger's scripts also touch keys they read from their own records (the windows a
# reservation counted in, other holders' expired reservations): every such key is built from the
# tag prefix ``T`` (ARGV[1], ``<prefix>:budget:{<prefix>}``) or another prefix argument of the same
# tag, so it is in the slot of its KEYS.
# That is proven on a real cluster below, where a key outside the slot would fail the script.
TAG_PREFIXED_SCRIPTS = ("relay.spend.scripts.",)


def test_every_script_names_its_keys_in_KEYS() -> None:
    scripts = _scripts_in_package()
    assert len(scripts) >= 7, f"the stores' scripts were not found: {sorted(scripts)}"
    for where, source in scripts.items():
        calls = _CALL.findall(source)
        assert calls, f"{where} makes no redis.call"
        tagged = where.startswith(TAG_PREFIXED_SCRIPTS)
        for command, key in calls:
            if command.upper() in KEYLESS_COMMANDS:
                continue
            if tagged and not key.strip().startswith("KEYS["):
                continue  # built from the tagged prefix: proven on a real cluster below
            assert re.fullmatch(r"KEYS\[(\d+|i)\]", key.strip()), (
                f"{where}: redis.call('{command}', {key.strip()}) does not take its key from KEYS"
            )


class ScriptRecorder:
    """Which scripts were registered, and the keys each call of a script was given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.registered: set[str] = set()
        self.calls: list[tuple[str, list[str]]] = []
        original_init: Callable[..., None] = AsyncScript.__init__
        original_call: Callable[..., Any] = AsyncScript.__call__
        recorder = self

        def init(script: AsyncScript, client: Any, text: Any) -> None:
            original_init(script, client, text)
            recorder.registered.add(script.sha)

        async def call(
            script: AsyncScript,
            keys: Sequence[Any] | None = None,
            args: Sequence[Any] | None = None,
            client: Any = None,
        ) -> Any:
            recorder.calls.append((script.sha, [str(k) for k in keys or ()]))
            return await original_call(script, keys, args, client)

        monkeypatch.setattr(AsyncScript, "__init__", init)
        monkeypatch.setattr(AsyncScript, "__call__", call)


async def _exercise_every_store(redis: RedisClient, prefix: str) -> None:
    """Each store method that runs a script, as the relay calls them."""
    idem = IdempotencyStore(redis, prefix=prefix, retention_s=600)
    for i in range(20):  # keys in many slots
        key = f"order-{i}"
        assert (await idem.claim(key, "fp", "model", "now")).outcome == "new"
        await idem.mark_submitted(
            key, task_id=f"task_{i}", request_id=None, cost_estimate=0.01, submitted_at="now"
        )
        assert await idem.first_time(key, "rejected:x")
        assert await idem.take_once(key, "conflict", "t", 60) == "won"
        result = rejection(key, "invalid_input", "x")
        assert (await idem.take_publish(key, result.to_json_bytes(), "t", 60)).outcome == "won"
        await idem.mark_published(key, result)
        assert (await idem.claim(key, "fp", "model", "now")).outcome == "existing"
    webhooks = DeliveryStore(redis, prefix=prefix, done_retention_s=600)
    now = time.time()
    deliveries = [
        WebhookDelivery(
            endpoint=f"https://hooks.example/{i}",
            event_id=f"evt_{i}",
            idempotency_key=f"order-{i}" if i < 5 else f"no-record-{i}",
            type="task.succeeded",
            body=b"{}",
            published_ms=0,
        )
        for i in range(7)
    ]
    assert await webhooks.schedule(deliveries, now) == 7
    claimed = await webhooks.claim(await webhooks.due(now, 10), now, lease_s=30)
    assert len(claimed) == 7
    assert await webhooks.reschedule(claimed[0], now + 60)
    assert await webhooks.finish(claimed[1], "delivered")  # no attempt: a tombstone line
    # 200 at the first attempt: a marker in the key's idempotency record, or a tombstone line
    # when the key has none (no-record-*).
    ok = AttemptRecord(int(now * 1000), "success", 200, 12)
    assert all([await webhooks.finish(c, "delivered", ok) for c in claimed[2:]])
    assert await webhooks.schedule(deliveries[1:], now) == 0, "finished: not scheduled again"
    await _exercise_the_budget_ledger(redis, prefix)
    limiter = RateLimiter(redis, prefix=prefix, limits=RateLimits({}, default=1000.0))
    for i in range(5):  # origins in many slots
        assert (await limiter.reserve(f"https://hooks-{i}.example", max_wait_s=1.0)).granted


async def _exercise_the_budget_ledger(redis: RedisClient, prefix: str) -> None:
    """Every ledger script, with budgets per model and per tenant (window keys in the slot)."""
    rules = [
        BudgetRule.model_validate({"name": n, "scope": s, "window": "hour", "limit_usd": 0.06})
        for n, s in (("all", "global"), ("per-model", "model"), ("tenants", "metadata.tenant"))
    ]
    ledger = BudgetLedger(redis, prefix=prefix, reservation_ttl_s=0.5, retain_s=3600)
    price = to_micro(0.0252)

    def reservation(key: str, amount: int | None = price) -> Reservation:
        budgets = applicable(rules, "m", {"tenant": key[-1]}, time.time())
        return Reservation(reservation_id(key), Quote("m|2K", 1, amount), tuple(budgets))

    first, second = reservation("t-1"), reservation("t-2")
    assert (await ledger.reserve(first)).outcome == "ok"
    assert await ledger.refresh(first.id)
    assert await ledger.confirm(first.id, estimate_micro=price, learn=None, charge_if_missing=True)
    assert await ledger.settle(first.id, price)
    assert (await ledger.reserve(second)).outcome == "ok"
    assert await ledger.release(second.id)
    crashed = reservation("t-3", amount=None)  # an unknown price: a probe
    assert (await ledger.reserve(crashed)).outcome == "ok"
    await asyncio.sleep(0.6)
    assert await ledger.sweep() == 1, "its holder stopped refreshing it"
    assert await ledger.usage(rules)
    await ledger.spend_by_minute()
    await ledger.learned_prices()


def _assert_one_slot_per_call(recorder: ScriptRecorder) -> None:
    assert recorder.registered, "no script was registered"
    assert {sha for sha, _ in recorder.calls} == recorder.registered, "every script was run"
    for sha, keys in recorder.calls:
        assert keys, f"script {sha[:8]} was called without keys"
        slots = {key_slot(key.encode()) for key in keys}
        assert len(slots) == 1, f"script {sha[:8]} got keys in {len(slots)} slots: {keys}"


async def test_every_registered_script_call_stays_in_one_slot(
    redis_client: aioredis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = ScriptRecorder(monkeypatch)
    await _exercise_every_store(redis_client, unique)
    _assert_one_slot_per_call(recorder)


async def test_the_stores_run_on_a_real_cluster(
    redis_cluster: RedisCluster, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = ScriptRecorder(monkeypatch)
    client = ScriptingRedisCluster.from_url(redis_cluster.url)
    try:
        await _exercise_every_store(client, unique)
        _assert_one_slot_per_call(recorder)
        keys = [k async for k in client.scan_iter(match=f"{unique}:idem:*")]
        nodes = {getattr(client.get_node_from_key(k), "name", None) for k in keys}
        assert len(nodes) == len(redis_cluster.ports), "the keys are spread over every node"
        # A script cache lost on every node (a failover, SCRIPT FLUSH) is loaded again.
        await client.script_flush()
        await _exercise_every_store(client, f"{unique}-again")
    finally:
        await client.aclose()
