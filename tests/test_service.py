"""Start-up and shutdown as an operator meets them: each failure to start is one log line naming
the dependency, its address and the ``RELAY_*`` variable to change (exit 1 unreachable, 2
configuration), a Redis that may evict the relay's state is refused, no password reaches the
log, and SIGTERM is honoured even while start-up still waits on a silent broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from relay.devtools.embedded import redis_server_binary
from relay.settings import RelaySettings
from relay.startup import check_eviction_policy, read_eviction_policy
from tests.support.services import ManagedProcess, free_port, wait_for_port

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 30.0


def _relay(tmp_path: Path, bootstrap: str, redis_url: str, **variables: str) -> ManagedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        RELAY_REDIS_URL=redis_url,
        RELAY_MINDVIDEO_API_KEY="mv_test_startup",
        RELAY_WEBHOOK_ALLOW_UNSIGNED="true",
        RELAY_HTTP_HOST="127.0.0.1",
        RELAY_HTTP_PORT=str(free_port()),
        RELAY_LOG_FORMAT="text",
    )
    env.update(variables)
    return ManagedProcess("relay", [sys.executable, "-m", "relay", "run"], tmp_path, env)


async def _exit_code(proc: ManagedProcess, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    return proc.returncode


async def _fails_to_start(relay: ManagedProcess, exit_code: int) -> str:
    """Start ``relay``, expect it to exit with ``exit_code``; return its one error line."""
    relay.start()
    try:
        assert await _exit_code(relay, START_TIMEOUT_S) == exit_code, relay.log_tail()
    finally:
        relay.stop()
    log = relay.log_path.read_text()
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if "ERROR   relay:" in line]
    assert len(errors) == 1, log
    assert log.rstrip().endswith(errors[0]), "the failure is the last thing said"
    return errors[0].split("ERROR   relay: ", 1)[1]


@asynccontextmanager
async def _redis_server(tmp_path: Path, *flags: str) -> AsyncIterator[str]:
    """A private redis-server started with ``flags``; yields its URL (no password in it)."""
    port = free_port()
    argv = [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1"]
    proc = ManagedProcess(f"redis-{port}", [*argv, "--save", "", *flags], tmp_path)
    proc.start()
    try:
        await wait_for_port("127.0.0.1", port, START_TIMEOUT_S, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()


async def test_unreachable_kafka_is_one_line_naming_the_variable(
    tmp_path: Path, redis_url: str
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    line = await _fails_to_start(_relay(tmp_path, bootstrap, redis_url), exit_code=1)
    assert line.startswith("the relay could not start: ")
    assert (
        f"cannot reach Kafka at {bootstrap} (no bootstrap server answered); "
        "check RELAY_KAFKA_BOOTSTRAP_SERVERS"
    ) in line


async def test_unreachable_redis_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    port = free_port()
    relay = _relay(tmp_path, "127.0.0.1:9", f"redis://:hunter2@127.0.0.1:{port}/0")
    line = await _fails_to_start(relay, exit_code=1)
    assert (
        f"cannot reach Redis at 127.0.0.1:{port} (connection refused); check RELAY_REDIS_URL"
    ) in line
    assert "hunter2" not in relay.log_path.read_text()


async def test_a_configuration_mistake_exits_2_before_starting(tmp_path: Path) -> None:
    relay = _relay(tmp_path, "127.0.0.1:9", "redis://127.0.0.1:9/0", RELAY_LOG_LEVEL="verbose")
    relay.start()
    try:
        assert await _exit_code(relay, START_TIMEOUT_S) == 2
    finally:
        relay.stop()
    lines = relay.log_path.read_text().strip().splitlines()
    assert lines == [
        "relay run: invalid configuration: RELAY_LOG_LEVEL='verbose': Input should be 'DEBUG', "
        "'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"
    ]


async def test_evicting_redis_is_refused_unless_allowed(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    async with _redis_server(tmp_path, "--maxmemory-policy", "allkeys-lru") as url:
        refused = _relay(tmp_path, kafka_bootstrap, url)
        line = await _fails_to_start(refused, exit_code=2)
        address = url.removeprefix("redis://").removesuffix("/0")
        assert f"Redis at {address} has maxmemory-policy allkeys-lru" in line
        assert "set maxmemory-policy noeviction" in line
        assert "RELAY_REDIS_ALLOW_EVICTION=true" in line

        port = free_port()
        allowed = _relay(
            tmp_path,
            kafka_bootstrap,
            url,
            RELAY_REDIS_ALLOW_EVICTION="true",
            RELAY_HTTP_PORT=str(port),
        )
        allowed.start()
        try:
            await wait_for_port("127.0.0.1", port, START_TIMEOUT_S, allowed)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/metrics") as resp,
            ):
                metrics = await resp.text()
        finally:
            allowed.stop()
        assert "relay_redis_eviction_allowed 1.0" in metrics
        assert "Redis may evict the relay's state" in allowed.log_path.read_text()


async def test_eviction_policy_is_read_from_info_when_config_is_disabled(
    tmp_path: Path,
) -> None:
    # Managed Redis services disable CONFIG; INFO still tells the policy.
    flags = ("--rename-command", "CONFIG", "", "--maxmemory-policy", "volatile-lru")
    async with _redis_server(tmp_path, *flags) as url:
        client = Redis.from_url(url)
        try:
            assert await read_eviction_policy(client) == "volatile-lru"
            settings = RelaySettings(redis_url=url, redis_allow_eviction=True)
            flagged: list[bool] = []
            assert await check_eviction_policy(client, settings, lambda: flagged.append(True))
            assert flagged == [True]
        finally:
            await client.aclose()


async def test_redis_password_never_reaches_the_log(tmp_path: Path, kafka_bootstrap: str) -> None:
    async with _redis_server(tmp_path, "--requirepass", "s3cret-pw") as url:
        good = url.replace("redis://", "redis://:s3cret-pw@")
        hook = "https://relay:hookpass@hooks.example.com/in?token=t0ken"
        port = free_port()
        relay = _relay(
            tmp_path,
            kafka_bootstrap,
            good,
            RELAY_LOG_LEVEL="DEBUG",
            RELAY_LOG_FORMAT="json",
            RELAY_WEBHOOK_DEFAULT_URL=hook,
            RELAY_HTTP_PORT=str(port),
        )
        relay.start()
        try:
            await wait_for_port("127.0.0.1", port, START_TIMEOUT_S, relay)
        finally:
            relay.stop()
        log = relay.log_path.read_text()
        settings_lines = [json.loads(x) for x in log.splitlines() if '"settings"' in x]
        assert len(settings_lines) == 2, "a compact line at INFO, every setting at DEBUG"
        assert len(settings_lines[0]["settings"]) < len(settings_lines[1]["settings"])
        assert settings_lines[1]["settings"]["webhook_default_url"] == "https://hooks.example.com"
        for secret in ("s3cret-pw", "hookpass", "t0ken"):
            assert secret not in log

        wrong = _relay(tmp_path, kafka_bootstrap, url.replace("redis://", "redis://:wrong-pw@"))
        line = await _fails_to_start(wrong, exit_code=1)
        assert "Redis at 127.0.0.1:" in line
        assert "authentication refused" in line
        assert "check the credentials in RELAY_REDIS_URL" in line
        assert "wrong-pw" not in wrong.log_path.read_text()


async def test_replay_names_the_dependency_it_cannot_reach(redis_url: str) -> None:
    kafka, redis = f"127.0.0.1:{free_port()}", free_port()
    cases = [  # Redis is checked first: a replay never reads the topic for the wrong Redis
        (kafka, f"redis://:pw@127.0.0.1:{redis}/0", f"Redis at 127.0.0.1:{redis}", "REDIS_URL"),
        (kafka, redis_url, f"Kafka at {kafka}", "KAFKA_BOOTSTRAP_SERVERS"),
    ]
    for bootstrap, url, names, variable in cases:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env.update(RELAY_KAFKA_BOOTSTRAP_SERVERS=bootstrap, RELAY_REDIS_URL=url)
        replay = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "relay", "webhooks", "replay", "--all"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(replay.communicate(), START_TIMEOUT_S)
        assert replay.returncode == 1, err
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"relay webhooks replay: cannot reach {names} ("), lines[0]
        assert lines[0].endswith(f"; check RELAY_{variable}"), lines[0]
        assert "pw@" not in lines[0]


async def test_sigterm_during_start_up_exits_cleanly(tmp_path: Path, redis_url: str) -> None:
    with socket.socket() as silent:  # accepts connections, never answers: a hung broker
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        relay = _relay(tmp_path, f"127.0.0.1:{silent.getsockname()[1]}", redis_url)
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
