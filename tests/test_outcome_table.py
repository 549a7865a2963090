"""The README's outcome table ("What happens to each record") runs: every row whose outcome a
record alone decides is fed such a record, and the outcome and code are the table's. The rows
that need MindVideo or Redis name the integration test that covers them, so neither the table
nor the code can change without the other."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.metrics import RELAY_ERROR_CODES, error_code_label
from relay.models import ResultRecord
from relay.pipeline.decode import (
    DEAD_LETTER_REASONS,
    REJECTION_CODES,
    DeadLetter,
    Decoded,
    Rejected,
    Request,
    decode_request,
)

README = Path(__file__).resolve().parent.parent / "README.md"
LIMITS = {"max_record_bytes": 4096, "max_metadata_bytes": 64, "max_json_depth": 8}
MODEL = "apimart-doubao-seedance-4-0"
KEY = b"order-8812-cover"
VALID = {"model": MODEL, "input": {"prompt": "a panda"}}

# Rows a record alone cannot decide, and the integration tests that show their outcome.
NEEDS_SERVICES = {
    "valid, new key": "tests/pipeline/test_pipeline.py::test_requests_become_results_charged_once",
    "same key and payload again": (
        "tests/pipeline/test_pipeline.py::test_replayed_records_cost_nothing_and_publish_nothing"
    ),
    "same key, different model or input": (
        "tests/pipeline/test_pipeline.py::test_conflicting_payload_is_rejected_without_charge"
    ),
    "MindVideo answers a final 4xx": (
        "tests/pipeline/test_hostile_records.py::test_hostile_corpus_on_one_partition"
    ),
    "the submit is answered by something that is not MindVideo's API": (
        "tests/pipeline/test_wrong_base_url.py::"
        "test_a_static_site_at_the_base_url_closes_the_gate_until_the_probe_finds_mindvideo"
    ),
    "MindVideo stops knowing a task": (
        "tests/pipeline/test_lifecycle_outcomes.py::"
        "test_a_task_mindvideo_forgets_ends_in_one_result_and_its_partition_moves_on"
    ),
    "a task not terminal": (
        "tests/pipeline/test_processor.py::test_a_task_that_never_ends_fails_with_the_timeout_code"
    ),
    "a record-level rejection": (
        "tests/pipeline/test_lifecycle_outcomes.py::"
        "test_a_rejection_for_a_key_in_use_is_dead_lettered_not_published"
    ),
    "the relay fails to carry the record through": (
        "tests/pipeline/test_lifecycle_outcomes.py::"
        "test_a_record_the_relay_cannot_carry_through_is_dead_lettered_and_passed"
    ),
    "a record the Kafka client cannot parse": (
        "tests/pipeline/test_unparseable.py::"
        "test_a_header_key_that_is_not_utf8_is_dead_lettered_and_nothing_else_is_lost"
    ),
    "a result Kafka refuses as too large": (
        "tests/pipeline/test_unparseable.py::"
        "test_a_result_too_large_for_kafka_is_dead_lettered_once_not_retried"
    ),
    # Spend budgets and deadlines (issue 13)
    "a spend budget that applies has no room, `RELAY_BUDGET_MODE=hold`": (
        "tests/spend/test_budgets_e2e.py::test_hold_releases_held_requests_when_the_minute_rolls_over"
    ),
    "a spend budget that applies has no room, `RELAY_BUDGET_MODE=reject`": (
        "tests/spend/test_budgets_e2e.py::"
        "test_reject_mode_publishes_budget_exceeded_and_charges_nothing"
    ),
    "`expires_at` passed before the request was submitted": (
        "tests/spend/test_budgets_e2e.py::test_expires_at_passing_while_held_is_expired_unsubmitted"
    ),
}


def _body(**change: object) -> bytes:
    return json.dumps({**VALID, **change}).encode()


# For each code a record alone can produce: records that produce it, as (record key, value).
EXAMPLES: dict[str, list[tuple[bytes | None, bytes | None]]] = {
    "invalid_input": [(KEY, _body(input={"prompt": "a panda", "size": "5:4"}))],
    "invalid_request": [
        (KEY, _body(webhook="https://hooks.example.com/")),
        (KEY, _body(model="m" * 201)),
        (KEY, _body(webhook_url="ftp://hooks.example.com/")),
        (KEY, _body(expires_at="2026-11-25T19:00:00")),  # no timezone
        (KEY, _body(expires_at="tomorrow")),
        (KEY, _body(expires_at=1795633200)),
    ],
    "idempotency_key_mismatch": [(KEY, _body(idempotency_key="another-key"))],
    "invalid_record_key": [
        (b"order 8812\x00", _body(idempotency_key="order-8812")),
        (b"\xc0\xaf", _body(idempotency_key="order-8812")),
        (b"k" * 256, _body()),
        (b"caf\xc3\xa9", _body()),
    ],
    "metadata_too_large": [(KEY, _body(metadata={"blob": "x" * 100}))],
    "empty_value": [(KEY, None), (KEY, b"")],
    "record_too_large": [(KEY, b" " * 5000)],
    "not_utf8": [(KEY, b"\xc0\xaf"), (KEY, b'{"a": "\xed\xa0\x80"}')],
    "not_json": [(KEY, b"{not json"), (KEY, b"\xef\xbb\xbf" + _body())],
    "json_too_deep": [(KEY, b"[" * 9 + b"]" * 9), (KEY, b"[" * 3000)],
    "invalid_number": [
        (KEY, b'{"a": NaN}'),
        (KEY, b'{"a": -Infinity}'),
        (KEY, b'{"a": 1e400}'),
        (KEY, b'{"a": 18446744073709551616}'),
    ],
    "duplicate_key": [(KEY, b'{"model": "a", "model": "b"}')],
    "lone_surrogate": [(KEY, _body(metadata={"note": "\ud800"}))],
    "not_object": [(KEY, b'["a", "list"]'), (KEY, b"null")],
    "no_idempotency_key": [(None, _body())],
}


@dataclass(frozen=True)
class Row:
    record: str
    outcome: str
    codes: tuple[str, ...]


def outcome_rows() -> list[Row]:
    text = README.read_text(encoding="utf-8")
    table = text.split("### What happens to each record", 1)[1].split("\n\n")[1]
    rows = []
    for line in table.splitlines()[2:]:
        record, outcome, code = (cell.strip() for cell in line.strip().strip("|").split(" | "))
        codes = tuple(c for c in re.findall(r"`([a-z0-9_]+)`", code) if not c.startswith("relay_"))
        rows.append(Row(record, outcome, codes))
    return rows


ROWS = outcome_rows()


def _decode(key: bytes | None, value: bytes | None) -> Decoded:
    return decode_request(key, value, **LIMITS)


def _code(decoded: Decoded) -> str:
    if isinstance(decoded, DeadLetter):
        return decoded.reason
    assert isinstance(decoded, Rejected), decoded
    assert decoded.result.error is not None
    return decoded.result.error.code


def _matches(row: Row, key: bytes | None, decoded: Decoded) -> bool:
    """Whether ``decoded`` is the outcome the row's prose names."""
    if "dead letter only" in row.outcome:
        return isinstance(decoded, DeadLetter) and decoded.rejected is None
    if "dead letter + `request.rejected`" in row.outcome:
        if not isinstance(decoded, DeadLetter) or decoded.rejected is None:
            return False
        assert decoded.rejected.error is not None
        return decoded.rejected.error.code == decoded.reason and key == KEY
    assert "`request.rejected`" in row.outcome, row
    if not isinstance(decoded, Rejected):
        return False
    if "keyed by the body's key" in row.outcome:
        return decoded.result.idempotency_key == "order-8812"
    return decoded.result.idempotency_key == KEY.decode()


