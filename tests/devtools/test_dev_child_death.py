"""``relay dev`` says which child died and why, and cleans up the rest (issue 16): a broker
killed under it is not silence."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.devtools.test_dev import DEV_READY_TIMEOUT_S, _dev, _without_relay_variables
from tests.support.services import free_port, wait_for_port

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_dead_broker_is_reported_and_the_rest_stopped(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("kafka", "redis", "sim", "http", "webhook")}
    dev = _dev("dev", tmp_path, ports, _without_relay_variables())
    dev.start()
    try:
        await wait_for_port("127.0.0.1", ports["http"], DEV_READY_TIMEOUT_S, dev)
        children = _children(dev.pid)
        assert len(children) == 2, children  # the broker and Redis
        broker, redis = children
        os.kill(broker, signal.SIGKILL)
        for _ in range(100):
            if dev.returncode is not None:
                break
            await asyncio.sleep(0.2)
        log = dev.log_path.read_text()
        assert dev.returncode == 1, log[-2000:]
        assert f"(pid {broker}) exited with code -9" in log
        assert "its last lines" in log
        assert "nothing left running" in log
        assert not _alive(redis), "Redis stopped with the rest"
    finally:
        dev.stop()
