"""``relay submit`` against a real broker and relay: an invalid input is never produced, a key
whose result is already published is printed at once, and each outcome has its exit code."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support.pipeline import Pipeline

pytestmark = pytest.mark.integration

SUBMIT_DEADLINE_S = 90.0


async def _submit(pipeline: Pipeline, *argv: str) -> tuple[int, str, list[str]]:
    """Run ``relay submit`` with the pipeline's settings: exit code, stdout, stderr lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "submit",
        *argv,
        env=pipeline.relay_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), SUBMIT_DEADLINE_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode().strip().splitlines()


async def _records_produced(pipeline: Pipeline) -> int:
    """How many records the requests topic holds (the sum of its end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=pipeline.bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(pipeline.requests_topic) or set()
        tps = [TopicPartition(pipeline.requests_topic, p) for p in partitions]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def test_submit_outcomes_and_exit_codes(pipeline: Pipeline, unique: str) -> None:
    key = f"submit-{unique[:8]}"
    request = ["--key", key, "--prompt", "a panda in a bamboo forest"]

    code, _, err = await _submit(
        pipeline, "--key", key, "--prompt", "x", "--size", "3:1", "--n", "0"
    )
    assert code == 2, err
    assert "input.n" in err[-1]
    assert await _records_produced(pipeline) == 0, "an invalid input is refused before producing"

    code, _, err = await _submit(pipeline, *request, "--wait", "--timeout-s", "2")
    assert code == 3, err
    assert f"no result for {key} within 2s" in err[-1]
    assert f"--key {key} --wait" in err[-1], "it says how to keep waiting"

    await pipeline.start_relay()
    code, out, err = await _submit(pipeline, *request, "--wait", "--timeout-s", "60")
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    # The relay may have published the first record's result before this second submit looked:
    # then it printed that one at once instead of producing a duplicate.
    produced = await _records_produced(pipeline)
    assert produced in (1, 2)

    started = time.monotonic()
    code, again, err = await _submit(pipeline, *request, "--wait", "--timeout-s", "300")
    assert code == 0, err
    assert json.loads(again) == json.loads(out), "the published result, printed as it is"
    assert f"{key} already has a result" in err[-1]
    assert await _records_produced(pipeline) == produced, "nothing produced again"
    assert time.monotonic() - started < 60, "printed at once, not after --timeout-s"

    code, out, err = await _submit(
        pipeline, "--model", "no-such-model", "--input", '{"prompt": "x"}', "--wait"
    )
    assert code == 1, err
    assert json.loads(out)["status"] == "rejected"

    code, out, err = await _submit(pipeline, "--prompt", "fire and forget")
    assert code == 0, err
    assert out == ""
    assert "To see its outcome, run the same command again with --key cli-" in err[-1]

    ledger = await pipeline.sim_get("/_sim/ledger")
    charged = [c["idempotency_key"] for c in ledger["charges"]]
    assert charged.count(key) == 1, "submitted three times, charged once"