def test_every_row_is_run_here_or_by_an_integration_test() -> None:
    for row in ROWS:
        if row.record in NEEDS_SERVICES or any(row.record.startswith(p) for p in NEEDS_SERVICES):
            continue
        assert len(row.codes) == 1, f"one code per decode-level row: {row}"
        assert row.codes[0] in EXAMPLES, f"no example record for the README row {row}"
    for test in NEEDS_SERVICES.values():
        path, name = test.split("::")
        source = (README.parent / path).read_text(encoding="utf-8")
        assert f"def {name}(" in source, f"{test} does not exist"


@pytest.mark.parametrize("row", [r for r in ROWS if r.codes and r.codes[0] in EXAMPLES])
def test_the_row_is_what_its_record_gets(row: Row) -> None:
    """At least one example of the row's code gets the row's outcome; every example of that code
    gets the outcome of one of the rows documenting it."""
    code = row.codes[0]
    documented = [r for r in ROWS if r.codes == (code,)]
    hits = 0
    for key, value in EXAMPLES[code]:
        decoded = _decode(key, value)
        assert _code(decoded) == code, (key, value[:80] if value else value, decoded)
        assert any(_matches(r, key, decoded) for r in documented), (row, key, decoded)
        hits += _matches(row, key, decoded)
    assert hits, f"no example gets the outcome of {row}"


def test_every_code_decode_can_produce_is_in_the_table_and_has_an_example() -> None:
    documented = {code for row in ROWS for code in row.codes}
    assert documented >= DEAD_LETTER_REASONS | REJECTION_CODES
    assert set(EXAMPLES) == DEAD_LETTER_REASONS | REJECTION_CODES


def test_every_documented_code_keeps_its_own_metric_label() -> None:
    for code in {code for row in ROWS for code in row.codes}:
        assert code in RELAY_ERROR_CODES
        assert error_code_label(code) == code


def test_a_dead_letter_without_a_valid_record_key_publishes_no_rejection() -> None:
    for code in DEAD_LETTER_REASONS:
        for _, value in EXAMPLES[code]:
            decoded = _decode(None, value)
            if isinstance(decoded, DeadLetter):
                assert decoded.rejected is None


def test_the_readme_examples_are_a_request_and_a_result() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    request, result = json.loads(blocks[0]), json.loads(blocks[1])
    decoded = decode_request(
        request["idempotency_key"].encode(),
        json.dumps(request).encode(),
        max_record_bytes=4096,
        max_metadata_bytes=4096,
    )
    assert isinstance(decoded, Request)
    assert decoded.record.metadata == request["metadata"]
    assert ResultRecord.model_validate(result).idempotency_key == request["idempotency_key"]
