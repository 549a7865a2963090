"""What a MindVideo answer that is not a 2xx means for the relay: one exception, by next step.

- ``OperatorError``: 401/402/403 (the key or the credit), and on the submit and probe routes
  (which always exist at MindVideo) anything that says ``RELAY_MINDVIDEO_BASE_URL`` does not point
  at MindVideo's API (``wrong_base_url``): a redirect (never followed there: aiohttp would turn a
  redirected POST into a GET), a 405, a 404 with any code but the expected one
  (``model_not_found`` for a submit, ``task_not_found`` for the probe), or a final 4xx whose body
  is not MindVideo's JSON error ``{"error": {"code", "message"}}`` (an nginx page, a proxy's
  HTML). Work waits at the closed gate; nothing is rejected for the operator's mistake.
- ``RetryableError``: 5xx, 408, 425, 429 and a 409 that is not an idempotency conflict.
- ``RequestRejected``: any other final 4xx, with MindVideo's own code and message; 413, 414 and
  431 reject the request whoever answered them (it is too large for something on the way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from relay.exceptions import OperatorError, RequestRejected, RetryableError

OPERATOR_STATUSES = frozenset({401, 402, 403})
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
# Too large a request: the request's own fault whoever answers (a proxy's limit, MindVideo's).
REQUEST_SIZE_4XX = frozenset({413, 414, 431})
# Operations on routes that always exist at MindVideo: their answers also check the base URL.
ROUTE_CHECKS = frozenset({"submit", "probe"})
# A 404 that is about the request (an unknown model) or, for the probe, the expected answer; any
# other 404 on these operations means the route itself is missing: a wrong base URL.
EXPECTED_404_CODES = {"submit": "model_not_found", "probe": "task_not_found"}
BASE_URL_FIX = "give MindVideo's origin only (the relay adds /api/v1)"
MAX_MESSAGE_BYTES = 500
MAX_HEADER_CHARS = 200


@dataclass(frozen=True, slots=True)
class Answer:
    """A non-2xx answer of MindVideo (or of whatever answered in its place)."""

    operation: str  # submit, get, probe
    method: str
    url: str
    status: int
    body: bytes
    retry_after_s: float | None = None
    location: str = "-"  # the Location header, cut to MAX_HEADER_CHARS
    content_type: str = "-"


def error_fields(body: bytes, status: int) -> tuple[str, str, bool]:
    """MindVideo's error code and message from a JSON error body, liberal in shape, and whether
    the body is a MindVideo error at all: a JSON object naming an error code (an HTML page, a
    proxy's plain text or a JSON body without a code is some other server's answer)."""
    fallback = f"mindvideo_http_{status}"
    code, message = fallback, body[:MAX_MESSAGE_BYTES].decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except ValueError:
        return code, message, False
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            code = str(err.get("code") or err.get("type") or code)
            message = str(err.get("message") or err.get("detail") or message)
        elif isinstance(err, str):
            message = err
            if isinstance(data.get("message"), str):
                message = f"{err}: {data['message']}"
    return code, message, code != fallback


def error_for(answer: Answer) -> Exception:
    """The exception that says what to do about ``answer`` (never a 2xx)."""
    status, checks_route = answer.status, answer.operation in ROUTE_CHECKS
    code, message, from_mindvideo = error_fields(answer.body, status)
    if checks_route and 300 <= status < 400:
        return _wrong_base_url(
            answer,
            f"was redirected to {answer.location} (not followed)",
        )
    if status in OPERATOR_STATUSES:
        return OperatorError(status, message)
    if checks_route and status == 404 and code != EXPECTED_404_CODES[answer.operation]:
        return _wrong_base_url(answer, f"is not a MindVideo route ({code})")
    if checks_route and status == 405:
        return _wrong_base_url(answer, f"is not allowed there ({answer.content_type})")
    final_4xx = 400 <= status < 500 and status not in RETRYABLE_4XX | REQUEST_SIZE_4XX
    if checks_route and final_4xx and not from_mindvideo:
        return _wrong_base_url(
            answer, f"answered {status} {answer.content_type}, not MindVideo's JSON error"
        )
    if status == 409 and code == "idempotency_conflict":
        return RequestRejected("idempotency_conflict", message)
    if status >= 500 or status in RETRYABLE_4XX:
        reason = "http_5xx" if status >= 500 else "http_429" if status == 429 else "http_4xx"
        return RetryableError(
            f"{answer.operation}: {status} {code}",
            retry_after_s=answer.retry_after_s,
            reason=reason,
            maybe_sent=status != 429,  # a 429 is refused before anything happens
        )
    return RequestRejected(code, message)


def _wrong_base_url(answer: Answer, what: str) -> OperatorError:
    return OperatorError(
        answer.status,
        f"wrong RELAY_MINDVIDEO_BASE_URL? {answer.method} {answer.url} {what}; {BASE_URL_FIX}",
        wrong_base_url=True,
    )
