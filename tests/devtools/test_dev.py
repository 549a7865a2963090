"""``relay dev`` runs the whole pipeline from PyPI packages, honours what the user exported, prints
an export block that other commands (``relay submit``, ``relay webhooks replay``, the user's own
receiver) reach the stack with, leaves no process behind on Ctrl-C, and starts again at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from tests.devtools.support import in_time_wait, leave_in_time_wait, parse_exports
from tests.support.services import ManagedProcess, free_port, wait_for_port
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.integration

DEV_READY_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


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


def _without_relay_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("RELAY_")}


def _dev(name: str, tmp_path: Path, ports: dict[str, int], env: dict[str, str]) -> ManagedProcess:
    argv = [sys.executable, "-m", "relay", "dev", "--processing-s", "0.5"]
    for flag in ("kafka", "redis", "sim", "http", "webhook"):
        argv += [f"--{flag}-port", str(ports[flag])]
    return ManagedProcess(name, argv, tmp_path, env)


async def _command(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _wait_running(dev: ManagedProcess, http_port: int) -> None:
    """Until the first screen is printed: the relay serves HTTP before it has joined its
    consumer group (``/readyz`` says "joining"), and relay dev prints once it has."""
    await wait_for_port("127.0.0.1", http_port, DEV_READY_TIMEOUT_S, dev)
    for _ in range(int(DEV_READY_TIMEOUT_S / 0.2)):
        if "dev is running" in dev.log_path.read_text() or dev.returncode is not None:
            return
        await asyncio.sleep(0.2)


async def _ctrl_c(dev: ManagedProcess) -> None:
    os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    for _ in range(int(STOP_TIMEOUT_S / 0.2)):
        if dev.returncode is not None:
            break
        await asyncio.sleep(0.2)
    assert dev.returncode == 0, dev.log_tail()
    assert "nothing left running" in dev.log_path.read_text()


async def test_dev_honours_exports_prints_them_and_restarts_at_once(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("kafka", "redis", "sim", "http", "webhook")}
    mine = Receiver()  # the user's own receiver, verifying with the secret relay dev printed
    await mine.start()
    dev_receiver = f"http://127.0.0.1:{ports['webhook']}/webhooks"
    env = {
        **_without_relay_variables(),
        "RELAY_WEBHOOK_RETRY_SCHEDULE": "0,1",
        "RELAY_WEBHOOK_DEFAULT_URL": f"{dev_receiver},{mine.url}",
    }
    dev = _dev("dev", tmp_path, ports, env)
    restarted = _dev("dev-again", tmp_path, ports, env)
    dev.start()
    try:
        await _wait_running(dev, ports["http"])
        text = dev.log_path.read_text()
        children = _processes_mentioning(str(ports["kafka"])) + _processes_mentioning(
            str(ports["redis"])
        )
        assert len(children) >= 2, "the embedded broker and Redis run as child processes"

        # What the user exported is honoured, and said.
        assert "honoured from your environment:" in text
        assert "\n    RELAY_WEBHOOK_RETRY_SCHEDULE=0,1\n" in text
        started = [json.loads(x) for x in text.splitlines() if "webhook dispatcher started" in x]
        assert started[0]["retry_schedule_s"] == [0.0, 1.0]

        exports = parse_exports(text)
        assert exports["RELAY_KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{ports['kafka']}"
        assert exports["RELAY_REDIS_URL"] == f"redis://127.0.0.1:{ports['redis']}/0"
        assert exports["RELAY_RESULT_TOPIC"] == "mindvideo.results"
        secret = exports["RELAY_WEBHOOK_SECRETS"]

        # Other commands reach the stack with the export block alone.
        reach = {**_without_relay_variables(), **exports}
        code, out, err = await _command(
            reach, "submit", "--prompt", "a panda in a bamboo forest", "--n", "2", "--wait"
        )
        assert code == 0, err
        result = json.loads(out)
        assert result["status"] == "succeeded"
        assert len(result["output"]["images"]) == 2
        assert result["cost_actual"] == 0.0504
        verified_line = f"webhook verified: task.succeeded key={result['idempotency_key']}"
        for _ in range(100):
            if verified_line in dev.log_path.read_text() and mine.deliveries:
                break
            await asyncio.sleep(0.1)
        assert verified_line in dev.log_path.read_text(), "the local receiver verified it"
        delivery = mine.deliveries[0]
        signed = Webhook(secret).verify(delivery.body, delivery.headers)
        assert signed["idempotency_key"] == result["idempotency_key"], "the printed secret signs"

        code, out, err = await _command(reach, "webhooks", "replay", "--all")
        assert code == 0, err
        assert f"into Redis at 127.0.0.1:{ports['redis']}" in out
        code, out, err = await _command(
            reach, "webhooks", "status", "--key", result["idempotency_key"], "--no-dead-letters"
        )
        assert code == 0, err
        assert f"in Redis at redis://127.0.0.1:{ports['redis']}/0 (prefix mvrelay)" in out
        assert exports["RELAY_MINDVIDEO_API_KEY"] == "mv_test_local", "the simulator's, throwaway"
        code, out, err = await _command(reach, "reconcile", "--since", "1h")
        assert code == 0, out + err  # MindVideo (the simulator) and the relay agree

        await _ctrl_c(dev)
        leftovers = _processes_mentioning(str(ports["kafka"])) + _processes_mentioning(
            str(ports["redis"])
        )
        assert leftovers == [], f"processes survived Ctrl-C: {leftovers}"

        # Right after Ctrl-C every port may still have connections in TIME-WAIT: start again.
        for port in ports.values():
            leave_in_time_wait(port)
        assert all(in_time_wait(port) for port in ports.values())
        restarted.start()
        await _wait_running(restarted, ports["http"])
        assert "in use" not in restarted.log_path.read_text()
        await _ctrl_c(restarted)
    finally:
        dev.stop()
        restarted.stop()
        await mine.stop()


def test_dev_refuses_an_export_it_cannot_honour(tmp_path: Path) -> None:
    env = {**_without_relay_variables(), "RELAY_REDIS_URL": "redis://redis.example:6379/0"}
    ports = {name: free_port() for name in ("kafka", "redis", "sim", "http", "webhook")}
    dev = _dev("dev-refused", tmp_path, ports, env)
    done = subprocess.run(dev.argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("relay dev: RELAY_REDIS_URL=redis://redis.example:6379/0 is not on")
    assert "unset it" in lines[0]
