"""The MindVideo HTTP client: submit, snapshot and event stream, with errors sorted by next step.

Transient failures (timeouts, connection errors, 5xx, 408, 429 and a 409 that is not an idempotency
conflict) are retried up to ``max_attempts`` tries per call by the relay's one ``RetryPolicy``
(capped, jittered exponential backoff, ``Retry-After`` honoured, counted); then the caller (the
request lifecycle) holds the request and tries again. The ``Idempotency-Key`` header makes a
retried submit safe. 401/402/403 raise ``OperatorError``; so does a 404 on a route that must
exist (a submit answered 404 with any code but ``model_not_found``, a probe answered 404 with any
code but ``task_not_found``): the relay was pointed at the wrong place (``RELAY_MINDVIDEO_BASE_URL``
with a wrong path), which is the operator's to fix, not a reason to reject every request. Any
other 4xx raises ``RequestRejected`` carrying MindVideo's own code and message.

A submit MindVideo answers as a replay (``Idempotent-Replayed: true``) of a task created before the
call (not by an earlier try of the same call) is marked on its snapshot (``idempotent_replayed``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from pydantic import ValidationError

from relay.backoff import Backoff, parse_retry_after
from relay.exceptions import OperatorError, RequestRejected, RetryableError, StreamUnavailable
from relay.metrics import RelayMetrics
from relay.models import SubmitBody, TaskSnapshot
from relay.pipeline.sse import ServerSentEvent, SSEParser
from relay.retry import RetryPolicy

log = logging.getLogger(__name__)

OPERATOR_STATUSES = frozenset({401, 402, 403})
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
# A 404 that is about the request (an unknown model) or, for the probe, the expected answer; any
# other 404 on these operations means the route itself is missing: a wrong base URL.
EXPECTED_404_CODES = {"submit": "model_not_found", "probe": "task_not_found"}
REPLAYED_HEADER = "Idempotent-Replayed"
T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


def _code_class(status: int) -> str:
    return f"{status // 100}xx"


def _error_fields(body: bytes, status: int) -> tuple[str, str]:
    """MindVideo's error code and message from a JSON error body, liberal in shape."""
    code, message = f"mindvideo_http_{status}", body[:500].decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except ValueError:
        return code, message
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            code = str(err.get("code") or err.get("type") or code)
            message = str(err.get("message") or err.get("detail") or message)
        elif isinstance(err, str):
            message = err
            if isinstance(data.get("message"), str):
                message = f"{err}: {data['message']}"
    return code, message


