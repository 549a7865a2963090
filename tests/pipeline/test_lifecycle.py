"""The lifecycle table: each error class leads where the docs say, and the docs show the table."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.errors import KafkaTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.exceptions import (
    FollowTimeout,
    OperatorError,
    RequestRejected,
    RetryableError,
    StreamUnavailable,
)
from relay.pipeline.lifecycle import TABLE, Action, ErrorKind, Stage, classify, outcome_for

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RetryableError("503", reason="http_5xx"), ErrorKind.OUTAGE),
        (StreamUnavailable("no stream"), ErrorKind.OUTAGE),
        (RedisConnectionError("down"), ErrorKind.OUTAGE),
        (KafkaTimeoutError(), ErrorKind.OUTAGE),
        (ConnectionResetError(), ErrorKind.OUTAGE),
        (TimeoutError(), ErrorKind.OUTAGE),
        (OperatorError(402, "no credit"), ErrorKind.CREDENTIALS),
        (RequestRejected("task_not_found", "gone"), ErrorKind.REFUSED),
        (FollowTimeout("6h"), ErrorKind.TIMED_OUT),
        (ValueError("corrupt"), ErrorKind.UNEXPECTED),
        (RecursionError(), ErrorKind.UNEXPECTED),
    ],
)
def test_errors_are_sorted_by_class(error: Exception, kind: ErrorKind) -> None:
    assert classify(error) is kind


def test_what_each_error_leads_to() -> None:
    lost = outcome_for(Stage.FOLLOW, RequestRejected("task_not_found", "gone"))
    assert (lost.action, lost.code) == (Action.FAIL, "task_lost")
    timed_out = outcome_for(Stage.FOLLOW, FollowTimeout("6h"))
    assert (timed_out.action, timed_out.code) == (Action.FAIL, "relay_follow_timeout")
    assert outcome_for(Stage.SUBMIT, RequestRejected("bad", "x")).action is Action.REJECT
    assert outcome_for(Stage.SUBMIT, OperatorError(401, "x")).action is Action.CLOSE_GATE
    assert outcome_for(Stage.FOLLOW, OperatorError(403, "x")).action is Action.CLOSE_GATE
    for stage in (Stage.REFUSE, Stage.CLAIM, Stage.SUBMIT, Stage.FOLLOW, Stage.PUBLISH):
        assert outcome_for(stage, RedisConnectionError("down")).action is Action.RETRY
        assert outcome_for(stage, ValueError("bug")).action is Action.DEAD_LETTER
    # An error a step does not declare is unexpected there, whatever its class.
    assert outcome_for(Stage.CLAIM, RequestRejected("x", "y")).action is Action.DEAD_LETTER
    assert outcome_for(Stage.DECODE, RedisConnectionError("?")).action is Action.DEAD_LETTER


def test_every_stage_has_a_row() -> None:
    assert set(TABLE) == set(Stage)


def _markdown() -> str:
    kinds = list(ErrorKind)
    lines = [
        "| stage | " + " | ".join(k.value.replace("_", " ") for k in kinds) + " |",
        "|---" * (len(kinds) + 1) + "|",
    ]
    for stage in Stage:
        if stage is Stage.DONE:
            continue
        cells = []
        for kind in kinds:
            outcome = TABLE[stage].get(kind)
            if outcome is None:
                cells.append(Action.DEAD_LETTER.value)
            else:
                code = f" `{outcome.code}`" if outcome.code else ""
                cells.append(outcome.action.value + code)
        lines.append(f"| `{stage.value}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_docs_show_the_table_as_it_is() -> None:
    table = _markdown()
    assert table in ARCHITECTURE.read_text(encoding="utf-8"), f"docs/architecture.md:\n{table}"
