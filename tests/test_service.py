"""Start-up and shutdown as an operator meets them: a clear error when Kafka is unreachable,
and SIGTERM honoured even while start-up is still waiting on a silent broker."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.support.services import ManagedProcess, free_port

pytestmark = pytest.mark.integration


def _relay(tmp_path: Path, bootstrap: str) -> ManagedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        RELAY_HTTP_HOST="127.0.0.1",
        RELAY_HTTP_PORT=str(free_port()),
        RELAY_LOG_FORMAT="text",
    )
    return ManagedProcess("relay", [sys.executable, "-m", "relay", "run"], tmp_path, env)


async def _exit_code(proc: ManagedProcess, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    return proc.returncode


async def test_unreachable_kafka_is_a_clear_error(tmp_path: Path) -> None:
    relay = _relay(tmp_path, f"127.0.0.1:{free_port()}")
    relay.start()
    try:
        assert await _exit_code(relay, 30.0) == 1
        log = relay.log_path.read_text()
        assert "could not start" in log
        assert "KafkaConnectionError" in log
        assert "Traceback" not in log
    finally:
        relay.stop()


async def test_sigterm_during_start_up_exits_cleanly(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections, never answers: a hung broker
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        relay = _relay(tmp_path, f"127.0.0.1:{silent.getsockname()[1]}")
        relay.start()
        try:
            await asyncio.sleep(2.0)
            assert relay.returncode is None, "still starting"
            started = time.monotonic()
            os.kill(relay.pid, signal.SIGTERM)
            assert await _exit_code(relay, 10.0) == 0
            assert time.monotonic() - started < 5.0
            assert "stop requested during start-up" in relay.log_path.read_text()
        finally:
            relay.stop()
