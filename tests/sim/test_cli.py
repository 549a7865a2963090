"""``relay sim`` flags and environment, and a real server process that stops on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys

import aiohttp
import pytest

from relay.sim import cli
from relay.sim.config import DurationRange


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_without_flags_or_env() -> None:
    config = cli.config_from_args(_parse(), environ={})
    assert (config.host, config.port, config.api_keys) == ("127.0.0.1", 8090, ["mv_test_local"])
    assert config.keepalive_s == 15.0
    assert str(config.processing_s) == "2-8"


def test_flags_win_over_environment() -> None:
    env = {
        "RELAY_SIM_PORT": "9000",
        "RELAY_SIM_PROCESSING_S": "2-8",
        "RELAY_SIM_RATE_429": "0.25",
        "RELAY_SIM_API_KEY": "mv_live_a, mv_live_b",
        "RELAY_SIM_SEED": "4",
    }
    args = _parse("--port", "9100", "--processing-s", "3", "--latency-ms", "20")
    config = cli.config_from_args(args, environ=env)
    assert config.port == 9100
    assert config.processing_s == DurationRange(min_s=3, max_s=3)
    assert config.rate_429 == 0.25
    assert config.latency_ms == 20.0
    assert config.seed == 4
    assert config.api_keys == ["mv_live_a", "mv_live_b"]
    flagged = cli.config_from_args(_parse("--api-key", "k1", "--api-key", "k2"), environ=env)
    assert flagged.api_keys == ["k1", "k2"]


@pytest.mark.parametrize(
    ("text", "low", "high"), [("3", 3, 3), ("2-8", 2, 8), ("0.5-1.5", 0.5, 1.5), (" 0 ", 0, 0)]
)
def test_duration_ranges(text: str, low: float, high: float) -> None:
    duration = DurationRange.model_validate(text)
    assert (duration.min_s, duration.max_s) == (low, high)


@pytest.mark.parametrize("text", ["8-2", "soon", "-1", "1-2-3", ""])
def test_bad_durations_are_refused(text: str) -> None:
    assert cli.run(_parse("--queued-s", text)) == cli.EXIT_BAD_CONFIG


def test_bad_rate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_parse("--failure-rate", "2")) == cli.EXIT_BAD_CONFIG
    assert "failure_rate" in capsys.readouterr().err


SERVE = (
    "import argparse, sys\n"
    "from relay.sim import cli\n"
    "p = argparse.ArgumentParser(); cli.add_arguments(p)\n"
    "sys.exit(cli.run(p.parse_args(sys.argv[1:])))\n"
)


@pytest.mark.integration
async def test_real_server_serves_and_exits_0_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVE,
        "--port",
        "0",
        "--api-key",
        "mv_test_cli",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, line
        base = match.group(1)
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{base}/api/v1/tasks",
                json={"model": "apimart-doubao-seedance-4-0", "input": {"prompt": "x"}},
                headers={"Authorization": "Bearer mv_test_cli"},
            )
            assert resp.status == 200
            assert (await resp.json())["cost_estimate"] == 0.0252
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
