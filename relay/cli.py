"""The ``relay`` console entry point: ``run`` (the service), ``sim`` (a MindVideo simulator),
``dev``, ``submit`` and ``webhooks replay``.

Exit codes, for every command: 0 done, 2 the configuration or the command line is wrong (one
line on stderr names each variable or flag to fix), 1 a dependency could not be reached (one
line names it, its address and the variable that sets it). ``relay submit`` adds 1 for a
request that did not succeed and 3 for a ``--wait`` that timed out; ``relay run`` 4 for a stop that
overran its deadline (relay/shutdown.py); ``relay reconcile`` uses 1 for
drift found and 3 for a dependency that could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import aiohttp
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from relay import __version__, eventloop
from relay.configuration import load_service_settings, load_settings, load_tracing_config
from relay.exceptions import ConfigurationError, RelayError, StartupError
from relay.logs import setup_logging
from relay.redis import redis_client
from relay.service import Relay
from relay.settings import RelaySettings
from relay.shutdown import SHUTDOWN_CLOSE_S, HardDeadline
from relay.startup import describe_start_failure, quiet_kafka_client, redis_address
from relay.tracing.config import TracingConfig

log = logging.getLogger("relay")
T = TypeVar("T")
# Stop steps `relay run` abandoned (relay/shutdown.py): then it exits without interpreter teardown.
_ABANDONED: list[str] = []


async def _serve(settings: RelaySettings, tracing: TracingConfig) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a fatal error, a signal during start-up included: a
    pod being deleted while Kafka is unreachable must not wait for start to end.

    A failure to start is one log line naming the dependency, its address and the variable to
    change, logged last (after the clean-up), with exit code 2 for configuration and 1 for an
    unreachable dependency.
    """
    relay = Relay(settings, tracing=tracing)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    starting = asyncio.create_task(relay.start())
    await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("stop requested during start-up")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await _stop_within_deadline(relay, settings)
        return 0
    error = starting.exception()
    if error is not None:
        stopper.cancel()
        failure = describe_start_failure(error, settings)
        await relay.stop()
        log.debug("start-up failure in detail", exc_info=error)
        log.error("the relay could not start: %s", failure, extra={"exit_code": failure.exit_code})
        return failure.exit_code
    waiter = asyncio.create_task(relay.wait())
    done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    failed = waiter in done and waiter.exception() is not None
    if failed:
        log.error("the consume loop failed", exc_info=waiter.exception())
    stopper.cancel()
    await _stop_within_deadline(relay, settings)
    return 1 if failed else 0


async def _stop_within_deadline(relay: Relay, settings: RelaySettings) -> None:
    """``relay.stop()``, with a timer that ends the process (exit ``EXIT_STOP_DEADLINE``) if
    it has not returned ``SHUTDOWN_CLOSE_S`` after the grace period (relay/shutdown.py)."""
    deadline = HardDeadline(settings.shutdown_grace_s + SHUTDOWN_CLOSE_S)
    deadline.start()
    try:
        await relay.stop()
    finally:
        deadline.cancel()
    _ABANDONED.extend(relay.abandoned_steps)


