"""The pieces behind a visible Kafka outage and a bounded stop, without services (issue 16)."""

from __future__ import annotations

import logging
import subprocess
import sys

from relay.kafkahealth import KafkaHealth
from relay.logs import ReadableFormatter, RepeatFilter
from relay.shutdown import EXIT_STOP_DEADLINE


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_kafka_health_goes_down_after_the_timeout_and_comes_back() -> None:
    clock, changes = Clock(), list[bool]()
    health = KafkaHealth(5.0, bootstrap="b:9092", on_change=changes.append, clock=clock)
    clock.now += 4.9
    assert health.problem() is None
    clock.now += 0.2
    problem = health.problem()
    assert problem is not None
    assert "RELAY_KAFKA_BOOTSTRAP_SERVERS=b:9092" in problem
    assert changes == [False]
    assert health.problem() is not None
    assert changes == [False], "reported once per change"
    health.ok()
    assert health.problem() is None
    assert changes == [False, True]


def _record(name: str, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("x",), None)


def test_a_client_librarys_repeated_line_is_let_through_once_per_interval_with_a_count() -> None:
    clock = Clock()
    gate = RepeatFilter(interval_s=30.0, clock=clock)
    assert gate.filter(_record("aiokafka.conn", "Unable connect to %s"))
    held = [gate.filter(_record("aiokafka.conn", "Unable connect to %s")) for _ in range(50)]
    assert not any(held)
    assert gate.filter(_record("relay.service", "Unable connect to %s")), "our own lines pass"
    clock.now += 31
    again = _record("aiokafka.conn", "Unable connect to %s")
    assert gate.filter(again)
    assert again.repeated == 50  # type: ignore[attr-defined]


def test_text_logs_cannot_be_forged_by_a_producer_string() -> None:
    record = logging.LogRecord(
        "relay", logging.INFO, __file__, 1, "bad key %s", ("a\n12:00:00 ERROR forged\x1b[2J",), None
    )
    record.idempotency_key = "k\r\nINFO forged"
    line = ReadableFormatter().format(record)
    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert "a\\n12:00:00 ERROR forged" in line
    assert "k\\r\\nINFO forged" in line


def test_the_hard_deadline_ends_a_stuck_stop_with_its_exit_code() -> None:
    script = (
        "import time, logging; logging.basicConfig();"
        "from relay.shutdown import HardDeadline; HardDeadline(0.2).start(); time.sleep(30)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == EXIT_STOP_DEADLINE
    assert "did not finish within its deadline" in done.stderr
