"""The ``relay`` console entry point: ``run`` (the service) and ``sim`` (a MindVideo simulator)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pydantic import ValidationError

from relay import __version__, eventloop
from relay.logs import setup_logging
from relay.service import Relay
from relay.settings import RelaySettings

log = logging.getLogger("relay")


async def _serve(settings: RelaySettings) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a fatal error (exit 1), a signal during start-up
    included: a pod being deleted while Kafka is unreachable must not wait for start to end."""
    relay = Relay(settings)
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
        await relay.stop()
        return 0
    if starting.exception() is not None:
        stopper.cancel()
        log.error("the relay could not start: %s", starting.exception())
        await relay.stop()
        return 1
    waiter = asyncio.create_task(relay.wait())
    done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    failed = waiter in done and waiter.exception() is not None
    if failed:
        log.error("the consume loop failed", exc_info=waiter.exception())
    stopper.cancel()
    await relay.stop()
    return 1 if failed else 0


def _cmd_run(_: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 2
    setup_logging(settings.log_level, settings.log_format)
    return eventloop.run(_serve(settings))


def _settings() -> RelaySettings | None:
    try:
        return RelaySettings()
    except ValidationError as exc:
        print(f"relay: invalid configuration:\n{exc}", file=sys.stderr)
        return None


def _cmd_dev(args: argparse.Namespace) -> int:
    from relay.devtools import dev

    settings = _settings()
    if settings is None:
        return 2
    setup_logging(settings.log_level, settings.log_format)
    return dev.run(args, settings)


def _cmd_submit(args: argparse.Namespace) -> int:
    from relay.devtools import submit

    settings = _settings()
    return 2 if settings is None else submit.run(args, settings)


def _cmd_sim(args: argparse.Namespace) -> int:
    from relay.sim import cli as sim_cli

    setup_logging("INFO", "auto")
    return sim_cli.run(args)


def _cmd_webhooks_replay(args: argparse.Namespace) -> int:
    if not (args.all or args.endpoint or args.key):
        print("relay webhooks replay: give --endpoint, --key or --all", file=sys.stderr)
        return 2
    try:
        settings = RelaySettings()
    except ValidationError as exc:
        print(f"relay: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    from relay.exceptions import ConnectivityError
    from relay.webhooks.replay import replay_dead_letters

    try:
        counts = asyncio.run(replay_dead_letters(settings, endpoint=args.endpoint, key=args.key))
    except ConnectivityError as exc:
        print(f"relay webhooks replay: {exc}", file=sys.stderr)
        return 1
    print(
        f"replayed webhook dead letters from {settings.webhook_dead_letter_topic}: "
        f"{counts.summary()}"
    )
    return 0


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
    sim = commands.add_parser("sim", help="run a MindVideo simulator for local use and tests")
    from relay.sim import cli as sim_cli

    sim_cli.add_arguments(sim)
    sim.set_defaults(func=_cmd_sim)
    from relay.devtools import dev, submit

    dev_parser = commands.add_parser(
        "dev", help="run the whole pipeline on embedded defaults (broker, Redis, simulator, relay)"
    )
    dev.add_arguments(dev_parser)
    dev_parser.set_defaults(func=_cmd_dev)
    submit_parser = commands.add_parser(
        "submit", help="produce one generation request (and --wait for its result)"
    )
    submit.add_arguments(submit_parser)
    submit_parser.set_defaults(func=_cmd_submit)
    _add_webhook_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
