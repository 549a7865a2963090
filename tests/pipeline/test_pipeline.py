"""End to end on real processes: requests on Kafka become results on Kafka, charged once each."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from relay.models import event_id_for
from tests.support.pipeline import SIM_API_KEY, Pipeline, Result

MODEL = "apimart-doubao-seedance-4-0"
PRICE_PER_IMAGE = {"1K": Decimal("0.0126"), "2K": Decimal("0.0252"), "4K": Decimal("0.0504")}
RESULT_TIMEOUT_S = 60.0


def _request(i: int, key: str) -> dict[str, Any]:
    resolution = ("1K", "2K", "4K")[i % 3]
    return {
        "idempotency_key": key,
        "model": MODEL,
        "input": {
            "prompt": f"a panda number {i}",
            "size": "1:1",
            "resolution": resolution,
            "n": 1 + i % 3,
        },
        "metadata": {"order_id": str(8800 + i)},
    }


def _by_key(results: list[Result]) -> dict[str, Result]:
    out: dict[str, Result] = {}
    for result in results:
        out.setdefault(result.key, result)
    return out


async def test_requests_become_results_charged_once(pipeline: Pipeline, unique: str) -> None:
    keys = [f"order-{unique[:8]}-{i}" for i in range(25)]
    requests = {key: _request(i, key) for i, key in enumerate(keys)}
    bad_key = f"bad-{unique[:8]}"
    bad = {
        "idempotency_key": bad_key,
        "model": MODEL,
        "input": {"prompt": "x", "n": 16, "resolution": "8K", "colour": "red"},
    }
    _, port = await pipeline.start_relay()

    records = [(k.encode(), json.dumps(v).encode()) for k, v in requests.items()]
    records.append((bad_key.encode(), json.dumps(bad).encode()))
    started = time.monotonic()
    await pipeline.produce(records)
    results = await pipeline.results({*keys, bad_key}, RESULT_TIMEOUT_S)
    elapsed = time.monotonic() - started
    by_key = _by_key(results)
    assert set(by_key) == {*keys, bad_key}, f"missing results for {set(keys) - set(by_key)}"
    assert len(results) == 26, "exactly one result per request"
    print(f"\n26 requests -> 26 results in {elapsed:.2f}s ({26 / elapsed:.1f} requests/s)")

    async with aiohttp.ClientSession() as session:
        for key in keys:
            value = by_key[key].value
            request = requests[key]
            n = request["input"]["n"]
            price = float(PRICE_PER_IMAGE[request["input"]["resolution"]] * n)
            assert value["type"] == "task.succeeded"
            assert value["status"] == "succeeded"
            assert value["event_id"] == event_id_for(key, "task.succeeded")
            assert value["idempotency_key"] == key
            assert value["model"] == MODEL
            assert value["task_id"].startswith("task_")
            assert value["request_id"].startswith("req_")
            assert value["error"] is None
            assert value["cost_estimate"] == pytest.approx(price)
            assert value["cost_actual"] == pytest.approx(price)
            assert value["metadata"] == request["metadata"]
            assert value["submitted_at"] <= value["completed_at"]
            assert value["completed_at"].endswith("Z")
            images = value["output"]["images"]
            assert len(images) == n
            async with session.get(images[0]["url"]) as resp:
                assert resp.status == 200
                assert (await resp.read()).startswith(b"\x89PNG\r\n\x1a\n")
            assert by_key[key].headers["event-id"] == value["event_id"].encode()

    rejected = by_key[bad_key].value
    assert rejected["type"] == "request.rejected"
    assert rejected["status"] == "rejected"
    assert rejected["error"]["code"] == "invalid_input"
    for field in ("input.n", "input.resolution", "input.colour"):
        assert field in rejected["error"]["message"]
    assert rejected["cost_actual"] == 0.0

    ledger = await pipeline.sim_get("/_sim/ledger")
    charged = [c["idempotency_key"] for c in ledger["charges"]]
    assert sorted(charged) == sorted(keys), "one charge per valid request, none for the bad one"

    total = sum(by_key[k].value["cost_actual"] for k in keys)
    assert await pipeline.metric(port, "relay_tasks_submitted_total") == 25
    assert await pipeline.metric(port, "relay_cost_estimated_usd_total") == pytest.approx(total)
    assert await pipeline.metric(port, "relay_cost_actual_usd_total") == pytest.approx(total)
    assert await pipeline.metric(port, "relay_requests_rejected_total") == 1

    # Logs: one JSON object per line, keys and task ids in them, no secret and no prompt.
    lines = pipeline.relays[0].log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(entries) == len(lines), "every log line is a JSON object"
    published = [e for e in entries if e["msg"] == "result published"]
    assert {e["idempotency_key"] for e in published} == set(keys)
    assert all(e["task_id"].startswith("task_") for e in published)
    text = "\n".join(lines)
    assert SIM_API_KEY not in text
    assert "a panda number" not in text


async def test_replayed_records_cost_nothing_and_publish_nothing(
    pipeline: Pipeline, unique: str
) -> None:
    keys = [f"replay-{unique[:8]}-{i}" for i in range(5)]
    records = [(k.encode(), json.dumps(_request(i, k)).encode()) for i, k in enumerate(keys)]
    relay, _ = await pipeline.start_relay()
    await pipeline.produce(records)
    first = await pipeline.results(set(keys), RESULT_TIMEOUT_S)
    assert len(first) == 5

    await pipeline.produce(records)  # the same requests again, e.g. a producer retrying
    await pipeline.produce([(keys[0].encode(), json.dumps(_request(0, keys[0])).encode())])
    marker = f"marker-{unique[:8]}"
    await pipeline.produce([(marker.encode(), json.dumps(_request(9, marker)).encode())])
    after = await pipeline.results({*keys, marker}, RESULT_TIMEOUT_S)
    assert sorted(r.key for r in after) == sorted([*keys, marker]), "no second result per key"
    ledger = await pipeline.sim_get("/_sim/ledger")
    assert ledger["count"] == 6
    assert relay.stop() == 0, "SIGTERM stops the relay cleanly"


async def test_conflicting_payload_is_rejected_without_charge(
    pipeline: Pipeline, unique: str
) -> None:
    key = f"conflict-{unique[:8]}"
    await pipeline.start_relay()
    await pipeline.produce([(key.encode(), json.dumps(_request(0, key)).encode())])
    first = await pipeline.results({key}, RESULT_TIMEOUT_S)
    assert first[0].value["type"] == "task.succeeded"
    changed = _request(0, key)
    changed["input"]["prompt"] = "a different prompt"
    await pipeline.produce([(key.encode(), json.dumps(changed).encode())])
    results = await pipeline.results({key}, RESULT_TIMEOUT_S, min_count=2)
    assert [r.value["type"] for r in results] == ["task.succeeded", "request.rejected"]
    assert results[1].value["error"]["code"] == "idempotency_conflict"
    assert (await pipeline.sim_get("/_sim/ledger"))["count"] == 1
    # Another conflicting payload: dead-lettered, not published (no flood under the owner's key).
    changed["input"]["prompt"] = "a third prompt"
    await pipeline.produce([(key.encode(), json.dumps(changed).encode())])
    dead = await pipeline.results({key}, RESULT_TIMEOUT_S, topic=pipeline.dlq_topic)
    assert [r.headers["error.reason"] for r in dead] == [b"idempotency_conflict"]
    results = await pipeline.results({key}, 1.0, min_count=3)  # waits the whole second
    assert len(results) == 2, "no second idempotency_conflict result"


async def test_undecodable_records_are_dead_lettered(pipeline: Pipeline, unique: str) -> None:
    key = f"poison-{unique[:8]}"
    await pipeline.start_relay()
    await pipeline.produce([(key.encode(), b"\xff\xfenot json"), (None, b"[1, 2, 3]")])
    dead = await pipeline.results(set(), RESULT_TIMEOUT_S, topic=pipeline.dlq_topic, min_count=2)
    reasons = sorted(r.headers["error.reason"].decode() for r in dead)
    assert reasons == ["not_object", "not_utf8"]
    assert {r.headers["original.topic"].decode() for r in dead} == {pipeline.requests_topic}
    rejected = await pipeline.results({key}, RESULT_TIMEOUT_S)
    assert [r.value["error"]["code"] for r in rejected] == ["not_utf8"]
    assert (await pipeline.sim_get("/_sim/ledger"))["count"] == 0
