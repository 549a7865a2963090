"""Wire formats, in one place: request and result records (DESIGN §2–3) and MindVideo payloads.

Nothing else in the relay builds these dicts by hand.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# Bounds on what a request record may carry and a result may echo (README, "What happens to each
# record"): nesting deep enough to exhaust a parser's recursion, or a field the size of the record
# echoed into every rejection, must never reach an encoder, a log line or a metric.
DEFAULT_MAX_JSON_DEPTH = 32
MAX_MODEL_CHARS = 200
MAX_WEBHOOK_URL_CHARS = 2048
MAX_ERROR_CODE_CHARS = 100
MAX_ERROR_MESSAGE_CHARS = 2000
ResultType = Literal["task.succeeded", "task.failed", "task.cancelled", "request.rejected"]
ResultStatus = Literal["succeeded", "failed", "cancelled", "rejected"]

# MindVideo promises normalized statuses; accept the spellings other task APIs use as well.
_STATUS_ALIASES = {
    "pending": "queued",
    "submitted": "queued",
    "starting": "queued",
    "in_queue": "queued",
    "running": "processing",
    "in_progress": "processing",
    "success": "succeeded",
    "successful": "succeeded",
    "completed": "succeeded",
    "complete": "succeeded",
    "done": "succeeded",
    "error": "failed",
    "errored": "failed",
    "failure": "failed",
    "canceled": "cancelled",
}


def normalize_status(raw: object) -> str:
    """MindVideo's status in its normalized spelling (lower case, known aliases folded)."""
    text = str(raw or "").strip().lower().replace("-", "_").replace(" ", "_")
    return _STATUS_ALIASES.get(text, text)


def utc_now_iso() -> str:
    return format_ts(datetime.now(UTC))


