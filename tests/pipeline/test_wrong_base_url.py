"""A MindVideo base URL with a wrong path is a configuration problem, not a reason to reject every
request (issue 16): the submit's 404 closes the credentials gate, nothing is rejected, and the
request goes through once the relay points at the right place. An unknown model (404
``model_not_found``) is still the request's own rejection."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from relay.backoff import Backoff
from relay.exceptions import OperatorError
from relay.metrics import RelayMetrics
from relay.pipeline.mindvideo import MindVideoClient
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
