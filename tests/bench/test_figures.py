"""The benchmark's arithmetic (issues 15 and 17): quantiles from histogram snapshots, Redis key
kinds and command counts, and the table rows an operator reads. No service needed."""

from __future__ import annotations

from typing import Any

import pytest

from bench.redisstats import RedisSnapshot, command_calls, key_kind, per_request
from bench.relaystats import histogram_buckets, quantile
from bench.report import markdown
from relay.metrics import RelayMetrics

INF = float("inf")


def test_quantile_of_the_observations_between_two_snapshots() -> None:
    before = [(0.01, 50.0), (0.1, 50.0), (1.0, 50.0), (INF, 50.0)]
    # Between the snapshots: 90 observations up to 10 ms, 10 between 100 ms and 1 s.
    after = [(0.01, 140.0), (0.1, 140.0), (1.0, 150.0), (INF, 150.0)]
    assert quantile(before, after, 0.5) == pytest.approx(0.01 * 50 / 90)
    # The 99th of 100 is the 9th of the 10 in (0.1, 1], interpolated inside that bucket.
    assert quantile(before, after, 0.99) == pytest.approx(0.1 + 0.9 * (99 - 90) / 10)
    assert quantile(after, after, 0.99) is None  # nothing observed in between
    assert quantile([], [], 0.99) is None  # no such histogram
    stuck = [(0.01, 0.0), (1.0, 0.0), (INF, 3.0)]
    assert quantile([], stuck, 0.99) == 1.0  # in +Inf: the highest finite bound


def test_histogram_buckets_read_from_what_the_relay_exports() -> None:
    metrics = RelayMetrics()
    for lag_s in (0.0005, 0.003, 0.003, 0.2):
        metrics.event_loop_lag.observe(lag_s)
    buckets = histogram_buckets(metrics.render().decode(), "relay_event_loop_lag_seconds")
    assert dict(buckets)[0.001] == 1
    assert dict(buckets)[0.005] == 3
    assert buckets[-1] == (INF, 4)
    assert quantile([], buckets, 0.99) == pytest.approx(0.1 + 0.15 * (3.96 - 3))
    assert histogram_buckets(metrics.render().decode(), "relay_nothing_seconds") == []


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("g:idem:{order-8812}", "idempotency record"),
        ("g:{g:webhooks}:done:ab12", "webhook done marker"),
        ("g:{g:webhooks:3}:done:ab12", "webhook done marker"),
        ("g:{g:webhooks}:d:ab12", "webhook delivery"),
        ("g:{g:webhooks}:due", "webhook due set"),
        ("g:budget:{global}:day:20261130", "other: :budget:*:day:*"),
    ],
)
def test_keys_are_sorted_into_kinds_by_their_names(key: str, kind: str) -> None:
    assert key_kind(key, "g") == kind


def test_commands_per_request_leave_out_the_bench_own() -> None:
    before = RedisSnapshot(1000, 10, {"evalsha": 10, "hset": 10, "info": 5})
    after = RedisSnapshot(
        5000, 10, {"evalsha": 50, "hset": 30, "info": 9, "memory|usage": 7, "get": 20}
    )
    calls = command_calls(before, after)
    assert calls == {"evalsha": 40, "hset": 20, "get": 20}
    figures = per_request(calls, 20)
    assert figures["commands_per_request"] == 4.0
    assert figures["script_calls_per_request"] == 2.0
    assert list(figures["top_per_request"]) == ["evalsha", "get", "hset"]
    assert after.stored_memory - before.stored_memory == 4000


def _results() -> dict[str, Any]:
    return {
        "mode": "full",
        "started_at": "2026-11-30 12:00 UTC",
        "runs": 3,
        "elapsed_s": 200.0,
        "errors": [],
        "notes": ["load average above 2.5 the whole time"],
        "load_average_end": "3.10 2.90 2.50",
        "machine": {
            "git_commit": "abc1234",
            "cores": 2,
            "ram_gib": 8.0,
            "cpu_model": "x",
            "os": "Linux",
            "python": "3.11",
            "packages": {},
            "load_average": "2.00 2.10 2.20",
        },
        "throughput_1": {
            "relays": 1,
            "rps": 200.0,
            "minimal_rps": 600.0,
            "overhead_ratio": 0.333,
            "cpu_ms_per_request": 3.0,
            "minimal_cpu_ms_per_request": 1.2,
            "cpu_ratio": 2.5,
            "loop_lag_p99_ms": 120.0,
        },
        "latency": {
            "rate_per_s": 100.0,
            "relay_to_kafka": {"p50_ms": 40.0, "p99_ms": 348.0},
            "relay_to_send": {"p50_ms": 30.0, "p99_ms": 300.0},
            "relay_to_webhook": {"p50_ms": 200.0, "p99_ms": 909.0},
            "naive_to_result": {"p50_ms": 250.0, "p99_ms": 500.0},
            "naive_to_webhook": {"p50_ms": 251.0, "p99_ms": 501.0},
            "kafka_speedup_p99": 1.44,
            "webhook_speedup_p99": 0.55,
            "loop_lag_p99_ms": 12.5,
        },
        "state": {
            "bytes_retained_per_request": 2050.0,
            "commands_per_request": 32.2,
            "script_calls_per_request": 7.0,
            "top_per_request": {"evalsha": 7.0, "hset": 7.0},
            "key_kinds": {
                "idempotency record": {
                    "keys_per_request": 1.0,
                    "bytes_per_key": 1556.0,
                    "bytes_per_request": 1556.0,
                }
            },
        },
    }


def test_the_table_shows_the_new_figures_with_their_targets() -> None:
    table = markdown(_results())
    assert "| CPU ratio (relay ÷ minimal loop, per request) | 2.50 | ≤ 1.4 |" in table
    assert "| Relay CPU per request, 1 relay (ms) | 3.000 |" in table
    assert "| Minimal loop CPU per request (ms) | 1.200 |" in table
    assert "| Event-loop lag p99 at full load, 1 relay (ms) | 120 |" in table
    assert "| Event-loop lag p99 at 100 req/s (ms) | 12.5 |" in table
    assert "to webhook (naive ÷ relay) | 0.55× | ≥ 5× |" in table
    assert "to Kafka (naive ÷ relay) | 1.44× | ≥ 5× |" in table
    assert "| Added latency to webhook, p50 / p99 (ms) | 200 / 909 | p99 ≤ 100 |" in table
    assert (
        "| Redis bytes retained per request (INFO used_memory less client buffers) | 2,050 "
        "| ≤ 300 |"
    ) in table
    assert (
        "| of which idempotency record (MEMORY USAGE, bytes per request) "
        "| 1,556 (1 key/request × 1,556 B) |"
    ) in table
    assert "32.2 (7 script calls; evalsha 7, hset 7)" in table
    assert "at start 2.00 2.10 2.20, at the end 3.10 2.90 2.50" in table
    assert "- load average above 2.5 the whole time" in table
