"""Decode and validate a request record (DESIGN §2) into what must happen next.

Every record ends in exactly one of: a ``Request`` to work on; a ``Rejected`` result (the relay
refuses it, nothing is charged); or a ``DeadLetter`` (undecodable), which also carries a rejection
when an idempotency key can be recovered from the record key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from relay.models import RequestRecord, ResultRecord, rejection, valid_idempotency_key
from relay.schemas import validate_input


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


def decode_request(
    key: bytes | None, value: bytes | None, *, max_record_bytes: int, max_metadata_bytes: int
) -> Decoded:
    record_key = _record_key(key)
    if value is None:
        return _dead("empty_value", "the record has no value", record_key)
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
        data = json.loads(text)
    except ValueError as exc:
        return _dead("not_json", f"the value is not JSON: {exc}", record_key)
    if not isinstance(data, dict):
        return _dead(
            "not_object", f"the value is JSON {type(data).__name__}, not an object", record_key
        )
    return _validate(data, record_key, max_metadata_bytes)


def _validate(data: dict[str, Any], record_key: str | None, max_metadata_bytes: int) -> Decoded:
    body_key = data.get("idempotency_key")
    # The record key wins: it is what partitions the request and keys its result.
    key = record_key
    if key is None and isinstance(body_key, str) and valid_idempotency_key(body_key):
        key = body_key
    model = data.get("model") if isinstance(data.get("model"), str) else None
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else None
    webhook_url = data.get("webhook_url") if isinstance(data.get("webhook_url"), str) else None
    if key is None:
        return DeadLetter(
            "no_idempotency_key",
            "neither the body's idempotency_key nor the record key is 1-255 printable ASCII",
            None,
        )

    def reject(code: str, message: str) -> Rejected:
        return Rejected(rejection(key, code, message, model=model, metadata=metadata), webhook_url)

    try:
        request = RequestRecord.model_validate(data)
    except ValidationError as exc:
        return reject("invalid_request", _describe(exc))
    if record_key is not None and body_key is not None and body_key != record_key:
        return reject(
            "idempotency_key_mismatch",
            "the record key and the body's idempotency_key differ; they must agree",
        )
    if request.metadata is not None:
        size = len(json.dumps(request.metadata, separators=(",", ":"), ensure_ascii=False).encode())
        if size > max_metadata_bytes:
            return reject(
                "metadata_too_large", f"metadata is {size} bytes; the limit is {max_metadata_bytes}"
            )
    errors = validate_input(request.model, request.input)
    if errors:
        details = "; ".join(f"{e.field} {e.message}" for e in errors)
        return reject("invalid_input", details)
    return Request(key, request)


def _record_key(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if valid_idempotency_key(text) else None


def _dead(reason: str, message: str, record_key: str | None) -> DeadLetter:
    rejected = rejection(record_key, reason, message) if record_key is not None else None
    return DeadLetter(reason, message, rejected)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "record"
        if err["type"] == "extra_forbidden":
            parts.append(f"{field} is not a known field")
        elif err["type"] == "missing":
            parts.append(f"{field} is required")
        else:
            parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)
