"""Decode and validate a request record (DESIGN §2) into what must happen next.

Every record ends in exactly one of: a ``Request`` to work on; a ``Rejected`` result (the relay
refuses it, nothing is charged); or a ``DeadLetter`` (undecodable), which also carries a rejection
when the record key is a valid idempotency key. Whatever a producer sends, decoding returns one of
the three and raises nothing, and a ``Request`` is proven encodable: its model and input as
MindVideo's submit body, its model and metadata as a result record. The codes are the README's
("What happens to each record"); a test runs that table against this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from relay.exceptions import RecordUndecodable
from relay.models import (
    DEFAULT_MAX_JSON_DEPTH,
    MAX_WEBHOOK_URL_CHARS,
    RequestRecord,
    ResultRecord,
    SubmitBody,
    bounded_text,
    event_id_for,
    is_http_url,
    json_bytes,
    rejection,
    valid_idempotency_key,
)
from relay.pipeline.strict_json import NAME_CHARS, parse_strict_json
from relay.schemas import validate_input

# Dead-letter reasons (the ``error.reason`` header; also the rejection's ``error.code`` when the
# record key is a valid idempotency key).
DEAD_LETTER_REASONS = frozenset(
    {
        "empty_value",
        "record_too_large",
        "not_utf8",
        "not_json",
        "json_too_deep",
        "invalid_number",
        "duplicate_key",
        "lone_surrogate",
        "not_object",
        "invalid_record_key",
        "no_idempotency_key",
    }
)
# ``error.code`` of the rejections decided from the record alone.
REJECTION_CODES = frozenset(
    {
        "invalid_record_key",
        "invalid_request",
        "idempotency_key_mismatch",
        "metadata_too_large",
        "invalid_input",
    }
)


@dataclass(frozen=True, slots=True)
class Request:
    """A valid request; ``idempotency_key`` is resolved from the body or the record key."""

    idempotency_key: str
    record: RequestRecord


@dataclass(frozen=True, slots=True)
class Rejected:
    result: ResultRecord
    webhook_url: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    message: str
    rejected: ResultRecord | None


Decoded = Request | Rejected | DeadLetter
_KEY_ADVICE = "produce with the idempotency key as the record key, or with no record key"


@dataclass(frozen=True, slots=True)
class _RecordKey:
    """The record key: ``valid`` when it is an idempotency key, ``problem`` when it is present
    but is not one (an absent or zero-length key is neither)."""

    valid: str | None
    problem: str | None

    @classmethod
    def of(cls, key: bytes | None) -> _RecordKey:
        if not key:
            return cls(None, None)
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            return cls(None, f"the record key is not UTF-8; {_KEY_ADVICE}")
        if valid_idempotency_key(text):
            return cls(text, None)
        return cls(
            None,
            f"the record key ({len(text)} characters) is not 1-255 printable ASCII; {_KEY_ADVICE}",
        )


def decode_request(
    key: bytes | None,
    value: bytes | None,
    *,
    max_record_bytes: int,
    max_metadata_bytes: int,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
) -> Decoded:
    """What must become of one record; never raises, whatever the bytes.

    The limits are ``RELAY_MAX_RECORD_BYTES``, ``RELAY_MAX_METADATA_BYTES`` and
    ``RELAY_MAX_JSON_DEPTH`` (its default here is the setting's).
    """
    record_key = _RecordKey.of(key)
    if not value:
        return _dead("empty_value", "the record has no value (null or zero bytes)", record_key)
    if len(value) > max_record_bytes:
        return _dead(
            "record_too_large",
            f"the record is {len(value)} bytes; the limit is {max_record_bytes}",
            record_key,
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _dead(
            "not_utf8", f"the value is not UTF-8: {exc.reason} at byte {exc.start}", record_key
        )
    try:
        data = parse_strict_json(text, max_depth=max_json_depth)
    except RecordUndecodable as exc:
        return _dead(exc.reason, exc.message, record_key)
    if not isinstance(data, dict):
        return _dead(
            "not_object", f"the value is JSON {type(data).__name__}, not an object", record_key
        )
    return _validate(data, record_key, max_metadata_bytes)


def _validate(data: dict[str, Any], record_key: _RecordKey, max_metadata_bytes: int) -> Decoded:
    body_key = data.get("idempotency_key")
    valid_body_key = (
        body_key if isinstance(body_key, str) and valid_idempotency_key(body_key) else None
    )

    def reject(key: str, code: str, message: str) -> Rejected:
        """Echo what can be echoed: rejection() cuts the model and keeps metadata only within
        its cap; the webhook URL is used only when it is one."""
        model, metadata, url = data.get("model"), data.get("metadata"), data.get("webhook_url")
        result = rejection(
            key,
            code,
            message,
            model=model if isinstance(model, str) else None,
            metadata=metadata if isinstance(metadata, dict) else None,
            max_metadata_bytes=max_metadata_bytes,
        )
        return Rejected(result, url if isinstance(url, str) and _usable_url(url) else None)

    if record_key.problem is not None:
        # A request must not be published under a key other than its record's: refused.
        if valid_body_key is not None:
            return reject(valid_body_key, "invalid_record_key", record_key.problem)
        return DeadLetter("invalid_record_key", record_key.problem, None)
    key = record_key.valid or valid_body_key
    if key is None:
        return DeadLetter(
            "no_idempotency_key",
            "neither the body's idempotency_key nor the record key is 1-255 printable ASCII",
            None,
        )
    try:
        request = RequestRecord.model_validate(data)
    except ValidationError as exc:
        return reject(key, "invalid_request", _describe(exc))
    if record_key.valid is not None and body_key is not None and body_key != record_key.valid:
        return reject(
            key,
            "idempotency_key_mismatch",
            "the record key and the body's idempotency_key differ; they must agree",
        )
    problem = _unencodable(key, request)
    if problem is not None:
        return reject(key, "invalid_request", problem)
    if request.metadata is not None:
        size = len(json_bytes(request.metadata))
        if size > max_metadata_bytes:
            return reject(
                key,
                "metadata_too_large",
                f"metadata is {size} bytes; the limit is {max_metadata_bytes}",
            )
    errors = validate_input(request.model, request.input)
    if errors:
        details = "; ".join(f"{bounded_text(e.field, 200)} {e.message}" for e in errors)
        return reject(key, "invalid_input", details)
    return Request(key, request)


def _unencodable(key: str, request: RequestRecord) -> str | None:
    """Run the encoders the relay will use later, so that nothing is charged that cannot be
    published: the submit body (model and input) and a result record (model and metadata)."""
    probe = ResultRecord(
        event_id=event_id_for(key, "task.succeeded"),
        type="task.succeeded",
        idempotency_key=key,
        model=request.model,
        status="succeeded",
        completed_at="",
        metadata=request.metadata,
    )
    try:
        SubmitBody(model=request.model, input=request.input).model_dump_json()
        probe.to_json_bytes()
    except (PydanticSerializationError, ValueError) as exc:
        return f"the request cannot be encoded as JSON: {exc}"
    return None


def _usable_url(url: str) -> bool:
    return len(url) <= MAX_WEBHOOK_URL_CHARS and is_http_url(url)


def _dead(reason: str, message: str, record_key: _RecordKey) -> DeadLetter:
    if record_key.valid is None:
        return DeadLetter(reason, message, None)
    return DeadLetter(reason, message, rejection(record_key.valid, reason, message))


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(bounded_text(str(p), NAME_CHARS) for p in err["loc"]) or "record"
        if err["type"] == "extra_forbidden":
            parts.append(f"{field} is not a known field")
        elif err["type"] == "missing":
            parts.append(f"{field} is required")
        else:
            parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)
