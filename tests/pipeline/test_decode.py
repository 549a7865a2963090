"""Every record decodes to exactly one documented outcome, with a clear code."""

from __future__ import annotations

import json

import pytest

from relay.models import event_id_for
from relay.pipeline.decode import DeadLetter, Rejected, Request, decode_request
from relay.schemas import SUPPORTED_SIZES

LIMITS = {"max_record_bytes": 4096, "max_metadata_bytes": 64}
GOOD = {
    "idempotency_key": "order-1",
    "model": "apimart-doubao-seedance-4-0",
    "input": {"prompt": "a panda", "size": "1:1", "resolution": "2K", "n": 1},
    "metadata": {"order_id": "8812"},
}


def _decode(value: object, key: bytes | None = b"order-1") -> object:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return decode_request(key, raw, **LIMITS)


def test_valid_request() -> None:
    decoded = _decode(GOOD)
    assert isinstance(decoded, Request)
    assert decoded.idempotency_key == "order-1"
    assert decoded.record.metadata == {"order_id": "8812"}


def test_key_from_record_key_only() -> None:
    body = {k: v for k, v in GOOD.items() if k != "idempotency_key"}
    decoded = _decode(body, key=b"from-record")
    assert isinstance(decoded, Request)
    assert decoded.idempotency_key == "from-record"


def test_unknown_model_passes_through() -> None:
    decoded = _decode({**GOOD, "model": "some-future-model", "input": {"anything": [1, 2]}})
    assert isinstance(decoded, Request)


@pytest.mark.parametrize(
    ("change", "code", "needle"),
    [
        ({"input": {"prompt": "", "n": 0}}, "invalid_input", "input.prompt"),
        ({"input": {"prompt": "x", "n": "2"}}, "invalid_input", "input.n"),
        ({"input": {"prompt": "x", "colour": "red"}}, "invalid_input", "input.colour"),
        ({"input": {"prompt": "x", "n": 10, "image_urls": ["a"] * 6}}, "invalid_input", "plus n"),
        ({"model": 7}, "invalid_request", "model"),
        ({"input": "a panda"}, "invalid_request", "input"),
        ({"surprise": True}, "invalid_request", "surprise is not a known field"),
        ({"metadata": {"blob": "x" * 100}}, "metadata_too_large", "limit is 64"),
        ({"idempotency_key": "other-key"}, "idempotency_key_mismatch", "must agree"),
        ({"input": {"prompt": "x", "size": "5:4"}}, "invalid_input", "input.size"),
        ({"webhook_url": "hooks.example.com/x"}, "invalid_request", "webhook_url"),
    ],
)
def test_rejections_name_the_problem(change: dict[str, object], code: str, needle: str) -> None:
    decoded = _decode({**GOOD, **change})
    assert isinstance(decoded, Rejected)
    assert decoded.result.error is not None
    assert decoded.result.error.code == code
    assert needle in decoded.result.error.message
    assert decoded.result.status == "rejected"
    assert decoded.result.cost_actual == 0.0
    # One event id per distinct rejection of the key (its code and message): a corrected
    # request rejected for another reason is not a copy of this one.
    reason = f"{code}\x00{decoded.result.error.message}"
    assert decoded.result.event_id == event_id_for("order-1", "request.rejected", reason)
    assert decoded.result.event_id != event_id_for("order-1", "request.rejected")


def test_missing_model_is_named() -> None:
    body = {k: v for k, v in GOOD.items() if k != "model"}
    decoded = _decode(body)
    assert isinstance(decoded, Rejected)
    assert decoded.result.error is not None
    assert "model is required" in decoded.result.error.message


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not utf8", "not_utf8"),
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_object"),
        (b"x" * 5000, "record_too_large"),
    ],
)
def test_undecodable_goes_to_dead_letter_with_a_rejection(raw: bytes, reason: str) -> None:
    decoded = _decode(raw)
    assert isinstance(decoded, DeadLetter)
    assert decoded.reason == reason
    assert decoded.rejected is not None
    assert decoded.rejected.idempotency_key == "order-1"
    assert decoded.rejected.error is not None
    assert decoded.rejected.error.code == reason


def test_undecodable_without_key_is_only_dead_lettered() -> None:
    decoded = _decode(b"{not json", key=None)
    assert isinstance(decoded, DeadLetter)
    assert decoded.rejected is None


def test_no_key_anywhere_is_dead_lettered() -> None:
    body = {k: v for k, v in GOOD.items() if k != "idempotency_key"}
    decoded = _decode(body, key=None)
    assert isinstance(decoded, DeadLetter)
    assert decoded.reason == "no_idempotency_key"


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value_is_dead_lettered(value: bytes | None) -> None:
    decoded = decode_request(b"k", value, **LIMITS)
    assert isinstance(decoded, DeadLetter)
    assert decoded.reason == "empty_value"
    assert decoded.rejected is not None


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_every_ratio_mindvideo_lists_is_accepted(size: str) -> None:
    decoded = _decode({**GOOD, "input": {"prompt": "a panda", "size": size}})
    assert isinstance(decoded, Request)


def test_a_zero_length_record_key_counts_as_no_key() -> None:
    decoded = _decode(GOOD, key=b"")
    assert isinstance(decoded, Request)
    assert decoded.idempotency_key == "order-1"
