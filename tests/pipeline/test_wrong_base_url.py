"""A MindVideo base URL that does not point at MindVideo's API is a configuration problem, not a
reason to reject every request (issue 16, and the attack-b report): a 404 on the submit route, a
405, a redirect (never followed) or an error page that is not MindVideo's JSON error closes the
credentials gate, nothing is rejected, and the request goes through once MindVideo answers there.
MindVideo's own JSON rejections (404 ``model_not_found``, 409, 422) still reject only the
request."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from relay.backoff import Backoff
from relay.exceptions import OperatorError, RequestRejected
from relay.metrics import RelayMetrics
from relay.pipeline.mindvideo import MindVideoClient
from tests.support.impostor import NGINX_405, Answer, running_impostor
from tests.support.pipeline import SIM_API_KEY, Pipeline
from tests.support.services import ManagedProcess, wait_for_port

MODEL = "apimart-doubao-seedance-4-0"


def _record(key: str, model: str = MODEL) -> tuple[bytes, bytes]:
    return key.encode(), json.dumps({"model": model, "input": {"prompt": key}}).encode()


async def test_a_wrong_base_path_closes_the_gate_and_rejects_nothing(
    pipeline: Pipeline, unique: str
) -> None:
    key, unknown = f"path-{unique[:8]}", f"model-{unique[:8]}"
    relay, port = await pipeline.start_relay(
        RELAY_MINDVIDEO_BASE_URL=f"{pipeline.sim_url}/mindvideo"
    )
    await pipeline.produce([_record(key)])
    deadline, check = time.monotonic() + 20, ""
    while "RELAY_MINDVIDEO_BASE_URL" not in check:
        assert time.monotonic() < deadline, check
        await asyncio.sleep(0.2)
        check = json.loads((await pipeline.relay_get(port, "/readyz"))[1])["checks"]["mindvideo"]
    assert "404" in check
    assert await pipeline.results(set(), 1.0, min_count=1) == [], "nothing rejected"
    relay.stop()

    _, port = await pipeline.start_relay()  # the operator fixes the URL
    await pipeline.produce([_record(unknown, model="no-such-model")])
    results = {r.key: r.value for r in await pipeline.results({key, unknown}, 30.0)}
    assert results[key]["status"] == "succeeded"
    assert results[unknown]["error"]["code"] == "model_not_found", results[unknown]


async def test_the_probe_tells_a_missing_route_from_a_missing_task(
    simulator: tuple[ManagedProcess, str],
) -> None:
    """The probe that reopens the gate: a wrong path stays refused, the right one reopens."""
    proc, url = simulator
    await wait_for_port("127.0.0.1", int(url.rsplit(":", 1)[1]), 30.0, proc)
    async with aiohttp.ClientSession() as session:

        def client(base_url: str) -> MindVideoClient:
            return MindVideoClient(
                session,
                base_url=base_url,
                api_key=SIM_API_KEY,
                metrics=RelayMetrics(),
                backoff=Backoff(0.01, 0.05),
                max_attempts=2,
                request_timeout_s=5.0,
            )

        with pytest.raises(OperatorError, match="RELAY_MINDVIDEO_BASE_URL"):
            await client(f"{url}/mindvideo").probe()
        await client(url).probe()  # the task is unknown, the route is there: the gate reopens


def _client(session: aiohttp.ClientSession, base_url: str) -> MindVideoClient:
    return MindVideoClient(
        session,
        base_url=base_url,
        api_key=SIM_API_KEY,
        metrics=RelayMetrics(),
        backoff=Backoff(0.01, 0.05),
        max_attempts=2,
        request_timeout_s=5.0,
    )


async def test_a_static_site_at_the_base_url_closes_the_gate_until_the_probe_finds_mindvideo(
    pipeline: Pipeline, unique: str
) -> None:
    """An nginx serving a site answers the submit's POST with a 405 page (issue of the attack-b
    report: every request was rejected as ``mindvideo_http_405``). Nothing is rejected, /readyz
    names the variable, and once MindVideo answers behind that address the probe reopens the
    gate and the request goes through, without a restart."""
    key = f"static-{unique[:8]}"
    async with running_impostor() as site:
        site.answers["POST"] = Answer(405, NGINX_405)
        _, port = await pipeline.start_relay(
            RELAY_MINDVIDEO_BASE_URL=site.url, RELAY_MINDVIDEO_PROBE_INTERVAL_S="0.3"
        )
        await pipeline.produce([_record(key)])
        deadline, body = time.monotonic() + 20, dict[str, Any]()
        while "RELAY_MINDVIDEO_BASE_URL" not in str(body.get("checks", {}).get("mindvideo")):
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.2)
            status, text = await pipeline.relay_get(port, "/readyz")
            assert status == 200, text
            body = json.loads(text)
        assert body["status"] == "degraded"
        assert "405" in body["checks"]["mindvideo"], body
        assert await pipeline.results(set(), 0.5, min_count=1) == [], "nothing rejected"

        site.proxy_to = pipeline.sim_url  # MindVideo now answers at that address
        results = await pipeline.results({key}, 30.0)
        assert [r.value["status"] for r in results] == ["succeeded"], results
        ready = json.loads((await pipeline.relay_get(port, "/readyz"))[1])
        assert ready["checks"]["mindvideo"] == "ok", ready


# What servers that are not MindVideo answer where its API should be, and must close the gate.
NOT_MINDVIDEO = {
    "nginx 405 page": Answer(405, NGINX_405),
    "405 even as JSON": Answer(
        405, b'{"error": {"code": "method_not_allowed"}}', "application/json"
    ),
    "301 to https": Answer(301, headers={"Location": "https://api.example/api/v1/tasks"}),
    "302 to a login page": Answer(302, headers={"Location": "/login"}),
    "400 HTML": Answer(400, b"<html>400 Bad Request</html>"),
    "422 of another API": Answer(
        422, b'{"detail": [{"msg": "field required"}]}', "application/json"
    ),
    "410 plain text": Answer(410, b"gone", "text/plain"),
}
# MindVideo's own rejections, and a size limit on the way: the request's, rejected as before.
REJECTIONS = {
    "invalid_input": Answer(
        422, b'{"error": {"code": "invalid_input", "message": "n: too large"}}', "application/json"
    ),
    "idempotency_conflict": Answer(
        409, b'{"error": {"code": "idempotency_conflict", "message": "x"}}', "application/json"
    ),
    "mindvideo_http_413": Answer(413, b"<html>413 Request Entity Too Large</html>"),
}


async def test_answers_of_other_servers_name_the_base_url_and_mindvideos_reject() -> None:
    async with running_impostor() as site, aiohttp.ClientSession() as session:
        client = _client(session, site.url)
        for name, answer in NOT_MINDVIDEO.items():
            site.answers["POST"], site.seen[:] = answer, []
            with pytest.raises(OperatorError, match="RELAY_MINDVIDEO_BASE_URL") as raised:
                await client.submit("k-1", MODEL, {"prompt": "a panda"})
            assert raised.value.wrong_base_url, name
            assert site.seen == ["POST /api/v1/tasks"], f"{name}: a redirect is not followed"
        for code, answer in REJECTIONS.items():
            site.answers["POST"] = answer
            with pytest.raises(RequestRejected) as rejected:
                await client.submit("k-1", MODEL, {"prompt": "a panda"})
            assert rejected.value.code == code

        site.answers["GET"] = Answer(301, headers={"Location": "https://api.example/"})
        with pytest.raises(OperatorError, match="redirected"):
            await client.probe()  # the gate stays closed while the address redirects
        site.answers["GET"] = Answer(400, b"<html>bad</html>")
        with pytest.raises(OperatorError, match="RELAY_MINDVIDEO_BASE_URL"):
            await client.probe()


async def test_mindvideos_json_rejections_reject_only_the_request(
    simulator: tuple[ManagedProcess, str],
) -> None:
    """Against the simulator: 404 ``model_not_found``, 422 ``invalid_input`` and 409
    ``idempotency_conflict`` are the request's own, never the operator's."""
    proc, url = simulator
    await wait_for_port("127.0.0.1", int(url.rsplit(":", 1)[1]), 30.0, proc)
    async with aiohttp.ClientSession() as session:
        client = _client(session, url)
        cases: list[tuple[str, str, dict[str, Any], str]] = [
            ("k-model", "no-such-model", {"prompt": "x"}, "model_not_found"),
            ("k-input", MODEL, {"prompt": "x", "n": 99}, "invalid_input"),
        ]
        for key, model, payload, code in cases:
            with pytest.raises(RequestRejected) as rejected:
                await client.submit(key, model, payload)
            assert rejected.value.code == code
        await client.submit("k-conflict", MODEL, {"prompt": "one"})
        with pytest.raises(RequestRejected) as rejected:
            await client.submit("k-conflict", MODEL, {"prompt": "another"})
        assert rejected.value.code == "idempotency_conflict"
