"""``relay sim``: run the MindVideo simulator until SIGINT or SIGTERM.

Every flag can also come from ``RELAY_SIM_<NAME>`` (``--processing-s`` from
``RELAY_SIM_PROCESSING_S``; ``RELAY_SIM_API_KEY`` takes a comma-separated list). A flag given on
the command line wins over the environment; unset values take ``SimConfig``'s defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping

from aiohttp import web
from pydantic import ValidationError

from relay import eventloop
from relay.sim.app import build_app
from relay.sim.config import SimConfig

ENV_PREFIX = "RELAY_SIM_"
SHUTDOWN_GRACE_S = 2.0
EXIT_OK = 0
EXIT_BAD_CONFIG = 2

# (flag, SimConfig field, help); each value is validated by SimConfig, from flag or env alike.
_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--host", "host", "address to listen on (default 127.0.0.1)"),
    ("--port", "port", "port to listen on, 0 for any free one (default 8090)"),
    ("--queued-s", "queued_s", "seconds a task stays queued: '1' or a range '0.5-2' (default 1)"),
    ("--processing-s", "processing_s", "seconds a task processes: '3' or '2-8' (default 2-8)"),
    ("--failure-rate", "failure_rate", "share of tasks that end failed (default 0)"),
    ("--rate-429", "rate_429", "share of /api/v1 requests answered 429 (default 0)"),
    ("--retry-after-s", "retry_after_s", "Retry-After of a 429 or 503, seconds (default 1)"),
    ("--rate-5xx", "rate_5xx", "share of /api/v1 requests answered 500/502/503 (default 0)"),
    ("--latency-ms", "latency_ms", "delay added to every /api/v1 response (default 0)"),
    ("--stream-drop-rate", "stream_drop_rate", "share of event streams cut before the end"),
    ("--keepalive-s", "keepalive_s", "seconds between SSE keep-alive comments (default 15)"),
    ("--seed", "seed", "seed of timelines, outcomes and faults (default: random)"),
)


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to ``parser`` (``relay sim`` wires its sub-parser here)."""
    for flag, field, text in _OPTIONS:
        parser.add_argument(flag, dest=field, default=None, help=f"{text} [{_env_name(field)}]")
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=None,
        help=f"an accepted API key, repeatable (default mv_test_local) [{ENV_PREFIX}API_KEY]",
    )


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> SimConfig:
    """Merge flags over ``RELAY_SIM_*`` variables over defaults; raises ``ValidationError``."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for _flag, field, _text in _OPTIONS:
        value = getattr(args, field, None)
        if value is None:
            value = env.get(_env_name(field))
        if value is not None:
            values[field] = value
    keys = getattr(args, "api_keys", None)
    if keys is None and env.get(ENV_PREFIX + "API_KEY"):
        keys = [key.strip() for key in env[ENV_PREFIX + "API_KEY"].split(",") if key.strip()]
    if keys is not None:
        values["api_keys"] = keys
    return SimConfig.model_validate(values)


async def serve(config: SimConfig, stop: asyncio.Event) -> None:
    """Serve ``config`` until ``stop`` is set; prints one line saying where it listens."""
    runner = web.AppRunner(build_app(config), shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"relay sim: MindVideo simulator listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


async def _serve_until_signal(config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(config, stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """Run the simulator from parsed flags; 0 after SIGINT/SIGTERM, 2 on a bad setting."""
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        print(f"relay sim: invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    eventloop.run(_serve_until_signal(config))
    return EXIT_OK
