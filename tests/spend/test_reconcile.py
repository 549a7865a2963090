"""Reconciliation's comparison (no service): agreement, each kind of drift, and ``--since``."""

from __future__ import annotations

import os

import pytest

from relay.cli import main
from relay.models import TaskSnapshot
from relay.spend.reconcile import IN_FLIGHT, RelayTask, compare, format_table
from relay.spend.reconcile_run import parse_since

MODEL = "apimart-doubao-seedance-4-0"


def _ours(task_id: str, status: str = "succeeded", **costs: float | None) -> RelayTask:
    estimate = costs.get("estimate", 0.0252)
    actual = costs.get("actual", 0.0252 if status == "succeeded" else 0.0)
    return RelayTask(task_id, f"key-{task_id}", MODEL, status, estimate, actual)


def _theirs(task_id: str, status: str = "succeeded", estimate: float = 0.0252) -> TaskSnapshot:
    actual = (
        None if status in ("queued", "processing") else (estimate if status == "succeeded" else 0.0)
    )
    return TaskSnapshot(task_id=task_id, status=status, cost_estimate=estimate, cost_actual=actual)


def test_records_that_match_mindvideo_agree() -> None:
    pairs = [
        (_ours("t1"), _theirs("t1")),
        (_ours("t2", "failed"), _theirs("t2", "failed")),
        (_ours("t3", IN_FLIGHT, actual=None), _theirs("t3", "processing")),
        (_ours("t4", IN_FLIGHT, actual=None), _theirs("t4", "succeeded")),  # not published yet
    ]
    result = compare(pairs)
    assert result.agrees
    tally = result.by_model[MODEL]
    assert (tally.tasks, tally.in_flight, tally.mismatched, tally.drift_usd) == (4, 2, 0, 0.0)
    assert "apimart-doubao-seedance-4-0       4          2           0" in "\n".join(
        format_table(result)
    )


def test_a_repriced_task_is_drift_in_usd() -> None:
    result = compare([(_ours("t1"), _theirs("t1", estimate=0.05)), (_ours("t2"), _theirs("t2"))])
    assert not result.agrees
    assert result.by_model[MODEL].drift_usd == pytest.approx(0.0248)
    [disagreement] = result.disagreements
    assert disagreement.problems == ("estimates differ", "actual costs differ")
    assert "t1" in disagreement.line()


def test_status_drift_and_a_task_mindvideo_forgot() -> None:
    result = compare(
        [
            (_ours("t1", "failed"), _theirs("t1", "succeeded")),
            (_ours("t2"), None),
        ]
    )
    assert [d.problems for d in result.disagreements] == [
        ("status differs", "actual costs differ"),
        ("MindVideo does not know the task",),
    ]
    assert result.by_model[MODEL].mismatched == 2


def test_a_task_the_relay_reported_lost_is_not_drift() -> None:
    lost = RelayTask("t1", "k", MODEL, "failed", 0.0252, None, error_code="task_lost")
    assert compare([(lost, None)]).agrees


def test_since_takes_durations_and_times() -> None:
    now = 1_795_633_200.0
    assert parse_since("24h", now) == now - 86400
    assert parse_since("30m", now) == now - 1800
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2026-11-25T18:00:00Z", now) == now - 3600
    for bad in ("yesterday", "24", "2026-11-25T18:00:00"):
        with pytest.raises(ValueError, match=r"."):
            parse_since(bad, now)


def test_reconcile_usage_errors_exit_2_before_any_io(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    assert main(["reconcile", "--since", "24h"]) == 2
    assert "RELAY_MINDVIDEO_API_KEY is empty" in capsys.readouterr().err
    monkeypatch.setenv("RELAY_MINDVIDEO_API_KEY", "mv_test_x")
    assert main(["reconcile", "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["reconcile", "--concurrency", "0"])
    assert usage.value.code == 2