def _load(command: str, loader: Callable[[], T]) -> T:
    """Settings for ``command``, or ``SystemExit(2)`` after one line on stderr naming every
    variable to fix (logging is not set up yet: its format is one of the settings)."""
    try:
        return loader()
    except ConfigurationError as exc:
        print(f"{command}: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def _cmd_run(_: argparse.Namespace) -> int:
    settings = _load("relay run", load_service_settings)  # the OTEL_* variables checked too
    tracing = load_tracing_config()
    setup_logging(settings.log_level, settings.log_format)
    code = eventloop.run(_serve(settings, tracing))
    if _ABANDONED:
        # Clients whose close was abandoned (a dead broker) would complain from their
        # finalizers while the interpreter tears down; everything that matters is done.
        logging.shutdown()
        os._exit(code)
    return code


def _cmd_dev(args: argparse.Namespace) -> int:
    from relay.devtools import dev

    settings = _load("relay dev", load_settings)
    tracing = _load("relay dev", load_tracing_config)
    setup_logging(settings.log_level, settings.log_format)
    return dev.run(args, settings, tracing)


def _cmd_submit(args: argparse.Namespace) -> int:
    from relay.devtools import submit

    return submit.run(args, _load("relay submit", load_settings))


def _cmd_sim(args: argparse.Namespace) -> int:
    from relay.sim import cli as sim_cli

    setup_logging("INFO", "auto")
    return sim_cli.run(args)


def _cmd_webhooks_replay(args: argparse.Namespace) -> int:
    if not (args.all or args.endpoint or args.key):
        print("relay webhooks replay: give --endpoint, --key or --all", file=sys.stderr)
        return 2
    settings = _load("relay webhooks replay", load_settings)
    setup_logging(settings.log_level, settings.log_format)
    quiet_kafka_client()
    from relay.webhooks.replay import ReplayCounts, replay_dead_letters

    async def replay() -> ReplayCounts:
        # Redis first: a replay set up against the wrong Redis fails now, not after reading
        # the topic, and never reports deliveries scheduled where no relay will see them.
        redis = redis_client(settings, max_connections=1)
        try:
            await redis.ping()
        finally:
            await redis.aclose()
        return await replay_dead_letters(settings, endpoint=args.endpoint, key=args.key)

    try:
        counts = asyncio.run(replay())
    except (KafkaError, RedisError, StartupError) as exc:
        failure = describe_start_failure(exc, settings)
        print(f"relay webhooks replay: {failure}", file=sys.stderr)
        return failure.exit_code
    print(
        f"replayed webhook dead letters from {settings.webhook_dead_letter_topic} into Redis at "
        f"{redis_address(settings)}: {counts.summary()}"
    )
    return 0


def _cmd_webhooks_status(args: argparse.Namespace) -> int:
    settings = _load("relay webhooks status", load_settings)
    setup_logging(settings.log_level, settings.log_format)
    quiet_kafka_client()
    from relay.webhooks.lookup import format_text, lookup_cli

    try:
        doc = asyncio.run(lookup_cli(settings, args.key, dead_letters=not args.no_dead_letters))
    except (KafkaError, RedisError, StartupError) as exc:
        failure = describe_start_failure(exc, settings)
        print(f"relay webhooks status: {failure}", file=sys.stderr)
        return failure.exit_code
    print(json.dumps(doc, indent=2) if args.json else format_text(doc))
    return 0 if doc["deliveries"] or doc.get("dead_letters", {}).get("letters") else 1


def _cmd_reconcile(args: argparse.Namespace) -> int:
    """``relay reconcile``: 0 agree, 1 drift, 2 usage or configuration, 3 unreachable."""
    settings = _load("relay reconcile", load_settings)
    setup_logging(settings.log_level, settings.log_format)
    quiet_kafka_client()
    from relay.spend.reconcile_run import parse_since, reconcile

    if not settings.mindvideo_api_key.get_secret_value().strip():
        print(
            "relay reconcile: RELAY_MINDVIDEO_API_KEY is empty: set the relay's key",
            file=sys.stderr,
        )
        return 2
    try:
        since_s = parse_since(args.since, time.time())
    except ValueError:
        print(
            f"relay reconcile: --since {args.since!r}: give 30m, 24h, 7d or an RFC 3339 time",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(
            reconcile(
                settings,
                since_s=since_s,
                metrics_urls=args.metrics_url or [],
                concurrency=args.concurrency,
                show=args.show,
            )
        )
    except (KafkaError, RedisError) as exc:
        print(f"relay reconcile: {describe_start_failure(exc, settings)}", file=sys.stderr)
        return 3
    except (OSError, RelayError, aiohttp.ClientError) as exc:
        print(f"relay reconcile: could not finish: {_one_line(exc, settings)}", file=sys.stderr)
        return 3


def _one_line(exc: BaseException, settings: RelaySettings) -> str:
    """An error as one line: its class when its text is empty, whitespace collapsed, and the
    variable to check when it is a failure to reach MindVideo (the client's ``RetryableError``
    carries the aiohttp error as its cause: a DNS failure, a refused connection)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    network = aiohttp.ClientError | TimeoutError
    if isinstance(exc, network) or isinstance(exc.__cause__, network):
        text += f"; check RELAY_MINDVIDEO_BASE_URL ({settings.mindvideo_base_url})"
    return text[:500]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _add_reconcile_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    reconcile = commands.add_parser(
        "reconcile",
        help="compare what MindVideo says about the tasks the relay submitted with the relay's "
        "records; exit 1 on drift",
    )
    reconcile.add_argument(
        "--since", default="24h", help="window start: 30m, 24h, 7d or an RFC 3339 time (24h)"
    )
    reconcile.add_argument(
        "--metrics-url",
        action="append",
        help="also compare the cost counters of a relay's /metrics (repeatable)",
    )
    reconcile.add_argument(
        "--concurrency", type=_positive, default=16, help="MindVideo lookups at once (16)"
    )
    reconcile.add_argument(
        "--show", type=_positive, default=20, help="disagreeing tasks listed (20)"
    )
    reconcile.set_defaults(func=_cmd_reconcile)
    _exit_codes(reconcile, "reconcile")


def _add_webhook_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    webhooks = commands.add_parser("webhooks", help="operate webhook deliveries")
    actions = webhooks.add_subparsers(dest="webhooks_command", required=True)
    replay = actions.add_parser(
        "replay",
        help="re-deliver dead-lettered webhooks (read from RELAY_WEBHOOK_DEAD_LETTER_TOPIC); "
        "a running relay delivers them",
    )
    replay.add_argument("--endpoint", help="only deliveries to this endpoint URL")
    replay.add_argument("--key", help="only deliveries of this idempotency key")
    replay.add_argument("--all", action="store_true", help="every dead-lettered delivery")
    replay.set_defaults(func=_cmd_webhooks_replay)
    _exit_codes(replay, "replay")
    status = actions.add_parser(
        "status",
        help="every attempt of a key's webhooks: time, origin, status or error, latency, "
        "next due time (from Redis and RELAY_WEBHOOK_DEAD_LETTER_TOPIC); exit 1 if none",
    )
    status.add_argument("--key", required=True, help="the idempotency key")
    status.add_argument("--json", action="store_true", help="print the JSON document")
    status.add_argument(
        "--no-dead-letters", action="store_true", help="skip reading the dead-letter topic"
    )
    status.set_defaults(func=_cmd_webhooks_status)
    _exit_codes(status, "status")


EXIT_CODES = {
    "run": "0 stopped on SIGTERM/SIGINT, 1 a dependency unreachable at start or the consume "
    "loop failed, 2 configuration (one line names each RELAY_* variable to fix), 4 the stop "
    "overran RELAY_SHUTDOWN_GRACE_S + 10 s and the process ended itself",
    "dev": "0 stopped with Ctrl-C, 1 a service could not start or a child process died (its "
    "last log lines are printed), 2 configuration or a busy port",
    "submit": "0 produced (or, with --wait, succeeded), 1 the request did not succeed or Kafka "
    "was unreachable, 2 usage, configuration or an input the model's schema refuses, "
    "3 --wait timed out",
    "reconcile": "0 MindVideo and the relay agree, 1 drift found, 2 usage or configuration, "
    "3 Kafka, Redis or MindVideo could not be reached",
    "replay": "0 done, 1 Kafka or Redis unreachable, 2 usage or configuration",
    "status": "0 attempts found, 1 none found or a dependency unreachable, 2 usage or "
    "configuration",
}


def _exit_codes(parser: argparse.ArgumentParser, command: str) -> None:
    parser.epilog = f"exit codes: {EXIT_CODES[command]}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="Run MindVideo generation tasks from a Kafka topic."
    )
    parser.add_argument("--version", action="version", version=f"mindvideo-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run the relay service (configured by RELAY_* environment variables)"
    )
    run.set_defaults(func=_cmd_run)
    _exit_codes(run, "run")
    sim = commands.add_parser("sim", help="run a MindVideo simulator for local use and tests")
    from relay.sim import cli as sim_cli

    sim_cli.add_arguments(sim)
    sim.set_defaults(func=_cmd_sim)
    from relay.devtools import dev, submit

    dev_parser = commands.add_parser(
        "dev", help="run the whole pipeline on embedded defaults (broker, Redis, simulator, relay)"
    )
    dev.add_arguments(dev_parser)
    _exit_codes(dev_parser, "dev")
    dev_parser.set_defaults(func=_cmd_dev)
    submit_parser = commands.add_parser(
        "submit", help="produce one generation request (and --wait for its result)"
    )
    submit.add_arguments(submit_parser)
    if not submit_parser.epilog:
        _exit_codes(submit_parser, "submit")
    submit_parser.set_defaults(func=_cmd_submit)
    _add_webhook_commands(commands)
    _add_reconcile_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SystemExit as exc:  # _load's configuration error, already said on stderr
        return exc.code if isinstance(exc.code, int) else 2
    return code


if __name__ == "__main__":
    sys.exit(main())
