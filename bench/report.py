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


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    tp1, tp2 = results.get("throughput_1"), results.get("throughput_2")
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
    lat = results.get("latency")
    if lat:
        at = f" at {lat['rate_per_s']:g} req/s"
        out.append(
            (
                f"Added latency to Kafka, p50 / p99 (ms){at}",
                _pair(lat["relay_to_kafka"]),
                "p99 ≤ 50",
            )
        )
        if "relay_to_send" in lat:
            out.append(
                ("of which terminal → relay's produce call (ms)", _pair(lat["relay_to_send"]), "")
            )
        out.append(("Added latency to webhook, p50 / p99 (ms)", _pair(lat["relay_to_webhook"]), ""))
        out.append(
            ("Naive 1 s poller: to result, p50 / p99 (ms)", _pair(lat["naive_to_result"]), "")
        )
        out.append(
            ("Naive 1 s poller: to webhook, p50 / p99 (ms)", _pair(lat["naive_to_webhook"]), "")
        )
    conc = results.get("concurrency")
    if conc:
        n = conc["tasks"]
        out.append(
            (
                f"In flight at once on MindVideo (of {n:,})",
                f"{conc['running_on_sim_at_once']:,}",
                f"{n:,}",
            )
        )
        out.append((f"Relay RSS with {n:,} in flight (MiB)", f"{conc['rss_mib']:g}", "≤ 300 MB"))
        out.append(
            ("Relay CPU while waiting (share of one core)", f"{conc['cpu_share_idle']:.1%}", "")
        )
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
        f"load average at start {m.get('load_average', '-')}.",
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