def format_ts(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and a ``Z``, as in DESIGN §3."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


# One letter per result type, for the compact records kept in Redis (idempotency tombstones,
# webhook done markers); "?" stands for a type not listed.
RESULT_TYPE_CODES = {
    "task.succeeded": "s",
    "task.failed": "f",
    "task.cancelled": "c",
    "request.rejected": "r",
}


def event_id_for(idempotency_key: str, result_type: str, variant: str = "") -> str:
    """Stable per key, type and ``variant``, so replays and webhook retries carry the same id.

    A key has one ``task.*`` result (no variant), but may have several different
    ``request.rejected`` ones (a corrected request may reuse a rejected key): each is told apart
    by its variant (``rejection``), so receivers deduplicating by webhook-id or ``event_id``
    never drop one result as a copy of another."""
    name = f"{idempotency_key}\x00{result_type}"
    if variant:
        name += f"\x00{variant}"
    digest = hashlib.sha256(name.encode(errors="surrogatepass")).hexdigest()  # hostile text
    return f"evt_{digest[:32]}"


def payload_fingerprint(model: str, payload: object) -> str:
    """Fingerprint of the canonical payload (model + input): key order and spacing do not matter."""
    canonical = json.dumps(
        {"model": model, "input": payload},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# RFC 3339 date-time (section 5.6), with the offset it requires: "Z" or "+hh:mm".
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_URL_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII without the space


def _is_printable_ascii(text: str) -> bool:
    return _PRINTABLE_ASCII.fullmatch(text) is not None


def bounded_text(text: str, limit: int) -> str:
    """``text`` made safe to echo: lone surrogates written as ``\\udXXX`` escapes (they cannot be
    encoded as UTF-8), then cut to ``limit`` characters, the cut marked with an ellipsis."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def json_bytes(value: object) -> bytes:
    """``value`` as compact JSON in strict UTF-8, refusing NaN and Infinity.

    Raises ``ValueError`` (``UnicodeEncodeError`` for a lone surrogate) when it cannot be encoded.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 time with its offset; ``ValueError`` for anything else (a date alone, a
    time without a timezone, an impossible date)."""
    if _RFC3339.fullmatch(value) is None:
        raise ValueError(
            "must be an RFC 3339 time with a timezone, e.g. 2026-11-25T19:00:00Z or "
            "2026-11-25T20:00:00+01:00"
        )
    return datetime.fromisoformat(value.replace(" ", "T").upper().replace("Z", "+00:00"))


def is_http_url(value: str) -> bool:
    """An absolute ``http``/``https`` URL with a host, of printable ASCII without spaces.

    Anything else (an IRI, a control character, a broken port) would fail later, in a Kafka
    header or the webhook client, long after the request was charged.
    """
    if _URL_CHARS.fullmatch(value) is None:
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class RequestRecord(BaseModel):
    """A generation request as users produce it to the requests topic (DESIGN §2)."""

    model_config = ConfigDict(extra="forbid")

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    input: dict[str, Any]
    webhook_url: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL_CHARS)
    metadata: dict[str, Any] | None = None
    # Not submitted after this moment (held by a budget, a backlog or an outage): rejected with
    # ``expired`` instead, at no cost. A request already submitted is followed as usual.
    expires_at: str | None = Field(default=None, max_length=64)

    @field_validator("expires_at")
    @classmethod
    def _rfc3339(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rfc3339(value)
        return value

    @property
    def deadline_s(self) -> float | None:
        """``expires_at`` in unix seconds (``None``: no deadline)."""
        return None if self.expires_at is None else parse_rfc3339(self.expires_at).timestamp()

    @field_validator("idempotency_key")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not _is_printable_ascii(value):
            raise ValueError("must be 1-255 printable ASCII characters")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not is_http_url(value):
            raise ValueError(
                "must be an absolute http or https URL of printable ASCII "
                "(percent-encode anything else)"
            )
        return value


def valid_idempotency_key(value: str) -> bool:
    return 1 <= len(value) <= 255 and _is_printable_ascii(value)


class ResultError(BaseModel):
    code: str
    message: str


class ResultRecord(BaseModel):
    """The one normalized terminal result per idempotency key (DESIGN §3)."""

    event_id: str
    type: ResultType
    idempotency_key: str
    model: str | None
    request_id: str | None = None
    task_id: str | None = None
    status: ResultStatus
    output: dict[str, Any] | None = None
    error: ResultError | None = None
    cost_estimate: float | None = None
    cost_actual: float | None = None
    submitted_at: str | None = None
    completed_at: str
    metadata: dict[str, Any] | None = None

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class TaskSnapshot(BaseModel):
    """What MindVideo says about a task; extra fields are kept and ignored."""

    model_config = ConfigDict(extra="allow")

    task_id: str
    request_id: str | None = None
    status: str
    cost_estimate: float | None = None
    cost_actual: float | None = None
    output: dict[str, Any] | None = None
    error: Any = None
    # Set by the client when MindVideo answered a submit as a replay (``Idempotent-Replayed``).
    idempotent_replayed: bool = Field(default=False, exclude=True)

    @field_validator("status", mode="before")
    @classmethod
    def _normalize(cls, value: object) -> str:
        return normalize_status(value)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class SubmitBody(BaseModel):
    """The body of ``POST /api/v1/tasks``."""

    model: str
    input: dict[str, Any]


def rejection(
    idempotency_key: str,
    code: str,
    message: str,
    *,
    model: str | None = None,
    metadata: dict[str, Any] | None = None,
    request_id: str | None = None,
    max_metadata_bytes: int | None = None,
    variant: str | None = None,
) -> ResultRecord:
    """A ``request.rejected`` result: the relay refused the request and nothing was charged.

    Its ``event_id`` is unique per distinct rejection of the key: ``variant`` names it (the
    payload's short fingerprint for a rejection of a claimed request, ``conflict`` for the
    key's idempotency_conflict), by default the code and message (a rejection decided from the
    record alone, published once per key and reason).

    What a rejection echoes is bounded, because it may come from a record the relay refused for
    its size: ``model``, ``code`` and ``message`` are cut to ``MAX_MODEL_CHARS``,
    ``MAX_ERROR_CODE_CHARS`` and ``MAX_ERROR_MESSAGE_CHARS``, and ``metadata`` is echoed only
    when it encodes as JSON within ``max_metadata_bytes`` (when given), else left out.
    """
    return ResultRecord(
        event_id=event_id_for(
            idempotency_key,
            "request.rejected",
            f"{code}\x00{message}" if variant is None else variant,
        ),
        type="request.rejected",
        idempotency_key=idempotency_key,
        model=None if model is None else bounded_text(model, MAX_MODEL_CHARS),
        request_id=request_id,
        status="rejected",
        error=ResultError(
            code=bounded_text(code, MAX_ERROR_CODE_CHARS),
            message=bounded_text(message, MAX_ERROR_MESSAGE_CHARS),
        ),
        cost_estimate=0.0,
        cost_actual=0.0,
        completed_at=utc_now_iso(),
        metadata=_echoable(metadata, max_metadata_bytes),
    )


def _echoable(metadata: dict[str, Any] | None, max_bytes: int | None) -> dict[str, Any] | None:
    if metadata is None:
        return None
    try:
        size = len(json_bytes(metadata))
    except (ValueError, RecursionError):  # not encodable: a result that echoed it could not be sent
        return None
    return metadata if max_bytes is None or size <= max_bytes else None


# Webhook deliveries (DESIGN §6, docs/webhooks.md)

WebhookDeadLetterReason = Literal["exhausted", "refused"]


def delivery_id_for(event_id: str, endpoint: str) -> str:
    """One delivery per result and endpoint: re-reading a result never schedules a second one."""
    return hashlib.sha256(f"{event_id}\x00{endpoint}".encode()).hexdigest()[:32]


class WebhookDelivery(BaseModel):
    """One result on its way to one endpoint, as kept in Redis between attempts.

    ``body`` is the result record exactly as published; headers are built fresh at each attempt.
    ``attempts`` counts attempts made (deferrals by the circuit breaker are not attempts).
    ``traceparent``/``tracestate``: the result record's trace context, kept so that an attempt
    hours later, in another process, still joins the request's trace.
    """

    endpoint: str
    event_id: str
    idempotency_key: str
    type: str
    body: bytes
    published_ms: int
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    replayed: bool = False
    traceparent: str | None = None
    tracestate: str | None = None

    @property
    def delivery_id(self) -> str:
        return delivery_id_for(self.event_id, self.endpoint)

    def to_fields(self) -> dict[str, bytes]:
        """Redis hash fields; ``None`` is stored as an empty value."""
        out: dict[str, bytes] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, bytes):
                out[name] = value
            elif isinstance(value, bool):
                out[name] = b"1" if value else b"0"
            else:
                out[name] = b"" if value is None else str(value).encode()
        return out

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> WebhookDelivery:
        text = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items() if k != b"body"}
        return cls(
            endpoint=text["endpoint"],
            event_id=text["event_id"],
            idempotency_key=text["idempotency_key"],
            type=text["type"],
            body=fields[b"body"],
            published_ms=int(text["published_ms"]),
            attempts=int(text.get("attempts") or 0),
            last_status=int(text["last_status"]) if text.get("last_status") else None,
            last_error=text.get("last_error") or None,
            replayed=text.get("replayed") == "1",
            traceparent=text.get("traceparent") or None,
            tracestate=text.get("tracestate") or None,
        )


class WebhookDeadLetter(BaseModel):
    """The headers of a record on the webhook dead-letter topic; its value is the result body.
    The delivery's ``traceparent``/``tracestate`` go along, so a replay joins the same trace."""

    endpoint: str
    event_id: str
    idempotency_key: str
    type: str
    reason: WebhookDeadLetterReason
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    published_ms: int
    traceparent: str | None = None
    tracestate: str | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        pairs = [
            ("content-type", "application/json"),
            ("event-id", self.event_id),
            ("type", self.type),
            ("webhook-endpoint", self.endpoint),
            ("webhook-reason", self.reason),
            ("webhook-attempts", str(self.attempts)),
            ("webhook-last-status", "" if self.last_status is None else str(self.last_status)),
            ("webhook-last-error", (self.last_error or "")[:1000]),
            ("webhook-published-ms", str(self.published_ms)),
        ]
        if self.traceparent:
            pairs.append(("traceparent", self.traceparent))
        if self.traceparent and self.tracestate:
            pairs.append(("tracestate", self.tracestate))
        return [(name, value.encode("utf-8", "replace")) for name, value in pairs]

    @classmethod
    def from_record(cls, key: bytes | None, headers: list[tuple[str, bytes]]) -> WebhookDeadLetter:
        h = {name: value.decode("utf-8", "replace") for name, value in headers}
        return cls.model_validate(
            {
                "endpoint": h["webhook-endpoint"],
                "event_id": h["event-id"],
                "idempotency_key": (key or b"").decode("utf-8", "replace"),
                "type": h.get("type", ""),
                "reason": h["webhook-reason"],
                "attempts": int(h.get("webhook-attempts") or 0),
                "last_status": int(h["webhook-last-status"])
                if h.get("webhook-last-status")
                else None,
                "last_error": h.get("webhook-last-error") or None,
                "published_ms": int(h.get("webhook-published-ms") or 0),
                "traceparent": h.get("traceparent") or None,
                "tracestate": h.get("tracestate") or None,
            }
        )


# Webhook signing secrets (Standard Webhooks: "whsec_" + base64 of the HMAC key)


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional here).

    Raises ``ValueError`` with a message that never contains the secret itself.
    """
    encoded = secret.removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'whsec_' is not valid base64") from None
    if not key:
        raise ValueError("the part after 'whsec_' decodes to an empty key")
    return key
