"""Clients we did not write: a request produced by kcat comes back as a result kcat can read,
and the relay runs on a second broker (Tansu) with the idempotent producer switched off."""

from __future__ import annotations

import asyncio
import json

import pytest

from relay.models import event_id_for
from tests.support.pipeline import Pipeline
from tests.support.services import require_tool

MODEL = "apimart-doubao-seedance-4-0"
KCAT_TIMEOUT_S = 60


async def _kcat(*args: str, stdin: bytes | None = None) -> bytes:
    kcat = require_tool("kcat", "kcat")
    proc = await asyncio.create_subprocess_exec(
        kcat,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), KCAT_TIMEOUT_S)
    assert proc.returncode == 0, err.decode(errors="replace")
    return out


async def test_kcat_request_comes_back_as_a_kcat_readable_result(
    pipeline: Pipeline, unique: str
) -> None:
    key = f"kcat-{unique[:8]}"
    request = {"model": MODEL, "input": {"prompt": "a panda drawn by kcat", "n": 2}}
    await pipeline.start_relay()
    line = f"{key}\t{json.dumps(request)}\n".encode()
    await _kcat("-P", "-b", pipeline.bootstrap, "-t", pipeline.requests_topic, "-K\t", stdin=line)
    out = await _kcat(
        "-C",
        "-b",
        pipeline.bootstrap,
        "-t",
        pipeline.results_topic,
        "-o",
        "beginning",
        "-c",
        "1",
        "-J",
    )
    envelope = json.loads(out.decode().splitlines()[0])
    assert envelope["key"] == key
    result = json.loads(envelope["payload"])
    assert result["type"] == "task.succeeded"
    assert result["event_id"] == event_id_for(key, "task.succeeded")
    assert len(result["output"]["images"]) == 2
    assert result["cost_actual"] == pytest.approx(0.0504)


async def test_runs_on_tansu_without_idempotent_producer(
    tansu_pipeline: Pipeline, unique: str
) -> None:
    keys = [f"tansu-{unique[:8]}-{i}" for i in range(6)]
    await tansu_pipeline.start_relay()
    await tansu_pipeline.produce(
        [(k.encode(), json.dumps({"model": MODEL, "input": {"prompt": k}}).encode()) for k in keys]
    )
    got = await tansu_pipeline.results(set(keys), 60.0)
    assert sorted(r.key for r in got) == sorted(keys)
    assert {r.value["status"] for r in got} == {"succeeded"}
    assert (await tansu_pipeline.sim_get("/_sim/ledger"))["count"] == 6