class MindVideoClient:
    """Talks to ``{base}/api/v1``; one shared connection pool, one API key."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        metrics: RelayMetrics,
        backoff: Backoff,
        max_attempts: int,
        request_timeout_s: float,
        sleep: Sleep = asyncio.sleep,
        stream_session: aiohttp.ClientSession | None = None,
    ) -> None:
        """``stream_session``, when given, carries the event streams, so streams held for as long
        as their tasks run never take connections that submits and polls need."""
        self._session = session
        self._stream_session = stream_session or session
        self._stream_timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._base = base_url.rstrip("/") + "/api/v1"
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._metrics = metrics
        self._retry = RetryPolicy(
            backoff,
            metrics.retries,
            scope="mindvideo",
            max_attempts=max_attempts,
            outages_unbounded=False,
            sleep=sleep,
        )
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)

    async def submit(
        self, idempotency_key: str, model: str, payload: dict[str, Any]
    ) -> TaskSnapshot:
        """Create a task (or get back the one this key already created)."""
        body = SubmitBody(model=model, input=payload).model_dump_json().encode()
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
        }

        sent_before = False  # whether an earlier try of this call may have created the task

        async def once() -> TaskSnapshot:
            nonlocal sent_before
            try:
                data, replayed = await self._exchange(
                    "submit", "POST", f"{self._base}/tasks", headers, body
                )
            except RetryableError as exc:
                sent_before = sent_before or exc.maybe_sent
                raise
            snapshot = _snapshot(data)
            if replayed and not sent_before:  # created before this call, not by a try of it
                return snapshot.model_copy(update={"idempotent_replayed": True})
            return snapshot

        return await self._retrying("submit", once)

    async def get_task(self, task_id: str) -> TaskSnapshot:
        async def once() -> TaskSnapshot:
            url = f"{self._base}/tasks/{task_id}"
            return _snapshot(await self._call("get", "GET", url, self._headers, None))

        return await self._retrying("get", once)

    async def probe(self) -> None:
        """Check that the key is usable: a lookup of a task that cannot exist must be a 404."""
        try:
            await self._call("probe", "GET", f"{self._base}/tasks/task_relay_probe", self._headers)
        except RequestRejected:
            return

    async def events(
        self, task_id: str, last_event_id: str | None, idle_timeout_s: float
    ) -> AsyncIterator[ServerSentEvent]:
        """Yield the task's Server-Sent Events until the server closes the stream.

        Raises ``StreamUnavailable`` when there is no usable stream (wrong status or content type,
        connection failure, idle for longer than ``idle_timeout_s``), and ``OperatorError`` on
        401/402/403.
        """
        headers = {**self._headers, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = self._stream_timeouts.get(idle_timeout_s)
        if timeout is None:  # one per idle timeout (there is one): not built per request
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=idle_timeout_s)
            self._stream_timeouts[idle_timeout_s] = timeout
        url = f"{self._base}/tasks/{task_id}/events"
        try:
            async with self._stream_session.get(url, headers=headers, timeout=timeout) as resp:
                self._metrics.mindvideo_responses.labels("events", _code_class(resp.status)).inc()
                if resp.status in OPERATOR_STATUSES:
                    raise OperatorError(
                        resp.status, (await resp.read())[:200].decode("utf-8", "replace")
                    )
                ctype = resp.headers.get("Content-Type", "")
                if resp.status != 200 or "text/event-stream" not in ctype.lower():
                    raise StreamUnavailable(f"events answered {resp.status} {ctype or '-'}")
                parser = SSEParser()
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        yield event
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._metrics.mindvideo_responses.labels("events", "error").inc()
            raise StreamUnavailable(f"event stream broke: {exc!r}") from exc

    async def _retrying(self, operation: str, once: Callable[[], Awaitable[T]]) -> T:
        """``once`` until it succeeds or the policy gives up; the error raised then says whether
        any of the tries may have reached MindVideo (``maybe_sent``)."""
        attempt, sent = 1, False
        while True:
            try:
                return await once()
            except RetryableError as exc:
                sent = sent or exc.maybe_sent
                if not self._retry.allows(attempt, exc):
                    exc.maybe_sent = sent
                    raise
                self._metrics.mindvideo_retries.labels(operation).inc()
                log.info(
                    "mindvideo %s failed, retrying",
                    operation,
                    extra={"attempt": attempt, "reason": str(exc)},
                )
                await self._retry.pause(attempt, exc)
                attempt += 1

    async def _call(
        self,
        operation: str,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
    ) -> Any:
        data, _ = await self._exchange(operation, method, url, headers, body)
        return data

    async def _exchange(
        self,
        operation: str,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
    ) -> tuple[Any, bool]:
        """One request: the JSON answer and whether MindVideo says it replayed an earlier one."""
        try:
            async with self._session.request(
                method, url, headers=headers, data=body, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                replayed = resp.headers.get(REPLAYED_HEADER, "").strip().lower() == "true"
        except aiohttp.ClientConnectorError as exc:
            # No connection was made: the request cannot have had any effect.
            self._metrics.mindvideo_responses.labels(operation, "error").inc()
            raise RetryableError(
                f"{method} {url}: {exc!r}", reason="connect", maybe_sent=False
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._metrics.mindvideo_responses.labels(operation, "error").inc()
            raise RetryableError(f"{method} {url}: {exc!r}", reason="network") from exc
        self._metrics.mindvideo_responses.labels(operation, _code_class(status)).inc()
        if 200 <= status < 300:
            try:
                return json.loads(raw), replayed
            except ValueError as exc:
                raise RetryableError(
                    f"{operation}: MindVideo answered non-JSON {status}", reason="bad_response"
                ) from exc
        code, message = _error_fields(raw, status)
        if status in OPERATOR_STATUSES:
            raise OperatorError(status, message)
        if status == 404 and code != EXPECTED_404_CODES.get(operation, code):
            raise OperatorError(
                status,
                "wrong RELAY_MINDVIDEO_BASE_URL? it must be the origin only (the relay adds"
                f" /api/v1): {method} {url} is not a MindVideo route ({code})",
            )
        if status == 409 and code == "idempotency_conflict":
            raise RequestRejected("idempotency_conflict", message)
        if status >= 500 or status in RETRYABLE_4XX:
            reason = "http_5xx" if status >= 500 else "http_429" if status == 429 else "http_4xx"
            raise RetryableError(
                f"{operation}: {status} {code}",
                retry_after_s=retry_after,
                reason=reason,
                maybe_sent=status != 429,  # a 429 is refused before anything happens
            )
        raise RequestRejected(code, message)


def _snapshot(data: Any) -> TaskSnapshot:
    """Accept the snapshot bare or wrapped in ``{"data": ...}`` / ``{"task": ...}``."""
    if isinstance(data, dict):
        for wrapper in ("data", "task"):
            inner = data.get(wrapper)
            if "task_id" not in data and isinstance(inner, dict):
                data = inner
                break
        if "task_id" not in data and "id" in data:
            data = {**data, "task_id": data["id"]}
    try:
        return TaskSnapshot.model_validate(data)
    except ValidationError as exc:
        raise RetryableError(
            f"unreadable task snapshot: {exc.error_count()} errors", reason="bad_response"
        ) from exc
