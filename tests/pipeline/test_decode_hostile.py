"""Decode over hostile records: each gets its documented outcome, nothing raises, and whatever
decode lets through can be carried to the end (issue 10)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.models import MAX_ERROR_MESSAGE_CHARS, ResultRecord, SubmitBody, rejection
from relay.pipeline.decode import DeadLetter, Decoded, Rejected, Request, decode_request
from tests.support.hostile import (
    MAX_JSON_DEPTH,
    MAX_METADATA_BYTES,
    MAX_RECORD_BYTES,
    MODEL,
    Hostile,
    hostile_corpus,
    nested,
)

CORPUS = hostile_corpus("h")
# A rejection is small whatever the record was: message, model and metadata are capped.
MAX_REJECTION_BYTES = 4 * (MAX_ERROR_MESSAGE_CHARS + 200) + MAX_METADATA_BYTES + 1024


def _decode(key: bytes | None, value: bytes | None, depth: int = MAX_JSON_DEPTH) -> Decoded:
    return decode_request(
        key,
        value,
        max_record_bytes=MAX_RECORD_BYTES,
        max_metadata_bytes=MAX_METADATA_BYTES,
        max_json_depth=depth,
    )


def _assert_carried_through(decoded: Decoded) -> None:
    """What decode returns can be encoded by the encoders the relay uses later."""
    results: list[ResultRecord] = []
    if isinstance(decoded, Request):
        rec = decoded.record
        json.loads(SubmitBody(model=rec.model, input=rec.input).model_dump_json())
        results.append(rejection(decoded.idempotency_key, "probe", "", model=rec.model))
        results.append(
            ResultRecord(
                event_id="evt_x",
                type="task.succeeded",
                idempotency_key=decoded.idempotency_key,
                model=rec.model,
                status="succeeded",
                completed_at="2026-01-01T00:00:00.000Z",
                metadata=rec.metadata,
            )
        )
    elif isinstance(decoded, Rejected):
        results.append(decoded.result)
    elif decoded.rejected is not None:
        results.append(decoded.rejected)
    for result in results:
        body = result.to_json_bytes()
        body.decode("utf-8")  # strict: no lone surrogate made it through
        json.loads(body)
        if result.type == "request.rejected":
            assert len(body) <= MAX_REJECTION_BYTES, f"a {len(body)}-byte rejection"


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_each_hostile_record_gets_its_documented_outcome(case: Hostile) -> None:
    decoded = _decode(case.key, case.value)
    if case.outcome == "dead_letter":
        assert isinstance(decoded, DeadLetter), decoded
        assert decoded.reason == case.code, decoded.message
        if case.result_key is None:
            assert decoded.rejected is None
        else:
            assert decoded.rejected is not None
            assert decoded.rejected.idempotency_key == case.result_key
            assert decoded.rejected.error is not None
            assert decoded.rejected.error.code == case.code
    elif case.outcome == "rejected":
        assert isinstance(decoded, Rejected), decoded
        assert decoded.result.error is not None
        assert decoded.result.error.code == case.code, decoded.result.error.message
        assert decoded.result.idempotency_key == case.result_key
        assert decoded.result.cost_actual == 0.0
    else:
        assert isinstance(decoded, Request), decoded
        assert decoded.idempotency_key == case.result_key
    _assert_carried_through(decoded)


def test_the_corpus_has_every_hostile_class() -> None:
    assert len(CORPUS) >= 25
    codes = {c.code for c in CORPUS}
    assert {"json_too_deep", "lone_surrogate", "invalid_number", "duplicate_key"} <= codes
    assert {"invalid_record_key", "not_utf8", "not_json", "empty_value", "not_object"} <= codes


def test_a_200kb_model_is_echoed_cut_and_oversized_metadata_not_at_all() -> None:
    by_name = {c.name: c for c in CORPUS}
    decoded = _decode(by_name["model-200kb"].key, by_name["model-200kb"].value)
    assert isinstance(decoded, Rejected)
    assert decoded.result.model is not None
    assert len(decoded.result.model) == 200
    assert len(decoded.result.to_json_bytes()) < 2048
    big = by_name["meta-large"]
    decoded = _decode(big.key, big.value)
    assert isinstance(decoded, Rejected)
    assert decoded.result.metadata is None
    field = by_name["field-100kb"]
    decoded = _decode(field.key, field.value)
    assert isinstance(decoded, Rejected)
    assert decoded.result.error is not None
    assert "is not a known field" in decoded.result.error.message
    assert len(decoded.result.error.message) < 200


def test_lone_surrogates_are_named_where_they_are() -> None:
    by_name = {c.name: c for c in CORPUS}
    messages = {}
    for name in ("sur-meta", "sur-model", "sur-input", "sur-key"):
        decoded = _decode(by_name[name].key, by_name[name].value)
        assert isinstance(decoded, DeadLetter)
        messages[name] = decoded.message
    assert messages["sur-meta"].startswith("metadata.note ")
    assert messages["sur-model"].startswith("model ")
    assert messages["sur-input"].startswith("input.prompt ")
    assert messages["sur-key"].startswith("a key in metadata ")


def test_the_depth_bound_is_a_setting_and_counts_the_record_as_level_one() -> None:
    value = b'{"model": "m", "input": {}, "metadata": ' + nested(3).encode() + b"}"
    assert isinstance(_decode(b"k", value, depth=4), Request)
    decoded = _decode(b"k", value, depth=3)
    assert isinstance(decoded, DeadLetter)
    assert decoded.reason == "json_too_deep"
    assert "3 levels" in decoded.message


def test_brackets_and_escaped_quotes_inside_strings_do_not_count_as_nesting() -> None:
    prompt = '\\"[[[[{{{{' * 50
    value = ('{"model": "m", "input": {"prompt": "' + prompt + '"}}').encode()
    assert isinstance(_decode(b"k", value, depth=2), Request)


# Fuzzing: whatever the bytes, decode returns one of its three outcomes and raises nothing.

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "\udfff", "a\ud83d", "\x00", "\ufeff", "🐼"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.just("\udc00"), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(["idempotency_key", "model", "input", "webhook_url", "metadata", "x"])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = (
    st.none() | st.binary(max_size=12) | st.just(b"order-1") | st.text(max_size=8).map(str.encode)
)


@FUZZ
@given(key=KEYS, value=st.none() | st.binary(max_size=300))
def test_fuzz_bytes_never_raise(key: bytes | None, value: bytes | None) -> None:
    _assert_carried_through(_decode(key, value))


@FUZZ
@given(key=KEYS, changes=st.dictionaries(FIELDS, JSON_VALUES, max_size=4))
def test_fuzz_records_never_raise(key: bytes | None, changes: dict[str, Any]) -> None:
    record = {"model": MODEL, "input": {"prompt": "a panda"}, "metadata": {"a": 1}, **changes}
    value = json.dumps(record).encode()  # lone surrogates become \ud800 escapes, NaN stays NaN
    _assert_carried_through(_decode(key, value))


@FUZZ
@given(
    position=st.integers(min_value=0, max_value=200),
    insert=st.sampled_from(
        [b"[", b"{", b"}", b'"', b"\\", b"\\ud800", b"NaN", b"1e999", b"\xff", b"\x00", b",,"]
    ),
)
def test_fuzz_spliced_records_never_raise(position: int, insert: bytes) -> None:
    value = json.dumps(
        {"model": MODEL, "input": {"prompt": "a panda", "n": 1}, "metadata": {"k": [1, {"v": 2}]}}
    ).encode()
    at = min(position, len(value))
    _assert_carried_through(_decode(b"order-1", value[:at] + insert * 40 + value[at:]))
