"""Operator problems and poison records never turn into lost or wrongly rejected work (issue #3)."""

from __future__ import annotations

import asyncio
import json
import time

from tests.support.pipeline import SIM_API_KEY, Pipeline

MODEL = "apimart-doubao-seedance-4-0"


def _record(key: str, **extra: object) -> tuple[bytes, bytes]:
    body = {"model": MODEL, "input": {"prompt": f"prompt of {key}"}, **extra}
    return key.encode(), json.dumps(body).encode()


async def _wait_ready(pipeline: Pipeline, port: int, ready: bool, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    body = ""
    while time.monotonic() < deadline:
        status, body = await pipeline.relay_get(port, "/readyz")
        if (status == 200) == ready:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz never became {'ready' if ready else 'not ready'}: {body}")


async def _wait_mindvideo_check(pipeline: Pipeline, port: int, ok: bool, timeout_s: float) -> str:
    """Refused credentials are reported in /readyz's body while it stays 200: a restart cannot
    fix a key, and an unready pod would block node drains (docs/runbook.md)."""
    deadline = time.monotonic() + timeout_s
    body = ""
    while time.monotonic() < deadline:
        status, body = await pipeline.relay_get(port, "/readyz")
        assert status == 200, body
        if (json.loads(body)["checks"]["mindvideo"] == "ok") == ok:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz never reported mindvideo {'ok' if ok else 'refused'}: {body}")


async def test_revoked_key_pauses_and_rejects_nothing(pipeline: Pipeline, unique: str) -> None:
    _, port = await pipeline.start_relay(RELAY_MINDVIDEO_PROBE_INTERVAL_S="0.5")
    await _wait_ready(pipeline, port, True, 30.0)
    warmup = f"warm-{unique[:8]}"
    await pipeline.produce([_record(warmup)])
    assert len(await pipeline.results({warmup}, 30.0)) == 1

    await pipeline.sim_post("/_sim/keys", {"revoke": [SIM_API_KEY]})
    keys = [f"creds-{unique[:8]}-{i:02d}" for i in range(20)]
    await pipeline.produce([_record(k) for k in keys])
    body = await _wait_mindvideo_check(pipeline, port, False, 30.0)
    assert "401" in json.loads(body)["checks"]["mindvideo"], body
    assert json.loads(body)["status"] == "degraded", body
    deadline = time.monotonic() + 15.0  # the gauge follows the checks every 5 s
    while await pipeline.metric(port, "relay_dependency_up", dependency="mindvideo") != 0:
        assert time.monotonic() < deadline, "relay_dependency_up{mindvideo} never fell to 0"
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)
    during = await pipeline.results(set(), 1.0, min_count=10**9)
    assert [r.key for r in during] == [warmup], "nothing rejected while the key is refused"

    await pipeline.sim_post("/_sim/keys", {"restore": [SIM_API_KEY]})
    await _wait_mindvideo_check(pipeline, port, True, 30.0)
    results = await pipeline.results(set(keys), 60.0)
    assert sorted(r.key for r in results if r.key != warmup) == sorted(keys)
    assert {r.value["status"] for r in results} == {"succeeded"}
    assert await pipeline.metric(port, "relay_requests_rejected_total") == 0


async def test_poison_records_get_their_documented_outcome(pipeline: Pipeline, unique: str) -> None:
    u = unique[:8]
    relay, _ = await pipeline.start_relay()
    good_first = f"good-{u}-1"
    await pipeline.produce([_record(good_first)])
    assert len(await pipeline.results({good_first}, 30.0)) == 1
    conflict_body = {"model": MODEL, "input": {"prompt": "something else entirely"}}
    poison: list[tuple[bytes | None, bytes]] = [
        (f"p-utf8-{u}".encode(), b"\xc3\x28 not utf-8"),
        (f"p-json-{u}".encode(), b"{'single': 'quotes'}"),
        (f"p-array-{u}".encode(), b'["a", "list"]'),
        _record(f"p-types-{u}", input={"prompt": "x", "n": "2", "watermark": "yes"}),
        _record(f"p-unknown-{u}", colour="red"),
        _record(f"p-huge-prompt-{u}", input={"prompt": "x" * 5000}),
        (
            f"p-huge-record-{u}".encode(),
            json.dumps({"model": MODEL, "input": {"prompt": "x", "pad": "y" * 300_000}}).encode(),
        ),
        (
            f"p-mismatch-{u}".encode(),
            json.dumps(
                {"idempotency_key": "another", "model": MODEL, "input": {"prompt": "x"}}
            ).encode(),
        ),
        (good_first.encode(), json.dumps(conflict_body).encode()),
        (None, b"not json and no key"),
    ]
    good_last = f"good-{u}-2"
    await pipeline.produce([*poison, _record(good_last)])
    expected = {
        f"p-utf8-{u}": "not_utf8",
        f"p-json-{u}": "not_json",
        f"p-array-{u}": "not_object",
        f"p-types-{u}": "invalid_input",
        f"p-unknown-{u}": "invalid_request",
        f"p-huge-prompt-{u}": "invalid_input",
        f"p-huge-record-{u}": "record_too_large",
        f"p-mismatch-{u}": "idempotency_key_mismatch",
    }
    results = await pipeline.results({*expected, good_last}, 60.0, min_count=11)
    codes = {r.key: r.value["error"]["code"] for r in results if r.value["error"]}
    for key, code in expected.items():
        assert codes.get(key) == code, f"{key}: {codes.get(key)} != {code}"
    conflicts = [
        r for r in results if r.key == good_first and r.value["type"] == "request.rejected"
    ]
    assert [c.value["error"]["code"] for c in conflicts] == ["idempotency_conflict"]
    assert any(r.key == good_last and r.value["status"] == "succeeded" for r in results)
    assert len(results) == 11, "one result per keyed record (the keyless one: dead letter only)"

    dead = await pipeline.results(set(), 30.0, topic=pipeline.dlq_topic, min_count=5)
    reasons = sorted(r.headers["error.reason"].decode() for r in dead)
    assert reasons == ["not_json", "not_json", "not_object", "not_utf8", "record_too_large"]
    assert relay.returncode is None, "the relay is still running"

    # The same bad records replayed: no second rejection for any key (a marker proves the
    # replay was read through).
    marker = f"good-{u}-3"
    await pipeline.produce([*poison, _record(marker)])
    again = await pipeline.results({marker}, 60.0)
    assert len(again) == len(results) + 1, "the replay published nothing but the marker's result"
    ledger = await pipeline.sim_get("/_sim/ledger")
    charged = sorted(c["idempotency_key"] for c in ledger["charges"])
    assert charged == sorted([good_first, good_last, marker]), "bad records are never charged"
