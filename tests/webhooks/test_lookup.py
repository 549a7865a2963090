"""Delivery lookup and endpoint health, as an operator sees them on a running relay (issue 12):
``GET /webhooks/deliveries?key=K`` behind the token, ``relay webhooks status --key K``, the
status page's endpoint rows and the per-origin metric labels."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from tests.support.pipeline import Pipeline
from tests.support.services import TopicFactory
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import metric, read_topic, request, webhook_dlq, webhook_env

TIMEOUT_S = 30.0
TOKEN = "operator-token-123"


async def _get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def _status_cli(pipeline: Pipeline, env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "relay", "webhooks", "status", *args),
        env=pipeline.relay_env(**env),
        cwd=pipeline.workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode in (0, 1), err.decode()
    return proc.returncode or 0, out.decode()


async def test_every_attempt_of_a_key_can_be_looked_up(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    ok, failing = Receiver(), Receiver(behaviour=lambda _: 500)
    await ok.start()
    await failing.start()
    dlq = await webhook_dlq(pipeline, topics)
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_DEFAULT_URL=ok.url,
        RELAY_WEBHOOK_RETRY_SCHEDULE="0,0.3,60",
        RELAY_HTTP_TOKEN=TOKEN,
    )
    ok_origin, failing_origin = (f"http://127.0.0.1:{r.port}" for r in (ok, failing))
    fine, flaky, refused = (f"{name}-{unique[:8]}" for name in ("fine", "flaky", "refused"))
    try:
        _, port = await pipeline.start_relay(**env)
        await pipeline.produce(
            [
                request(fine),
                request(flaky, failing.url + "?token=receiver-secret"),
                request(refused, "http://10.0.0.1/hook"),
            ]
        )
        assert await ok.wait_for(lambda: len(ok.answered()) == 1, TIMEOUT_S)
        assert await failing.wait_for(lambda: len(failing.deliveries) == 2, TIMEOUT_S)
        assert len(await read_topic(pipeline.bootstrap, dlq, 1, TIMEOUT_S)) == 1

        status, _ = await _get(port, f"/webhooks/deliveries?key={fine}", token=None)
        assert status == 401, "behind RELAY_HTTP_TOKEN"
        status, doc = await _get(port, f"/webhooks/deliveries?key={fine}")
        assert status == 200
        (delivered,) = doc["deliveries"]
        assert delivered["state"] == "delivered"
        assert delivered["origin"] == ok_origin
        assert [(a["status"], a["outcome"]) for a in delivered["attempts"]] == [(200, "success")]
        assert delivered["attempts"][0]["latency_ms"] >= 0
        assert delivered["attempts"][0]["at"].startswith("20")
        assert doc["dead_letters"]["letters"] == []

        for _ in range(50):  # the second attempt's outcome is written just after it arrives
            _, doc = await _get(port, f"/webhooks/deliveries?key={flaky}&dead_letters=false")
            if doc["deliveries"] and len(doc["deliveries"][0]["attempts"]) == 2:
                break
            await asyncio.sleep(0.1)
        (pending,) = doc["deliveries"]
        assert pending["state"] == "pending"
        assert pending["origin"] == failing_origin, "no path or query: it may carry a token"
        assert "receiver-secret" not in json.dumps(doc)
        assert [a["status"] for a in pending["attempts"]] == [500, 500]
        assert pending["attempts"][-1]["error"] == "HTTP 500"
        assert pending["next_due_at"] is not None
        assert "dead_letters" not in doc

        code, out = await _status_cli(pipeline, env, "--key", refused, "--json")
        assert code == 0
        doc = json.loads(out)
        (gone,) = doc["deliveries"]
        assert gone["state"] == "dead_lettered"
        assert [a["outcome"] for a in gone["attempts"]] == ["refused"]
        (letter,) = doc["dead_letters"]["letters"]
        assert letter["reason"] == "refused"
        assert letter["origin"] == "http://10.0.0.1"
        code, out = await _status_cli(pipeline, env, "--key", refused)
        assert "dead_lettered" in out
        assert "refused after 1 attempts" in out
        code, out = await _status_cli(pipeline, env, "--key", f"nothing-{unique[:8]}")
        assert code == 1, "no delivery known for the key"
        assert out.startswith(
            f"key nothing-{unique[:8]}: 0 deliveries in Redis at {pipeline.redis_url} "
            f"(prefix {pipeline.redis_prefix})\n"
        ), "which Redis was read, so an empty answer from the wrong one does not mislead"

        for _ in range(100):  # pending counts per origin are read every few seconds
            _, page = await _get(port, "/status.json")
            rows = {row["origin"]: row for row in page["webhooks"]["endpoints"]}
            if rows.get(failing_origin, {}).get("pending") == 1:
                break
            await asyncio.sleep(0.1)
        assert rows[ok_origin]["configured"] is True
        assert rows[ok_origin]["success_rate"] == 1.0
        assert rows[failing_origin]["configured"] is False
        assert rows[failing_origin]["success_rate"] == 0.0
        assert rows[failing_origin]["last_error"] == "HTTP 500"
        assert rows[failing_origin]["pending"] == 1
        assert rows[failing_origin]["state"] == "closed", "two 500s do not open a breaker"

        success = await metric(port, "relay_webhook_attempts_total", origin=ok_origin)
        assert success == 1
        assert await metric(port, "relay_webhook_attempts_total", origin="other") == 3
        text = await pipeline.relay_get(port, "/metrics")
        assert failing_origin not in text[1], "unconfigured origins are labelled 'other'"
    finally:
        await ok.stop()
        await failing.stop()
