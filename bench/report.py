"""The results as a Markdown table and as JSON, in ``bench/results/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _pair(block: dict[str, Any] | None) -> str:
    if not block:
        return "-"
    return f"{block['p50_ms']:g} / {block['p99_ms']:g}"


Row = tuple[str, str, str]


def _throughput_rows(tp1: dict[str, Any] | None, tp2: dict[str, Any] | None) -> list[Row]:
    out: list[Row] = []
    if tp1:
        out.append(
            ("Throughput, 1 relay process (requests/s, end to end)", f"{tp1['rps']:g}", "≥ 1000")
        )
    if tp2:
        out.append(
            ("Throughput, 2 relay processes in one group (requests/s)", f"{tp2['rps']:g}", "")
        )
    if tp1 and "minimal_rps" in tp1:
        out.append(
            ("Minimal asyncio loop, same HTTP work (requests/s)", f"{tp1['minimal_rps']:g}", "")
        )
        out.append(
            ("Overhead ratio (1 relay ÷ minimal loop)", f"{tp1['overhead_ratio']:.2f}", "≥ 0.7")
        )
    if tp1 and "cpu_ms_per_request" in tp1:
        out.append(("Relay CPU per request, 1 relay (ms)", f"{tp1['cpu_ms_per_request']:.3f}", ""))
    if tp1 and "minimal_cpu_ms_per_request" in tp1:
        out.append(
            (
                "Minimal loop CPU per request (ms)",
                f"{tp1['minimal_cpu_ms_per_request']:.3f}",
                "",
            )
        )
        out.append(
            ("CPU ratio (relay ÷ minimal loop, per request)", f"{tp1['cpu_ratio']:.2f}", "≤ 1.4")
        )
    if tp2 and "cpu_ms_per_request" in tp2:
        out.append(
            (
                "Relay CPU per request, 2 relays (ms, both processes)",
                f"{tp2['cpu_ms_per_request']:.3f}",
                "",
            )
        )
    if tp1 and "loop_lag_p99_ms" in tp1:
        out.append(
            ("Event-loop lag p99 at full load, 1 relay (ms)", f"{tp1['loop_lag_p99_ms']:g}", "")
        )
    return out


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _latency_rows(lat: dict[str, Any] | None) -> list[Row]:
    if not lat:
        return []
    at = f" at {lat['rate_per_s']:g} req/s"
    out: list[Row] = [
        (f"Added latency to Kafka, p50 / p99 (ms){at}", _pair(lat["relay_to_kafka"]), "p99 ≤ 50")
    ]
    if "relay_to_send" in lat:
        out.append(
            ("of which terminal → relay's produce call (ms)", _pair(lat["relay_to_send"]), "")
        )
    out.append(
        ("Added latency to webhook, p50 / p99 (ms)", _pair(lat["relay_to_webhook"]), "p99 ≤ 100")
    )
    out.append(("Naive 1 s poller: to result, p50 / p99 (ms)", _pair(lat["naive_to_result"]), ""))
    out.append(("Naive 1 s poller: to webhook, p50 / p99 (ms)", _pair(lat["naive_to_webhook"]), ""))
    if "kafka_speedup_p99" in lat:
        out.append(
            (
                "Relay vs naive poller at p99, to Kafka (naive ÷ relay)",
                _times(lat["kafka_speedup_p99"]),
                "≥ 5×",
            )
        )
        out.append(
            (
                "Relay vs naive poller at p99, to webhook (naive ÷ relay)",
                _times(lat["webhook_speedup_p99"]),
                "≥ 5×",
            )
        )
    if "loop_lag_p99_ms" in lat:
        out.append((f"Event-loop lag p99{at} (ms)", f"{lat['loop_lag_p99_ms']:g}", ""))
    return out


def _state_rows(state: dict[str, Any] | None) -> list[Row]:
    if not state:
        return []
    out: list[Row] = []
    if "bytes_retained_per_request" in state:
        out.append(
            (
                "Redis bytes retained per request (INFO used_memory less client buffers)",
                f"{state['bytes_retained_per_request']:,.0f}",
                "≤ 300",
            )
        )
    for kind, k in state.get("key_kinds", {}).items():
        out.append(
            (
                f"of which {kind} (MEMORY USAGE, bytes per request)",
                f"{k['bytes_per_request']:,.0f} ({k['keys_per_request']:g} key/request × "
                f"{k['bytes_per_key']:,.0f} B)",
                "",
            )
        )
    if "commands_per_request" in state:
        # Most first (the JSON file stores them sorted by name).
        ranked = sorted(state["top_per_request"].items(), key=lambda item: (-item[1], item[0]))
        top = ", ".join(f"{name} {count:g}" for name, count in ranked[:5])
        out.append(
            (
                "Redis commands per request (INFO commandstats)",
                f"{state['commands_per_request']:g} ({state['script_calls_per_request']:g} "
                f"script calls; {top})",
                "",
            )
        )
    return out


def _concurrency_rows(conc: dict[str, Any] | None) -> list[Row]:
    if not conc:
        return []
    n = conc["tasks"]
    out: list[Row] = [
        (
            f"In flight at once on MindVideo (of {n:,})",
            f"{conc['running_on_sim_at_once']:,}",
            f"{n:,}",
        ),
        (f"Relay RSS with {n:,} in flight (MiB)", f"{conc['rss_mib']:g}", "≤ 300 MB"),
        ("Relay CPU while waiting (share of one core)", f"{conc['cpu_share_idle']:.1%}", ""),
    ]
    if "cpu_share_no_tasks" in conc:
        out.append(
            (
                "Relay CPU with no task at all (share of one core)",
                f"{conc['cpu_share_no_tasks']:.1%}",
                "",
            )
        )
    out.append(("Relay open file descriptors", str(conc["open_fds"]), ""))
    out.append(("Event streams open on MindVideo", str(conc["streams_open_on_sim"]), ""))
    out.append(
        (
            "Tasks lost (no result) after cancelling all",
            f"{conc['lost']:,} (results in {conc['drain_s']:g} s)",
            "0",
        )
    )
    return out


def _spend_rows(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for name in ("throughput_1", "throughput_2"):
        block = results.get(name)
        if block and "spend" in block:
            s = block["spend"]
            label = f"Spend, {block['relays']} relay(s): estimated / actual USD, relay vs ledger"
            value = (
                f"{s['relay_estimated_usd']:.2f} vs {s['ledger_estimated_usd']:.2f} / "
                f"{s['relay_actual_usd']:.2f} vs {s['ledger_actual_usd']:.2f} "
                f"({'agree' if s['agree'] else 'DISAGREE'})"
            )
            out.append((label, value, "agree to the cent"))
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    return [
        *_throughput_rows(results.get("throughput_1"), results.get("throughput_2")),
        *_latency_rows(results.get("latency")),
        *_state_rows(results.get("state")),
        *_concurrency_rows(results.get("concurrency")),
        *_spend_rows(results),
    ]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# mindvideo-relay benchmark ({results['mode']})",
        "",
        f"{results['started_at']}, commit {m['git_commit']}; each figure the median of "
        f"{results['runs']} run(s). Took {results['elapsed_s']:g} s.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows(results)),
        "",
        f"Machine: {m['cores']} cores, {m['ram_gib']:g} GiB RAM, {m['cpu_model']}, {m['os']}, "
        f"Python {m['python']}; broker {m.get('broker', 'noida')}; "
        f"load average (1, 5, 15 min) at start {m.get('load_average', '-')}, "
        f"at the end {results.get('load_average_end', '-')}.",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
    ]
    tracing = results.get("tracing")
    if tracing:
        lines.append(
            f"\nTracing on (`--tracing`): every request traced, exported over OTLP/HTTP to a local "
            f"sink: {tracing.get('exports', 0)} exports, {tracing.get('bytes', 0) / 1e6:.1f} MB."
        )
    for name in ("throughput_1", "throughput_2"):
        for note in (results.get(name) or {}).get("incomplete", []):
            lines.append(f"\nIncomplete {name} {note}: counted as webhooks ÷ timeout.")
    for note in (results.get("state") or {}).get("not_quiet", []):
        lines.append(f"\nRedis figures taken with the relay {note}.")
    if results.get("notes"):
        lines += ["", "Notes:", *(f"- {n}" for n in results["notes"])]
    if results.get("errors"):
        lines += ["", "Errors:", *(f"- {e}" for e in results["errors"])]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], name: str, directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{name}.json"
    md_path = directory / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path
