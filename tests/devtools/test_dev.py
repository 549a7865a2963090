"""``relay dev`` runs the whole pipeline from PyPI packages, ``relay submit --wait`` gets a
succeeded result through it, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support.services import ManagedProcess, free_port, wait_for_port

pytestmark = pytest.mark.integration

DEV_READY_TIMEOUT_S = 60.0
SUBMIT_TIMEOUT_S = 60.0


def _processes_mentioning(*needles: str) -> list[int]:
    """PIDs of live processes whose command line contains every needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and all(n in cmdline for n in needles):
            found.append(int(entry.name))
    return found


async def test_dev_then_submit_then_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("kafka", "redis", "sim", "http", "webhook")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    dev = ManagedProcess(
        "dev",
        [
            sys.executable,
            "-m",
            "relay",
            "dev",
            "--kafka-port",
            str(ports["kafka"]),
            "--redis-port",
            str(ports["redis"]),
            "--sim-port",
            str(ports["sim"]),
            "--http-port",
            str(ports["http"]),
            "--processing-s",
            "0.5",
        ],
        tmp_path,
        env,
    )
    dev.start()
    try:
        await wait_for_port("127.0.0.1", ports["http"], DEV_READY_TIMEOUT_S, dev)
        children = _processes_mentioning(str(ports["kafka"])) + _processes_mentioning(
            str(ports["redis"])
        )
        assert len(children) >= 2, "the embedded broker and Redis run as child processes"

        submit = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "submit",
            "--prompt",
            "a panda in a bamboo forest",
            "--n",
            "2",
            "--wait",
            "--timeout-s",
            "45",
            env={**env, "RELAY_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['kafka']}"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(submit.communicate(), SUBMIT_TIMEOUT_S)
        assert submit.returncode == 0, err.decode()
        result = json.loads(out)
        assert result["status"] == "succeeded"
        assert len(result["output"]["images"]) == 2
        assert result["cost_actual"] == 0.0504
        delivered = f"webhook verified: task.succeeded key={result['idempotency_key']}"
        for _ in range(100):
            if delivered in dev.log_path.read_text():
                break
            await asyncio.sleep(0.1)
        assert delivered in dev.log_path.read_text(), "the local receiver verified the webhook"

        os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        for _ in range(100):
            if dev.returncode is not None:
                break
            await asyncio.sleep(0.2)
        assert dev.returncode == 0, dev.log_tail()
        assert "nothing left running" in dev.log_path.read_text()
        leftovers = _processes_mentioning(str(ports["kafka"])) + _processes_mentioning(
            str(ports["redis"])
        )
        assert leftovers == [], f"processes survived Ctrl-C: {leftovers}"
    finally:
        dev.stop()
