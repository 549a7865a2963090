"""A MindVideo the relay cannot connect to shows (issue of the attack-b report: /readyz said ok
and nothing but INFO retry lines told): after a few failed connections in a row /readyz and
``relay_dependency_up{dependency="mindvideo"}`` name RELAY_MINDVIDEO_BASE_URL and egress, the log
says so once per 30 s with a count, and the first answer clears it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from relay.devtools.processes import free_port
from relay.pipeline.reachability import LOG_INTERVAL_S, UNREACHABLE_AFTER_FAILURES, Reachability
from tests.support.impostor import running_impostor
from tests.support.pipeline import Pipeline

MODEL = "apimart-doubao-seedance-4-0"
WARNING = "cannot connect to MindVideo; check RELAY_MINDVIDEO_BASE_URL and the egress to it"


def test_failures_in_a_row_make_a_problem_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    reach = Reachability("http://user:pw@mindvideo.internal:8443", clock=lambda: now[0])
    refused = ConnectionRefusedError(111, "Connect call failed")
    with caplog.at_level(logging.DEBUG, logger="relay.pipeline.reachability"):
        for _ in range(UNREACHABLE_AFTER_FAILURES - 1):
            reach.failed(refused)
        assert reach.problem() is None, "a few failures are an outage's retries, not a problem"
        reach.answered()  # an answer in between starts the count again
        for _ in range(UNREACHABLE_AFTER_FAILURES):
            now[0] += 1
            reach.failed(refused)
        problem = reach.problem()
        assert problem is not None
        assert "RELAY_MINDVIDEO_BASE_URL" in problem
        assert "egress" in problem
        assert "pw" not in problem, "the URL's userinfo is never shown"
        for _ in range(20):  # more failures within the interval: no more lines
            now[0] += 1
            reach.failed(refused)
        now[0] += LOG_INTERVAL_S
        reach.failed(refused)
        reach.answered()
        assert reach.problem() is None
    lines = [(r.getMessage(), getattr(r, "failed_connections", None)) for r in caplog.records]
    assert lines == [
        (WARNING, UNREACHABLE_AFTER_FAILURES),
        (WARNING, 21),
        ("MindVideo answers again", UNREACHABLE_AFTER_FAILURES + 21),
    ]


async def test_an_unreachable_mindvideo_is_reported_until_it_answers(
    pipeline: Pipeline, unique: str
) -> None:
    """Connection refused at the configured address: /readyz stays 200 but ``degraded`` naming the
    variable, the gauge goes to 0, the log has one WARNING (not one line per retry); when a
    MindVideo listens there, the request goes through and the check is ok again."""
    key, port = f"unreach-{unique[:8]}", free_port()
    relay, http_port = await pipeline.start_relay(
        RELAY_MINDVIDEO_BASE_URL=f"http://127.0.0.1:{port}"
    )
    await pipeline.produce(
        [(key.encode(), json.dumps({"model": MODEL, "input": {"prompt": key}}).encode())]
    )
    deadline, body = time.monotonic() + 20, dict[str, Any]()
    while not (
        "cannot connect" in str(body.get("checks", {}).get("mindvideo"))
        and await pipeline.metric(http_port, "relay_dependency_up", dependency="mindvideo") == 0
    ):
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)
        status, text = await pipeline.relay_get(http_port, "/readyz")
        assert status == 200, text
        body = json.loads(text)
    assert body["status"] == "degraded"
    assert "RELAY_MINDVIDEO_BASE_URL" in body["checks"]["mindvideo"]

    async with running_impostor(port) as mindvideo:
        mindvideo.proxy_to = pipeline.sim_url
        results = await pipeline.results({key}, 30.0)
        assert [r.value["status"] for r in results] == ["succeeded"], results
        ready = json.loads((await pipeline.relay_get(http_port, "/readyz"))[1])
        assert ready == {"status": "ready", "checks": {**ready["checks"], "mindvideo": "ok"}}
    relay.stop()
    logs = [json.loads(line) for line in relay.log_path.read_text().splitlines() if "{" in line]
    warnings = [entry for entry in logs if entry["msg"] == WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0]["failed_connections"] >= UNREACHABLE_AFTER_FAILURES
    per_retry = {"mindvideo submit failed, retrying", "dependency unavailable, holding the request"}
    loud = [e for e in logs if e["msg"] in per_retry and e["level"] != "debug"]
    assert loud == [], "no line per retry"
    assert any(entry["msg"] == "MindVideo answers again" for entry in logs)


async def test_sigterm_while_mindvideo_is_unreachable_hands_the_work_back_at_once(
    pipeline: Pipeline, unique: str
) -> None:
    """Work that cannot reach MindVideo cannot move: a SIGTERM does not wait out the grace period
    for it (the operator's fix, a corrected base URL, is a rollout that pays that wait on every
    pod). The next relay, pointed at MindVideo, finishes the request once."""
    key, port = f"unreach-stop-{unique[:8]}", free_port()
    relay, http_port = await pipeline.start_relay(
        RELAY_MINDVIDEO_BASE_URL=f"http://127.0.0.1:{port}", RELAY_SHUTDOWN_GRACE_S="30"
    )
    await pipeline.produce(
        [(key.encode(), json.dumps({"model": MODEL, "input": {"prompt": key}}).encode())]
    )
    deadline = time.monotonic() + 20
    while await pipeline.metric(http_port, "relay_dependency_up", dependency="mindvideo") != 0:
        assert time.monotonic() < deadline, "MindVideo never reported unreachable"
        await asyncio.sleep(0.2)
    assert await pipeline.metric(http_port, "relay_tasks_in_flight") == 1

    started = time.monotonic()
    assert relay.stop(timeout_s=60.0) == 0, "SIGTERM exits cleanly"
    stopped_in_s = time.monotonic() - started
    print(f"\nSIGTERM with MindVideo unreachable: exited in {stopped_in_s:.1f}s (grace 30 s)")
    assert stopped_in_s < 10.0, "not the 30 s grace period: work that cannot move is handed back"

    await pipeline.start_relay()
    results = await pipeline.results({key}, 30.0)
    assert [r.value["status"] for r in results] == ["succeeded"], results
