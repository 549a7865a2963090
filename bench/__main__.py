"""``python -m bench [--quick] [--runs N] [--only PHASE]``: run the benchmark, print the table.

Everything it starts (broker, Redis, simulator, receiver, relays) runs on 127.0.0.1 on free ports
in a temporary directory, and is stopped at the end, on an error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.concurrency import ConcurrencyConfig, in_flight
from bench.latency import LatencyConfig, added_latency
from bench.machine import load_average, machine_info
from bench.otlp_sink import TraceSinkProcess
from bench.report import markdown, write
from bench.stack import Stack
from bench.throughput import ThroughputConfig, relay_throughput

# "state" alone: the 1-relay throughput runs with the Redis figures, without the minimal loop and
# the 2-relay runs (the throughput phase measures the Redis figures too).
PHASES = ("throughput", "state", "latency", "concurrency")
DEFAULT_LATENCY_RATE_PER_S = 100.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--runs", type=int, default=None, help="runs per figure (default 3; quick 1)")
    p.add_argument("--quick", action="store_true", help="a smoke run: small counts, one run")
    p.add_argument("--only", action="append", choices=PHASES, help="run only this phase")
    p.add_argument("--requests", type=int, help="requests per throughput run (default 5000)")
    p.add_argument("--tasks", type=int, help="tasks held in flight at once (default 10000)")
    p.add_argument("--latency-rate", type=float, help="steady load (default: half of throughput)")
    p.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="RELAY_X=VALUE",
        help="a setting for every relay process (repeatable); default: the relay's defaults",
    )
    p.add_argument(
        "--broker",
        choices=["noida", "tansu"],
        default="noida",
        help="embedded broker (default noida, which supports the idempotent producer; its empty "
        "fetches return at once, so idle consumers spin: use tansu for the idle-CPU figures)",
    )
    p.add_argument(
        "--tracing",
        action="store_true",
        help="relays trace every request (OTLP/HTTP to a local sink, the SDK's defaults); "
        "compare with a run without",
    )
    p.add_argument("--save-as", default="latest", help="results file name (default latest)")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and data afterwards")
    p.add_argument(
        "--note",
        action="append",
        default=[],
        help="a line printed under the table (repeatable), e.g. how busy the machine was",
    )
    return p.parse_args(argv)


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


async def _main(args: argparse.Namespace, results: dict[str, Any], workdir: Path) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    results["runs"] = runs
    phases = args.only or list(PHASES)
    tp = ThroughputConfig(
        requests=args.requests or (300 if quick else 5000),
        runs=runs,
        warmup=50 if quick else 200,
        timeout_s=60.0 if quick else 120.0,
    )
    stack = Stack(workdir, args.broker)
    for item in args.relay_env:
        name, _, value = item.partition("=")
        if not name.startswith("RELAY_"):
            raise SystemExit(f"--relay-env takes RELAY_NAME=VALUE, not {item!r}")
        stack.relay_env[name] = value
    sink: TraceSinkProcess | None = None
    try:
        if args.tracing:
            sink = await TraceSinkProcess.start(workdir)
            stack.relay_env.update(sink.relay_env())
            results["tracing"] = {"exporter": "otlp/http to a local sink"}
        results["relay_env"] = dict(stack.relay_env)
        _say(f"starting the broker and Redis in {workdir}")
        await stack.start_base()
        results["machine"] = machine_info(stack.redis_binary)
        results["machine"]["broker"] = args.broker
        if "throughput" in phases or "state" in phases:
            full = "throughput" in phases
            then = ", then the minimal loop" if full else " (Redis state figures)"
            _say(f"throughput, 1 relay: {runs} x {tp.requests} requests{then}")
            tp1 = await relay_throughput(stack, 1, tp, with_minimal=full, with_state=True)
            results["state"] = tp1.pop("state")
            results["throughput_1"] = tp1
            _say(f"  {tp1}")
            _say(f"  Redis: {results['state']}")
        if "throughput" in phases:
            _say(f"throughput, 2 relays: {runs} x {tp.requests} requests")
            results["throughput_2"] = await relay_throughput(
                stack, 2, tp, with_minimal=False, with_state=False
            )
            _say(f"  {results['throughput_2']}")
        if "latency" in phases:
            rate = args.latency_rate
            if rate is None:
                measured = results.get("throughput_1", {}).get("rps")
                rate = measured / 2 if measured else DEFAULT_LATENCY_RATE_PER_S
            lat = LatencyConfig(
                rate_per_s=rate,
                duration_s=3.0 if quick else 15.0,
                runs=runs,
                warmup=20 if quick else 100,
                timeout_s=120.0,
            )
            _say(f"added latency at {rate:.0f} requests/s for {lat.duration_s:g} s x {runs}")
            results["latency"] = await added_latency(stack, lat)
            _say(f"  {results['latency']}")
        if "concurrency" in phases:
            conc = ConcurrencyConfig(
                tasks=args.tasks or (1000 if quick else 10_000),
                windows=1 if quick else 3,
                window_s=2.0 if quick else 5.0,
                reach_timeout_s=60.0 if quick else 180.0,
                finish_timeout_s=120.0 if quick else 300.0,
            )
            _say(f"{conc.tasks} tasks in flight at once")
            results["concurrency"] = await in_flight(stack, conc)
            _say(f"  {results['concurrency']}")
    finally:
        results["load_average_end"] = load_average()
        _say("stopping every process")
        stack.close()
        if sink is not None:
            results["tracing"].update(await sink.stats())
            sink.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    started = time.monotonic()
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "errors": [],
        "notes": list(args.note),
    }
    code = 0
    try:
        asyncio.run(_main(args, results, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _say("interrupted; everything was stopped")
        results["errors"].append("interrupted before the end: the figures are partial")
        code = 130
    except Exception as exc:  # noqa: BLE001 (reported with the partial results, then exit 1)
        traceback.print_exc()
        results["errors"].append(f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        if args.keep_workdir or code:
            _say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    if "machine" not in results:
        return code or 1
    json_path, md_path = write(results, args.save_as)
    print(markdown(results))
    _say(f"wrote {json_path} and {md_path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
